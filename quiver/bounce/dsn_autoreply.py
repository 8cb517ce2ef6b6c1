"""Auto-replies, out-of-office notices and challenge-response mails: mail that reaches
the bounce domain without reporting a delivery failure."""

from __future__ import annotations

import re
from email.message import Message

from quiver.bounce.dsn_mime import header
from quiver.bounce.dsn_types import IgnoreReason

# Subjects of absence notices: English, German, French, Spanish, Italian, Dutch,
# Portuguese, as the common clients and webmailers write them.
_OUT_OF_OFFICE = re.compile(
    r"(out of (the )?office|away from (the )?office|on vacation|on holiday|on leave"
    r"|abwesenheit|abwesend|nicht im b(ü|ue)ro|urlaub"
    r"|absence|absent(e)? du bureau|en cong(é|e)s?|r(é|e)ponse automatique d.absence"
    r"|fuera de la oficina|ausente|de vacaciones|fuera de oficina"
    r"|fuori ufficio|assente|afwezig|niet aanwezig|fora do escrit(ó|o)rio|ausência)",
    re.IGNORECASE)
_AUTO_SUBJECT = re.compile(
    r"^(auto(matic)?[ -]?(reply|response|antwort|matische antwort)|autoreply|auto:|"
    r"automatische antwort|r(é|e)ponse automatique|respuesta autom(á|a)tica|"
    r"risposta automatica|automatisch antwoord|resposta autom(á|a)tica)",
    re.IGNORECASE)
_CHALLENGE_SUBJECT = re.compile(
    r"(please confirm (your|that you)|verify (your (email|address)|you are (a )?human)"
    r"|confirm your (e-?mail|message)|sender verification|anti-?spam verification"
    r"|bitte best(ä|ae)tigen|veuillez confirmer|por favor confirme|challenge)",
    re.IGNORECASE)
_CHALLENGE_BODY = re.compile(
    r"(I am protecting myself from (receiving )?junk mail|spamarrest|boxbe|mailprotector"
    r"|to have your message delivered,? (please )?(click|reply)"
    r"|click (on )?the link below to (confirm|verify)|add you to my list of approved senders)",
    re.IGNORECASE)

# Addresses that mail systems send reports from; their mail is a bounce, not a reply,
# even when it carries Auto-Submitted (Postfix and Exim set it on every bounce).
_DAEMON = re.compile(r"(mailer-daemon|postmaster|mail delivery (subsystem|system)|"
                     r"microsoftexchange|mail-daemon|maildaemon|^<>$)", re.IGNORECASE)


def from_daemon(message: Message) -> bool:
    sender = header(message, "From") or ""
    return bool(_DAEMON.search(sender)) or (header(message, "Return-Path") or "") == "<>"


def challenge(message: Message, body: str) -> bool:
    if any(message.get(h) is not None for h in ("X-Challenge", "X-Boxbe-Challenge",
                                                 "X-SpamArrest-Challenge")):
        return True
    subject = header(message, "Subject") or ""
    return bool(_CHALLENGE_SUBJECT.search(subject) or _CHALLENGE_BODY.search(body[:8000]))


def auto_reply(message: Message, *, body: str) -> IgnoreReason | None:
    """OUT_OF_OFFICE or AUTO_REPLY when the headers say so (RFC 3834 Auto-Submitted,
    the de-facto X-Autoreply / X-Autorespond / Precedence, or the subject), else None."""
    subject = header(message, "Subject") or ""
    submitted = (header(message, "Auto-Submitted") or "no").split(";")[0].strip().lower()
    precedence = (header(message, "Precedence") or "").strip().lower()
    signalled = (
        submitted != "no"
        or any(message.get(h) is not None for h in ("X-Autoreply", "X-Autorespond",
                                                     "X-Autoresponder", "X-Auto-Response"))
        or precedence == "auto_reply"
        or (header(message, "X-Auto-Response-Suppress") is not None
            and bool(_AUTO_SUBJECT.search(subject)))
    )
    if _OUT_OF_OFFICE.search(subject):
        return IgnoreReason.OUT_OF_OFFICE
    if signalled or _AUTO_SUBJECT.search(subject):
        # "Automatic reply: <subject>" is how Outlook titles an absence notice too;
        # the notice's first lines say which it is.
        absent = _OUT_OF_OFFICE.search(body[:2000])
        return IgnoreReason.OUT_OF_OFFICE if absent else IgnoreReason.AUTO_REPLY
    return None
