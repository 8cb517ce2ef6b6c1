"""Quiver's sender against real receiving MTAs: Postfix (twice), Exim and Haraka.

One sender run carries, to each receiver, an ordinary message signed rsa-sha256,
the same signed ed25519-sha256, a message whose body is one 1,500-character line,
a UTF-8 message sent as 8bit, and two recipients the receiver refuses (an unknown
user, and a domain whose MX it is but which it does not serve). The tests then read
what each receiver stored and logged:

- every message arrives exactly once, over TLS, and its DKIM signature verifies at
  the receiver by a verifier other than the signer (dkimpy over every stored copy;
  Exim's own verifier in its log);
- no stored line is longer than RFC 5322's 998 octets;
- 8-bit content is declared with BODY=8BITMIME where 8BITMIME is offered, and
  arrives 7-bit clean where it is not (the Postfix listener that withdraws it);
- Exim logs PIPELINING used (L) over TLS for every message;
- each stock refusal text gets the bounce kind suppression relies on.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message

import pytest
from stackrig import Running, enqueue

from interop.exim_receiver import EximReceiver
from interop.haraka_receiver import HarakaReceiver
from interop.interop_rig import (
    EIGHT_BIT_TEXT,
    EXIM,
    FROM_ED25519,
    HARAKA,
    MAX_LINE,
    POSTFIX,
    POSTFIX_LEGACY,
    body_of,
    copies_of,
    dkim_verify,
    egress,
    eight_bit,
    eight_bit_octets,
    finals_by_recipient,
    long_line,
    long_line_text,
    long_lines,
    ordinary,
    sender,
)
from interop.postfix_receiver import PostfixReceiver
from interop.receivers import Copy, Site
from quiver.client import OutboundMessage

pytestmark = [pytest.mark.integration, pytest.mark.interop]

SITES = (POSTFIX, POSTFIX_LEGACY, EXIM, HARAKA)
SITE_IDS = [s.name for s in SITES]
DELIVERED = ("ordinary", "ordinary-ed25519", "long-line", "eight-bit")
# The refusals each receiver answers with its stock text: (pattern, kind, category).
POSTFIX_STOCK = {
    "unknown-user": (r"<[^>]+>: Recipient address rejected: User unknown in virtual mailbox table",
                     "hard", "bad-mailbox"),
    "relay-denied": (r"<[^>]+>: Relay access denied", "hard", "relay-denied"),
}
STOCK = {
    POSTFIX.name: POSTFIX_STOCK,
    POSTFIX_LEGACY.name: POSTFIX_STOCK,
    EXIM.name: {
        "unknown-user": (r"Unrouteable address", "hard", "bad-mailbox"),
        "relay-denied": (r"relay not permitted", "hard", "relay-denied"),
    },
    HARAKA.name: {
        "unknown-user": (r"I cannot deliver mail for <[^>]+>", "hard", "bad-mailbox"),
        "relay-denied": (r"I cannot deliver mail for <[^>]+>", "hard", "bad-mailbox"),
    },
}
FINALS_TIMEOUT = 180.0
# A receiver writes the message to its store after it answered the DATA.
STORE_TIMEOUT = 60.0


def plan(site: Site) -> dict[str, OutboundMessage]:
    d, name = site.domain, site.name
    return {
        "ordinary": ordinary(f"io-{name}-ordinary", [f"alice@{d}"]),
        "ordinary-ed25519": ordinary(f"io-{name}-ordinary-ed", [f"bob@{d}"],
                                     from_addr=FROM_ED25519),
        "long-line": long_line(f"io-{name}-long", [f"carol@{d}"]),
        "eight-bit": eight_bit(f"io-{name}-8bit", [f"dave@{d}"]),
        "unknown-user": ordinary(f"io-{name}-nouser", [f"nouser-erin@{d}"]),
        "relay-denied": ordinary(f"io-{name}-relay", [f"frank@{site.relay_domain}"]),
    }


@dataclass
class Run:
    msgs: dict[str, dict[str, OutboundMessage]]  # site → kind → message
    finals: dict[str, dict]  # recipient → its final event
    events: list[dict]
    copies: dict[str, list[Copy]]  # site → what it stored
    nameserver: str  # the local stack's DNS, where the DKIM keys are

    def msg(self, site: Site, kind: str) -> OutboundMessage:
        return self.msgs[site.name][kind]

    def final(self, site: Site, kind: str) -> dict:
        return self.finals[self.msg(site, kind).to[0]]

    def copies_of(self, site: Site, kind: str) -> list[Copy]:
        return copies_of(self.copies[site.name], self.msg(site, kind))


def stored(postfix: PostfixReceiver, exim: EximReceiver, haraka: HarakaReceiver
           ) -> dict[str, list[Copy]]:
    both = postfix.copies()
    return {
        POSTFIX.name: [c for c in both if any(r.endswith("@" + POSTFIX.domain) for r in c.rcpts)],
        POSTFIX_LEGACY.name: [c for c in both
                              if any(r.endswith("@" + POSTFIX_LEGACY.domain) for r in c.rcpts)],
        EXIM.name: exim.copies(),
        HARAKA.name: haraka.copies(),
    }


@pytest.fixture(scope="module")
def run(stack: Running, mx_port: int, postfix: PostfixReceiver, exim: EximReceiver,
        haraka: HarakaReceiver) -> Run:
    msgs = {site.name: plan(site) for site in SITES}
    every = [m for kinds in msgs.values() for m in kinds.values()]
    with egress(stack, "interop", mx_port=mx_port) as config, sender(stack, "interop", config):
        enqueue(stack, every)
        events = stack.events_for({m.id for m in every}, finals=len(every),
                                  timeout=FINALS_TIMEOUT)
    finals = finals_by_recipient(events, every)
    delivered = Counter(site.name for site in SITES for kind in DELIVERED
                        if finals[msgs[site.name][kind].to[0]]["event"] == "delivered")
    deadline = time.monotonic() + STORE_TIMEOUT
    copies = stored(postfix, exim, haraka)
    while (any(len(copies[s]) < n for s, n in delivered.items())
           and time.monotonic() < deadline):
        time.sleep(0.2)
        copies = stored(postfix, exim, haraka)
    result = Run(msgs=msgs, finals=finals, events=events, copies=copies,
                 nameserver=stack.stack.nameserver)
    print_summary(result, exim)
    return result


def print_summary(run: Run, exim: EximReceiver) -> None:
    """Per receiver: copies, DKIM verified (dkimpy), pipelining, deferred events."""
    exim_accepts = {a.message_id.partition("@")[0]: a for a in exim.accepted()}
    exim_dkim = exim.dkim_verdicts()
    for site in SITES:
        ids = {m.id for m in run.msgs[site.name].values()}
        deferred = sum(1 for e in run.events if e["event"] == "deferred" and e["id"] in ids)
        parts = []
        for kind in DELIVERED:
            copies = run.copies_of(site, kind)
            verified = sum(dkim_verify(c.raw, nameserver=run.nameserver)[0] for c in copies)
            parts.append(f"{kind}: {len(copies)} copies, {verified} dkimpy-verified")
        extra = ""
        if site == EXIM:
            mine = [exim_accepts[m.id] for k, m in run.msgs[site.name].items()
                    if k in DELIVERED and m.id in exim_accepts]
            ok = sum(any("[verification succeeded]" in v for v in exim_dkim.get(a.exim_id, []))
                     for a in mine)
            extra = (f"; Exim's verifier passed {ok}/{len(mine)}, pipelining used on "
                     f"{sum(bool(a.pipelining) for a in mine)}/{len(mine)} (TLS on "
                     f"{sum(a.tls is not None for a in mine)})")
        print(f"interop {site.name}: {'; '.join(parts)}{extra}; deferred events: {deferred}")


def test_ordinary_mail_arrives_once_over_tls_and_dkim_verifies(run: Run) -> None:
    for site in SITES:
        for kind in ("ordinary", "ordinary-ed25519"):
            final = run.final(site, kind)
            assert final["event"] == "delivered", (site.name, kind, final)
            assert final["tls"], (site.name, kind, "delivered without TLS", final)
            copies = run.copies_of(site, kind)
            assert len(copies) == 1, (site.name, kind, [c.source for c in copies])
            verified, detail = dkim_verify(copies[0].raw, nameserver=run.nameserver)
            assert verified, (site.name, kind, detail)


def test_exims_own_verifier_passes_ordinary_mail(run: Run, exim: EximReceiver) -> None:
    accepts = {a.message_id.partition("@")[0]: a for a in exim.accepted()}
    verdicts = exim.dkim_verdicts()
    for kind in ("ordinary", "ordinary-ed25519"):
        accepted = accepts[run.msg(EXIM, kind).id]
        lines = verdicts.get(accepted.exim_id, [])
        assert any("[verification succeeded]" in v for v in lines), (kind, lines)


def _decoded_text(raw: bytes) -> str:
    part: Message = message_from_bytes(raw)
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes), part.get_content_type()
    return payload.decode(part.get_content_charset() or "us-ascii")


@pytest.mark.parametrize("site", SITES, ids=SITE_IDS)
def test_long_line_arrives_once_within_998_octets_and_dkim_verifies(
        run: Run, exim: EximReceiver, site: Site) -> None:
    final = run.final(site, "long-line")
    assert final["event"] == "delivered", final
    copies = run.copies_of(site, "long-line")
    assert len(copies) == 1, [c.source for c in copies]
    raw = copies[0].raw
    # Item 1: no line over 998 octets ever leaves the sender.
    assert not long_lines(raw), f"lines over {MAX_LINE} octets at {site.name}: {long_lines(raw)}"
    verified, detail = dkim_verify(raw, nameserver=run.nameserver)
    assert verified, f"dkimpy at {site.name}: {detail}"
    # The reader still gets the line back, whatever transfer encoding carried it.
    assert _decoded_text(raw).rstrip("\r\n") == long_line_text()
    if site == EXIM:
        accepted = next(a for a in exim.accepted()
                        if a.message_id.startswith(run.msg(site, "long-line").id + "@"))
        lines = exim.dkim_verdicts().get(accepted.exim_id, [])
        assert any("[verification succeeded]" in v for v in lines), lines


def _declared_8bitmime(site: Site, msg: OutboundMessage, *, postfix: PostfixReceiver,
                       exim: EximReceiver, haraka: HarakaReceiver) -> bool:
    """Whether the MAIL FROM that carried `msg` said BODY=8BITMIME, as the receiver saw it."""
    if site == EXIM:
        accepted = next(a for a in exim.accepted() if a.message_id.startswith(msg.id + "@"))
        return accepted.body == "8"
    if site == HARAKA:
        stored = next(s for s in haraka.stored() if s.copy.message_id.startswith(msg.id + "@"))
        return stored.mail_params.get("BODY", "").upper() == "8BITMIME"
    params = [p for _, p in postfix.mail_from_params(legacy=site == POSTFIX_LEGACY)]
    return any(re.search(r"\bBODY=8BITMIME\b", p, re.IGNORECASE) for p in params)


@pytest.mark.parametrize("site", SITES, ids=SITE_IDS)
def test_eight_bit_mail_is_declared_or_made_7bit_and_dkim_verifies(
        run: Run, postfix: PostfixReceiver, exim: EximReceiver, haraka: HarakaReceiver,
        site: Site) -> None:
    msg = run.msg(site, "eight-bit")
    final = run.final(site, "eight-bit")
    assert final["event"] == "delivered", final
    copies = run.copies_of(site, "eight-bit")
    assert len(copies) == 1, [c.source for c in copies]
    raw = copies[0].raw
    verified, detail = dkim_verify(raw, nameserver=run.nameserver)
    assert verified, f"dkimpy at {site.name}: {detail}"
    assert _decoded_text(raw).replace("\r\n", "\n") == EIGHT_BIT_TEXT.replace("\r\n", "\n")
    if site == POSTFIX_LEGACY:
        # Item 2: this listener does not offer 8BITMIME, so the message must arrive
        # converted to 7 bits (before signing: the signature above still holds).
        octets = eight_bit_octets(body_of(raw))
        assert octets == 0, f"{octets} 8-bit octets sent to a server without 8BITMIME"
        assert not _declared_8bitmime(site, msg, postfix=postfix, exim=exim, haraka=haraka)
    else:
        assert _declared_8bitmime(site, msg, postfix=postfix, exim=exim, haraka=haraka), (
            f"{site.name} offers 8BITMIME but MAIL FROM did not say BODY=8BITMIME")


def test_exim_logs_pipelining_used_over_tls(run: Run, exim: EximReceiver) -> None:
    ids = {m.id for k, m in run.msgs[EXIM.name].items() if k in DELIVERED}
    mine = [a for a in exim.accepted() if a.message_id.partition("@")[0] in ids]
    assert len(mine) == len(ids), [a.line for a in mine]
    for accepted in mine:
        assert accepted.tls, f"not over TLS: {accepted.line}"
        # Item 3: `L-` (offered, not used) means each command came in its own TLS
        # record and Exim saw no pipelined group.
        assert accepted.pipelining, f"PIPELINING offered but not used: {accepted.line}"


@pytest.mark.parametrize("site", SITES, ids=SITE_IDS)
@pytest.mark.parametrize("kind", ["unknown-user", "relay-denied"])
def test_stock_refusal_texts_get_their_bounce_kind(run: Run, site: Site, kind: str) -> None:
    pattern, bounce_kind, category = STOCK[site.name][kind]
    final = run.final(site, kind)
    assert final["event"] == "bounced", final
    response = final["response"]
    assert re.fullmatch(pattern, response["text"]), (
        f"{site.name} answered {response}; the stock text this test expects has changed")
    assert (final["bounce"]["kind"], final["bounce"]["category"]) == (bounce_kind, category), (
        response, final["bounce"])


def test_no_mail_was_deferred(run: Run) -> None:
    deferred = [e for e in run.events if e["event"] == "deferred"]
    assert not deferred, [(e["rcpt"], e["response"]) for e in deferred[:5]]

