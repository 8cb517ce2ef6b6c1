"""Bounces written as prose (no message/delivery-status part): the stock texts of
Exim, qmail, Postfix, Sendmail, Exchange/Office 365, Gmail, Yahoo and Domino, in the
languages they ship. Each names its failed recipients on lines of their own and
follows each with the remote reply or the MTA's explanation."""

from __future__ import annotations

import re
from dataclasses import dataclass

from quiver.bounce.dsn_fields import ENHANCED, Diagnostic, split_diagnostic
from quiver.bounce.dsn_limits import MAX_LINE_CHARS, MAX_RECIPIENTS

# (format, signature of a failure report). First match names the format.
_FORMATS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE)) for name, pattern in (
        ("qmail", r"this is the qmail-send program"),
        ("exim", r"this message was created automatically by mail delivery software"),
        ("postfix", r"this is the mail system at host"),
        ("sendmail", r"the following addresses? had permanent fatal errors"
                     r"|the original message was received at .* from"),
        ("gmail", r"delivery to the following recipients? failed permanently"
                  r"|your message wasn.t delivered to|google tried to deliver your message"),
        ("yahoo", r"sorry, we were unable to deliver your message to the following address"),
        ("exchange", r"delivery has failed to these recipients or groups"
                     r"|your message did not reach some or all of the intended recipients"
                     r"|your message to \S+ couldn.t be delivered"
                     r"|die zustellung an folgende empf(ä|ae)nger oder gruppen ist fehlgeschlagen"
                     r"|la remise aux destinataires ou groupes suivants a (é|e)chou(é|e)"
                     r"|error en la entrega a estos destinatarios o grupos"),
        ("domino", r"was not delivered to:"),
        ("german", r"konnte nicht (an|zu)gestellt werden|nicht zustellbar"
                   r"|unzustellbar|zustellung fehlgeschlagen"),
        ("french", r"n.a pas pu (ê|e)tre (remis|d(é|e)livr(é|e)|distribu(é|e))"
                   r"|non remis|(é|e)chec de (la )?remise|impossible de remettre"),
        ("spanish", r"no (se )?(ha )?(pudo|podido) (ser )?entregar|no pudo ser entregado"
                    r"|no se ha podido entregar|error en la entrega|no entregado"),
        ("generic", r"(could not|couldn.t|cannot|can.t|was not|wasn.t) be delivered"
                    r"|undeliverable|delivery (has )?failed|permanent (fatal )?error"
                    r"|failure notice|returned mail"),
    ))

_DELAY = re.compile(
    r"(has not yet been delivered|this is a warning only|delivery to the following "
    r"recipients? has been delayed|delivery is delayed to these recipients"
    r"|could not send message for past|still being retried|will keep trying"
    r"|noch nicht zugestellt|zustellung verz(ö|oe)gert|remise diff(é|e)r(é|e)e"
    r"|entrega retrasada|retrasado la entrega)", re.IGNORECASE)

# Where the report's own text ends and the returned message (or its headers) begins.
_ORIGINAL_MARKER = re.compile(
    r"^\s*(-{2,}\s*)?(below this line is a copy of the message"
    r"|this is a copy of the message|original message follows|original message headers"
    r"|-+\s*original message\s*-+|ursprüngliche nachrichtenkopfzeilen|ursprüngliche nachricht"
    r"|en-t(ê|e)tes de message d.origine|message d.origine|encabezados del mensaje original"
    r"|mensaje original|the headers of the message follow|message headers follow"
    r"|return-path:)", re.IGNORECASE | re.MULTILINE)

_ADDR = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}"
# A line that names one recipient: "ann@x", "<ann@x>", "<ann@x>:", "ann@x (ann@x)",
# "<ann@x>: host mx said: ..." (Postfix), "<ann@x>... User unknown" (Sendmail).
_RECIPIENT_LINE = re.compile(
    rf"^\s{{0,12}}(?:[-*]\s*)?['\"]?<?(?P<addr>{_ADDR})>?['\"]?\s*"
    rf"(?:\((?:[^()]{{0,300}})\))?\s*(?:on\s+\d[\d/.-]+[^:]{{0,40}})?"
    rf"\s*(?:(?::|\.\.\.)\s*(?P<rest>.*))?$")
# An SMTP reply inside prose, with its enhanced code or qmail's "(#5.1.1)".
_REPLY_IN_TEXT = re.compile(r"(?<![\w./-])[245]\d\d[ -](?=\S)")
_REMOTE_HOST = re.compile(
    r"(?:\bhost\s+|\bby\s+|remote host\s+|\bserver\s+)(?P<host>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"
    r"\.?\s*\[", re.IGNORECASE)
_GENERATING = re.compile(
    r"^(?:generating server|generierender server|serveur de g(é|e)n(é|e)ration"
    r"|servidor de generaci(ó|o)n)\s*:\s*(?P<host>\S+)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class TextFailure:
    recipient: str
    diagnostic: Diagnostic
    remote_mta: str | None


@dataclass(frozen=True, slots=True)
class TextReport:
    format: str
    failures: tuple[TextFailure, ...]
    delayed: bool
    reporting_mta: str | None
    # The returned message as text (its headers first), when the report appends it.
    original_text: str | None


def recognise(text: str, *, subject: str) -> str | None:
    """The name of the text format whose signature appears, or None."""
    probe = f"{subject}\n{text[:20000]}"
    return next((name for name, pattern in _FORMATS if pattern.search(probe)), None)


def is_delay(text: str, *, subject: str) -> bool:
    return bool(_DELAY.search(f"{subject}\n{text[:20000]}"))


def parse_text(text: str, *, fmt: str, subject: str, exclude: frozenset[str]) -> TextReport:
    marker = _ORIGINAL_MARKER.search(text)
    report = text[: marker.start()] if marker else text
    original = text[marker.start():] if marker else None
    generating = _GENERATING.search(report)
    failures = _failures(report, exclude=exclude)
    return TextReport(
        format=fmt,
        failures=failures,
        delayed=is_delay(report, subject=subject) and not _permanent(report),
        reporting_mta=generating["host"] if generating else None,
        original_text=original,
    )


def _permanent(report: str) -> bool:
    return bool(re.search(r"(permanent|fatal error|giving up|given up|fehlgeschlagen"
                          r"|(é|e)chou(é|e))", report, re.IGNORECASE))


def _failures(report: str, *, exclude: frozenset[str]) -> tuple[TextFailure, ...]:
    """Recipients with the text that follows each, merged when an address is named
    twice (Exchange names it in the user section and again for administrators)."""
    # Keyed by the lower-cased address; the first spelling seen is reported.
    blocks: dict[str, tuple[str, list[str]]] = {}
    current: list[str] | None = None
    current_key = ""
    previous = ""
    for line in report.splitlines():
        line = line[:MAX_LINE_CHARS]
        match = _RECIPIENT_LINE.match(line)
        key = match["addr"].lower() if match else ""
        # Postfix wraps its reply text, and the wrapped line may start with the same
        # address ("    <ann@x>: Recipient address rejected"): inside a paragraph of
        # the current recipient it continues that paragraph.
        continues = current is not None and previous.strip() != "" and key == current_key
        previous = line
        if match and not continues and key not in exclude:
            if key not in blocks:
                if len(blocks) >= MAX_RECIPIENTS:
                    break
                blocks[key] = (match["addr"], [])
            current, current_key = blocks[key][1], key
            current.append("")
            if match["rest"]:
                current.append(match["rest"])
            continue
        if current is not None:
            current.append(line)
    return tuple(_failure(addr, lines) for addr, lines in blocks.values())


def _failure(recipient: str, lines: list[str]) -> TextFailure:
    paragraphs = _paragraphs(lines)
    with_reply = [p for p in paragraphs if _REPLY_IN_TEXT.search(p)]
    with_status = [p for p in paragraphs if ENHANCED.search(p)]
    if with_reply:
        enhanced = [p for p in with_reply if _has_enhanced_reply(p)]
        paragraph = (enhanced or with_reply)[0]
        reply = _REPLY_IN_TEXT.search(paragraph)
        assert reply is not None
        diagnostic = split_diagnostic(_balanced(paragraph[reply.start():]))
    elif with_status:
        diagnostic = split_diagnostic(_balanced(with_status[0]))
    else:
        # The first paragraph that is not a heading ("because:").
        said = [p for p in paragraphs if not p.endswith(":")]
        diagnostic = Diagnostic(None, None, said[0] if said else "")
    host = next((m["host"] for p in paragraphs if (m := _REMOTE_HOST.search(p))), None)
    return TextFailure(recipient, diagnostic, host)


def _has_enhanced_reply(paragraph: str) -> bool:
    return bool(re.search(r"[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}", paragraph))


def _paragraphs(lines: list[str]) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            out.append(" ".join(current))
            current = []
    return out


def _balanced(text: str) -> str:
    """Drop the closing bracket of a reply quoted inside "(reason: ...)" or '...'."""
    text = text.strip().removesuffix("##").strip()
    # qmail closes each remote reply with "Giving up on <ip>.": not the reply.
    text = re.sub(r"\s+Giving up on \S+$", "", text)
    if text.endswith(">") and text.count(">") > text.count("<"):
        text = text[:-1]
    if text.endswith(")") and text.count(")") > text.count("("):
        text = text[:-1]
    if text.endswith("'") and text.count("'") % 2 == 1:
        text = text[:-1]
    return text.strip()
