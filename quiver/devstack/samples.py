"""Sample messages for the demo: realistic ~5 KB multipart marketing mail."""

from __future__ import annotations

import time
from email.utils import formatdate

from quiver.client import OutboundMessage
from quiver.devstack.stack import A_ONLY_DOMAINS, DKIM_DOMAINS, MX_DOMAINS, NULL_MX_DOMAINS

_PARAGRAPH = (
    "Our autumn collection has landed: wool coats, waxed jackets and boots built for "
    "wet pavements. Members get early access and free returns for sixty days. "
)


def render(*, message_id: str, from_addr: str, to: list[str], subject: str, size: int = 5000
           ) -> bytes:
    """A multipart/alternative message of about `size` bytes, CRLF line endings."""
    boundary = f"=_q_{message_id}"
    filler = (_PARAGRAPH * (size // (2 * len(_PARAGRAPH)) + 1))
    text_lines = [filler[i:i + 76] for i in range(0, size // 2, 76)]
    html_lines = [f"<p>{line}</p>" for line in text_lines]
    lines = [
        f"From: Quiver Demo <{from_addr}>",
        f"To: {', '.join(to)}",
        f"Subject: {subject}",
        f"Date: {formatdate(time.time(), usegmt=True)}",
        f"Message-ID: <{message_id}@{from_addr.rpartition('@')[2]}>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 7bit",
        "",
        *text_lines,
        "",
        f"--{boundary}",
        "Content-Type: text/html; charset=utf-8",
        "Content-Transfer-Encoding: 7bit",
        "",
        "<html><body>",
        *html_lines,
        "</body></html>",
        f"--{boundary}--",
        "",
    ]
    return "\r\n".join(lines).encode()


def recipient(i: int, domain: str) -> str:
    """Mostly ordinary users; a few scripted ones so every outcome shows."""
    if i % 50 == 3:
        return f"permfail-{i}@{domain}"  # 550 at RCPT → bounced
    if i % 50 == 11:
        return f"asyncbounce-{i}@{domain}"  # delivered, then a DSN → async_bounce
    if i % 50 == 23:
        return f"complain-{i}@{domain}"  # delivered, then an ARF report → complaint
    if i % 50 == 37:
        return f"unsub-{i}@{domain}"  # delivered; the demo clicks one-click → unsubscribed
    if i % 50 == 47:
        return f"mailunsub-{i}@{domain}"  # delivered; the demo mails the mailto → unsubscribed
    if i % 50 == 17:
        return f"greylist-{i}@{domain}"  # 451 once → deferred, then delivered
    if i % 100 == 29:
        return f"tempfail-{i}@{domain}"  # 451 always → deferred until expired
    return f"user{i}@{domain}"


def plan(count: int) -> tuple[list[OutboundMessage], list[str]]:
    """`count` demo messages: valid ones, and (for count ≥ 20) two malformed bodies."""
    malformed: list[str] = []
    if count >= 20:
        malformed = [
            '{"v": 1, "id": "demo-broken-json", "from": ',  # truncated JSON
            '{"v":1,"id":"demo-crlf","from":"a@news.quiver-demo.test",'
            '"to":["victim@alpha.test\\r\\nRCPT TO:<x@evil.test>"],"raw":"SGk="}',
        ]
    domains = [*MX_DOMAINS, *A_ONLY_DOMAINS]
    messages = []
    for i in range(count - len(malformed)):
        domain = NULL_MX_DOMAINS[0] if i % 100 == 41 else domains[i % len(domains)]
        to = [recipient(i, domain)]
        if i % 10 == 5:  # some messages have several recipients, across domains
            to.append(recipient(i + 1, domains[(i + 1) % len(domains)]))
        from_domain, _, _ = DKIM_DOMAINS[i % len(DKIM_DOMAINS)]
        from_addr = f"hello@{from_domain}"
        message_id = f"demo-{i:06d}"
        messages.append(OutboundMessage(
            id=message_id,
            sender=f"bounces@{from_domain}",
            to=to,
            raw=render(message_id=message_id, from_addr=from_addr, to=to,
                       subject=f"Autumn collection, message {i}"),
            pool="bulk" if i % 4 == 0 else None,
            campaign="autumn-demo",
            meta={"demo": True, "n": i},
        ))
    return messages, malformed
