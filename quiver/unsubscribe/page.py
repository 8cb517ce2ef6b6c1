"""The HTML pages of the unsubscribe endpoint: small, self-contained, no script.

Every value shown is escaped; the confirmation form posts to the URL it was
served from (an empty action), so a page never names another host.
"""

from __future__ import annotations

from html import escape

# No scripts, styles inline only, forms post to this origin, never framed.
SECURITY_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>body{{font-family:sans-serif;max-width:32em;margin:3em auto;padding:0 1em}}
button{{font-size:1.1em;padding:.5em 1.2em}}</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""


def confirm(recipient: str) -> str:
    """The page a GET shows: it asks, and only its button (a POST) unsubscribes."""
    return _PAGE.format(title="Unsubscribe", body=(
        f"<p>Stop sending these emails to <strong>{escape(recipient)}</strong>?</p>\n"
        '<form method="post" action="">\n'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">\n'
        '<button type="submit">Unsubscribe</button>\n</form>'))


def done(recipient: str) -> str:
    return _PAGE.format(title="Unsubscribed", body=(
        f"<p><strong>{escape(recipient)}</strong> will get no more of these emails.</p>"))


def invalid() -> str:
    # Says nothing of why: the reason is counted and logged, not told to a prober.
    return _PAGE.format(title="Link not valid", body=(
        "<p>This unsubscribe link is not valid or has expired. Use the link in a "
        "recent email, or reply to the sender to be removed.</p>"))


def unavailable() -> str:
    return _PAGE.format(title="Try again", body=(
        "<p>Your request could not be recorded just now; nothing was changed. "
        "Please try again in a minute.</p>"))


def bad_request(what: str) -> str:
    return _PAGE.format(title="Not understood", body=f"<p>{escape(what)}</p>")
