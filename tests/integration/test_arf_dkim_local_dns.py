"""A signed feedback report verified with its key served by the local DNS server
(dnsmasq and the builtin responder), over the DNS protocol as in production."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from arf_signing import new_key

from quiver.devstack.servers.dns import DnsServer, Zone, start_dns
from quiver.devstack.servers.dns_dnsmasq import dnsmasq_binary
from quiver.feedback.arf import parse_report
from quiver.feedback.dkim_check import verify_report_dkim
from quiver.feedback.report import FeedbackReport
from quiver.feedback.trust import decide
from quiver.policy.feedback import FeedbackPolicy, TrustedReporter
from quiver.routing.txt import TxtLookupError, TxtResolver

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).parents[1] / "unit" / "arf_fixtures" / "yahoo-cfl-abuse.eml"
KEY = new_key("arf.mail.yahoo.com", "s2048")


@pytest.fixture(params=["builtin", "dnsmasq"])
def server(request: pytest.FixtureRequest) -> Iterator[DnsServer]:
    if request.param == "dnsmasq" and dnsmasq_binary() is None:
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq-base)")
    zone = Zone()
    # A 2048-bit key's record is longer than one 255-byte character-string: the
    # server splits it and the resolver must join it back.
    zone.add_txt(KEY.record_name, KEY.txt)
    zone.add_txt("revoked._domainkey.arf.mail.yahoo.com", "v=DKIM1; k=rsa; p=")
    running = start_dns(zone, prefer=request.param)
    assert running.kind == request.param, running.fallback_reason
    yield running
    running.stop()


def resolver(server: DnsServer) -> TxtResolver:
    return TxtResolver(nameservers=[server.address], timeout=10.0)


def test_signed_report_verifies_through_the_local_dns(server: DnsServer) -> None:
    raw = KEY.sign(FIXTURE.read_bytes().replace(b"\n", b"\r\n"))
    verdict = verify_report_dkim(raw, dnsfunc=resolver(server).dkimpy_dnsfunc)
    assert (verdict.status, verdict.domain) == ("verified", "arf.mail.yahoo.com")
    report = parse_report(raw)
    assert isinstance(report, FeedbackReport)
    policy = FeedbackPolicy(trusted_reporters=(TrustedReporter("yahoo.com"),))
    decision = decide(report, verdict, policy=policy, envelope_sender=report.report_return_path)
    assert (decision.action, decision.reason) == ("act", "trusted_dkim")


def test_tampered_report_fails_through_the_local_dns(server: DnsServer) -> None:
    raw = KEY.sign(FIXTURE.read_bytes()).replace(b"reader@yahoo.com", b"victim@yahoo.com")
    verdict = verify_report_dkim(raw, dnsfunc=resolver(server).dkimpy_dnsfunc)
    assert verdict.status == "failed" and "body hash mismatch" in verdict.reason


def test_missing_and_revoked_keys(server: DnsServer) -> None:
    txt = resolver(server)
    assert txt.lookup("nothing._domainkey.arf.mail.yahoo.com") is None
    assert txt.lookup(KEY.record_name) == KEY.txt.encode()
    revoked = new_key("arf.mail.yahoo.com", "revoked")
    verdict = verify_report_dkim(revoked.sign(FIXTURE.read_bytes()), dnsfunc=txt.dkimpy_dnsfunc)
    assert verdict.status == "failed" and verdict.domain == "arf.mail.yahoo.com"


def test_unreachable_resolver_is_a_lookup_error_not_a_missing_key() -> None:
    # Port 9 on loopback (discard) answers nothing: the lookup times out.
    txt = TxtResolver(nameservers=[("127.0.0.1", 9)], timeout=1.0)
    with pytest.raises(TxtLookupError):
        txt.lookup(KEY.record_name)
    verdict = verify_report_dkim(KEY.sign(FIXTURE.read_bytes()), dnsfunc=txt.dkimpy_dnsfunc)
    assert verdict.status == "failed" and "key lookup failed" in verdict.reason
