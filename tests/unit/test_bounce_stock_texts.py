"""Stock refusal texts of common receiving MTAs → the bounce kind and category they get.

One fixture per text in quiver/data/bounce_rules.toml's stock-text rules. Texts marked
"captured" are what the interop suite's real Postfix 3.7, Exim 4.96 and Haraka 3.3
answered (tests/integration/interop); the others are the servers' documented or
source texts. Most come without an enhanced status code, as those servers send them,
so the text alone must decide; the Postfix ones carry theirs.
"""

from __future__ import annotations

import pytest

from quiver.bounce import default_classifier

STOCK_TEXTS = [
    # (server, code, enhanced, text, kind, category)
    # Exim 4
    ("exim captured", 550, None, "Unrouteable address", "hard", "bad-mailbox"),
    ("exim captured", 550, None, "relay not permitted", "hard", "relay-denied"),
    ("exim captured", 550, None, "Administrative prohibition", "block", "policy"),
    ("exim", 550, None, "Sender verify failed", "block", "policy"),
    ("exim", 552, None, "Message size exceeds maximum permitted", "soft", "message-too-large"),
    ("exim dsn", 550, None, "mailbox is full (MTA-imposed quota exceeded while writing to "
     "file /var/mail/ann)", "soft", "mailbox-full"),
    # Haraka 3
    ("haraka captured", 550, None, "I cannot deliver mail for <nouser-erin@haraka.interop.test>",
     "hard", "bad-mailbox"),
    ("haraka captured", 550, None,
     "I cannot deliver mail for <frank@elsewhere.haraka.interop.test>", "hard", "bad-mailbox"),
    # The address must not decide: "spam" in it is not a spam verdict.
    ("haraka", 550, None, "I cannot deliver mail for <spam-reports@example.org>", "hard",
     "bad-mailbox"),
    ("haraka", 550, None, "Message too big!", "soft", "message-too-large"),
    # qmail (its enhanced code trails the text, where it is not parsed)
    ("qmail", 553, None, "sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
     "hard", "relay-denied"),
    ("qmail", 550, None, "sorry, no mailbox here by that name. (#5.1.1)", "hard",
     "bad-mailbox"),
    ("qmail", 552, None, "sorry, that message size exceeds my databytes limit (#5.3.4)", "soft",
     "message-too-large"),
    ("qmail", 553, None, "sorry, your envelope sender is in my badmailfrom list (#5.7.1)",
     "block", "policy"),
    # Microsoft Exchange
    ("exchange", 550, None, "RESOLVER.ADR.RecipNotFound; not found", "hard", "bad-mailbox"),
    ("exchange", 550, "5.1.10",
     "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", "hard",
     "bad-mailbox"),
    # An enhanced 5.7.x alone would say "block"; the text says what was refused.
    ("exchange 2003", 550, "5.7.1", "Unable to relay for ann@example.org", "hard",
     "relay-denied"),
    ("exchange", 550, None, "RESOLVER.RST.NotAuthorized; not authorized", "block", "policy"),
    ("exchange", 554, None,
     "STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded",
     "soft", "mailbox-full"),
    # Sendmail
    ("sendmail", 550, None, "<ann@example.org>... Relaying denied. Proper authentication "
     "required.", "hard", "relay-denied"),
    ("sendmail", 550, None, "<ann@example.org>... User unknown", "hard", "bad-mailbox"),
    ("sendmail", 550, None, "<ann@nowhere.example>... Host unknown (Name server: "
     "nowhere.example: host not found)", "hard", "no-domain"),
    ("sendmail", 553, None, "<bounces@news.example>... Domain of sender address "
     "bounces@news.example does not exist", "block", "policy"),
    ("sendmail", 552, None, "Message size exceeds fixed maximum message size (10485760)",
     "soft", "message-too-large"),
    ("sendmail", 550, None, "Access denied", "block", "policy"),
    # Lotus/HCL Domino: "not listed" names the directory, not a blocklist
    ("domino", 550, None, "User nina.berg (nina.berg@notes.example.com) not listed in Domino "
     "Directory", "hard", "bad-mailbox"),
    ("domino 6", 550, None, "User ann (ann@example.org) not listed in public Name & Address "
     "Book", "hard", "bad-mailbox"),
    # Yahoo's own mailbox check
    ("yahoo", 554, None, "delivery error: dd This user doesn't have a yahoo.com account "
     "(ann@yahoo.com) [0] - mta1234.mail.ne1.yahoo.com", "hard", "bad-mailbox"),
    # Courier
    ("courier", 513, None, "Relaying denied.", "hard", "relay-denied"),
    ("courier", 550, None, "User unknown.", "hard", "bad-mailbox"),
    ("courier", 523, None, "Message length exceeds administrative limit.", "soft",
     "message-too-large"),
    # MDaemon
    ("mdaemon", 550, None, "Message was not accepted -- invalid mailbox. Local mailbox "
     "ann@example.org is unavailable: user not found", "hard", "bad-mailbox"),
    ("mdaemon", 550, None, "Message was not accepted -- invalid mailbox. Local mailbox "
     "ann@example.org is unavailable: account is disabled", "hard", "bad-mailbox"),
    # Zimbra (Postfix in front, its own mailbox server behind)
    ("zimbra", 550, None, "Mailbox disabled, not accepting messages", "hard", "bad-mailbox"),
    ("zimbra", 552, None, "Over quota", "soft", "mailbox-full"),
    # Postfix 3 (captured, with its enhanced codes; and as seen without them)
    ("postfix captured", 550, "5.1.1", "<nouser-erin@postfix.interop.test>: Recipient address "
     "rejected: User unknown in virtual mailbox table", "hard", "bad-mailbox"),
    ("postfix captured", 554, "5.7.1", "<frank@elsewhere.postfix.interop.test>: Relay access "
     "denied", "hard", "relay-denied"),
    ("postfix", 550, None, "<ann@example.org>: Recipient address rejected: User unknown in "
     "local recipient table", "hard", "bad-mailbox"),
    ("postfix", 450, None, "<ann@nowhere.example>: Recipient address rejected: Domain not "
     "found", "hard", "no-domain"),
    ("postfix", 450, None, "<bounces@news.example>: Sender address rejected: Domain not found",
     "block", "policy"),
    ("postfix", 552, None, "Message size exceeds fixed limit", "soft", "message-too-large"),
]


@pytest.mark.parametrize(("server", "code", "enhanced", "text", "kind", "category"),
                         STOCK_TEXTS, ids=[f"{row[0]}: {row[3][:40]}" for row in STOCK_TEXTS])
def test_stock_refusal_text_is_classified(server: str, code: int, enhanced: str | None,
                                          text: str, kind: str, category: str) -> None:
    got = default_classifier().classify(code=code, enhanced=enhanced, text=text)
    assert (got.kind, got.category) == (kind, category), (server, text, got)
    assert got.reason.startswith(str(code)) and text in got.reason

