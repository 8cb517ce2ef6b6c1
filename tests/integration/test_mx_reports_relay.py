"""The local MX mails DSNs and feedback reports after accepting, to a relay on loopback.

The relay is a second local MX (it keeps what it receives); the reporter's DKIM key
is published in the local DNS server and verified over the DNS protocol."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from arf_signing import ReporterKey, new_key

from quiver.bounce.dsn import parse_bounce
from quiver.bounce.dsn_types import BounceReport
from quiver.devstack.servers.dns import DnsServer, Zone, start_dns
from quiver.devstack.servers.mx import MxServer, spawn_mx, start_mx
from quiver.feedback.arf import parse_report
from quiver.feedback.dkim_check import verify_report_dkim
from quiver.feedback.report import FeedbackReport
from quiver.routing.txt import TxtResolver

pytestmark = pytest.mark.integration

RETURN_PATH = "b-x@bounces.example.test"
FBL = "fbl@fbl.example.test"
REPORTER = "reports.alpha.test"
MESSAGE = (
    b"From: News <news@news.example.test>\r\n"
    b"To: reader@alpha.test\r\n"
    b"Subject: weekly news\r\n"
    b"Message-ID: <m-1@news.example.test>\r\n"
    b"List-Unsubscribe: <https://u.example.test/u/T0KEN>\r\n"
    b"\r\n"
    b"Hello.\r\n"
)
DEADLINE = 60.0


@dataclass
class Reporting:
    key: ReporterKey
    key_file: Path
    dns: DnsServer


@pytest.fixture(scope="module")
def reporting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reporting]:
    key = new_key(REPORTER, "s2048")
    key_file = tmp_path_factory.mktemp("reporter") / "reporter.pem"
    key_file.write_bytes(key.private_pem)
    zone = Zone()
    zone.add_txt(key.record_name, key.txt)
    dns = start_dns(zone, prefer="builtin")
    yield Reporting(key, key_file, dns)
    dns.stop()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[MxServer]:
    server = start_mx(store_dir=tmp_path / "relay", hostname="inbound.example.test")
    yield server
    server.stop()


def reporting_mx(store: Path, relay: tuple[str, int], reporting: Reporting) -> MxServer:
    return start_mx(
        store_dir=store, hostname="mx.alpha.test", report_relay=relay, fbl_address=FBL,
        reporter_domain=REPORTER, reporter_selector=reporting.key.selector,
        reporter_key_file=reporting.key_file,
    )


async def send(address: tuple[str, int], rcpts: list[str], *,
               mail_from: str = RETURN_PATH) -> None:
    async with aiosmtplib.SMTP(hostname=address[0], port=address[1], start_tls=False,
                               local_hostname="out-1.example.test", timeout=30) as smtp:
        errors, reply = await smtp.sendmail(mail_from, rcpts, MESSAGE)
    assert errors == {} and reply.startswith("2.0.0")


async def wait_for(what: str, read: Callable[[], list[dict[str, Any]]],
                   done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        entries = read()
        if done(entries):
            return entries
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; reports so far: {entries}")
        await asyncio.sleep(0.05)


def with_status(*statuses: str, count: int = 1) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda entries: sum(e["status"] in statuses for e in entries) >= count


def reserved_port() -> socket.socket:
    """A loopback port that refuses connections: bound, never listening."""
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))
    return held


async def test_dsn_and_feedback_report_reach_the_relay(
    tmp_path: Path, relay: MxServer, reporting: Reporting
) -> None:
    mx = reporting_mx(tmp_path / "mx", relay.address, reporting)
    try:
        await send(mx.address, ["asyncbounce-1@alpha.test"])
        await send(mx.address, ["complain-1@alpha.test", "unsub-1@alpha.test"])
        reports = await wait_for("two reports sent", mx.reports, with_status("sent", count=2))
        received = await wait_for("two reports at the relay", relay.received,
                                  lambda r: len(r) == 2)
    finally:
        mx.stop()
    # Both originals were stored like any other message.
    assert [r["rcpt_tos"] for r in mx.received()] == [
        ["asyncbounce-1@alpha.test"], ["complain-1@alpha.test", "unsub-1@alpha.test"]]
    # Nothing for unsub-1 (a plain accept), nothing pending when the MX stopped.
    assert mx.reports() == reports
    by_kind = {r["kind"]: r for r in reports}
    assert by_kind["dsn"]["rcpts"] == ["asyncbounce-1@alpha.test"]
    assert (by_kind["dsn"]["to"], by_kind["dsn"]["mail_from"]) == (RETURN_PATH, "")
    assert by_kind["arf"]["rcpts"] == ["complain-1@alpha.test"]
    assert (by_kind["arf"]["to"], by_kind["arf"]["mail_from"], by_kind["arf"]["signed"]) == (
        FBL, f"fbl@{REPORTER}", True)
    assert [r["message"] for r in reports] == [1, 2]

    [dsn_record] = [r for r in received if r["rcpt_tos"] == [RETURN_PATH]]
    assert dsn_record["mail_from"] == "<>"  # the null sender, as aiosmtpd keeps it
    assert dsn_record["helo"] == "mx.alpha.test"
    dsn = parse_bounce(Path(dsn_record["file"]).read_bytes())
    assert isinstance(dsn, BounceReport)
    assert [(r.recipient, r.status, r.classification.kind) for r in dsn.recipients] == [
        ("asyncbounce-1@alpha.test", "5.1.1", "hard")]
    assert dsn.addressed_to == RETURN_PATH and dsn.reporting_mta == "mx.alpha.test"

    [arf_record] = [r for r in received if r["rcpt_tos"] == [FBL]]
    assert arf_record["mail_from"] == f"fbl@{REPORTER}"
    raw = Path(arf_record["file"]).read_bytes()
    report = parse_report(raw)
    assert isinstance(report, FeedbackReport)
    assert (report.feedback_type, report.recipients) == ("abuse", ("complain-1@alpha.test",))
    assert report.original_mail_from == RETURN_PATH
    assert report.source_ip == "127.0.0.1"
    assert report.original.list_unsubscribe == "<https://u.example.test/u/T0KEN>"
    resolver = TxtResolver(nameservers=[reporting.dns.address], timeout=10.0)
    verdict = verify_report_dkim(raw, dnsfunc=resolver.dkimpy_dnsfunc)
    assert (verdict.status, verdict.domain) == ("verified", REPORTER)


async def test_without_a_relay_the_recipients_are_only_accepted(tmp_path: Path) -> None:
    mx = start_mx(store_dir=tmp_path / "mx")
    try:
        await send(mx.address, ["asyncbounce-1@alpha.test", "complain-1@alpha.test"])
        reports = await wait_for("both reports noted", mx.reports,
                                 with_status("not_sent", count=2))
    finally:
        mx.stop()
    assert len(mx.received()) == 1
    assert {(r["kind"], r["reason"]) for r in reports} == {
        ("dsn", "no report relay configured"), ("arf", "no report relay configured")}


async def test_mail_from_the_null_sender_or_the_reporter_is_never_reported(
    tmp_path: Path, relay: MxServer, reporting: Reporting
) -> None:
    # Were the relay this MX, a report about a report would start a loop.
    mx = reporting_mx(tmp_path / "mx", relay.address, reporting)
    try:
        await send(mx.address, ["asyncbounce-6@alpha.test"], mail_from="")
        await send(mx.address, ["complain-6@alpha.test"], mail_from=f"fbl@{REPORTER}")
        reports = await wait_for("both reports noted", mx.reports,
                                 with_status("not_sent", "sent", count=2))
    finally:
        mx.stop()
    assert [(r["kind"], r["status"]) for r in reports] == [("dsn", "not_sent"),
                                                            ("arf", "not_sent")]
    assert "null sender" in reports[0]["reason"]
    assert "itself a feedback report" in reports[1]["reason"]
    assert len(mx.received()) == 2 and relay.received() == []


async def test_reports_wait_for_a_relay_that_is_not_up_yet(
    tmp_path: Path, reporting: Reporting
) -> None:
    held = reserved_port()
    port = held.getsockname()[1]
    mx = reporting_mx(tmp_path / "mx", ("127.0.0.1", port), reporting)
    relay: MxServer | None = None
    try:
        await send(mx.address, ["asyncbounce-2@alpha.test"])
        retrying = await wait_for("a failed attempt", mx.reports, with_status("retrying"))
        assert retrying[0]["attempt"] == 1 and "Connect" in retrying[0]["error"]
        held.close()
        relay = start_mx(store_dir=tmp_path / "relay", port=port)
        reports = await wait_for("the report sent", mx.reports, with_status("sent", "failed"))
        assert reports[-1]["status"] == "sent" and reports[-1]["attempt"] >= 2
        await wait_for("the DSN at the relay", relay.received, lambda r: len(r) == 1)
    finally:
        held.close()
        mx.stop()
        if relay is not None:
            relay.stop()


async def test_stopping_the_mx_cancels_pending_reports(
    tmp_path: Path, reporting: Reporting
) -> None:
    held = reserved_port()
    try:
        mx = reporting_mx(tmp_path / "mx", held.getsockname(), reporting)
        try:
            await send(mx.address, ["complain-3@alpha.test"])
            await wait_for("a failed attempt", mx.reports, with_status("retrying"))
        finally:
            mx.stop()
    finally:
        held.close()
    assert mx.reports()[-1]["status"] == "cancelled"
    on_disk = (tmp_path / "mx" / "reports.jsonl").read_text().splitlines()
    assert '"status": "cancelled"' in on_disk[-1]


async def test_a_relay_that_refuses_permanently_is_not_retried(
    tmp_path: Path, relay: MxServer, reporting: Reporting
) -> None:
    mx = start_mx(store_dir=tmp_path / "mx", report_relay=relay.address,
                  fbl_address="permfail-fbl@fbl.example.test", reporter_domain=REPORTER)
    try:
        await send(mx.address, ["complain-4@alpha.test"])
        reports = await wait_for("the refusal", mx.reports, with_status("failed", "sent"))
    finally:
        mx.stop()
    [entry] = reports
    assert (entry["status"], entry["attempt"], entry["signed"]) == ("failed", 1, False)
    assert entry["error"].startswith("550 5.1.1")


def test_settings_are_checked_before_the_mx_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a loopback address"):
        start_mx(store_dir=tmp_path / "mx", report_relay=("192.0.2.1", 25))
    with pytest.raises(ValueError, match="cannot read the reporter key"):
        start_mx(store_dir=tmp_path / "mx", reporter_domain=REPORTER, reporter_selector="s",
                 reporter_key_file=tmp_path / "missing.pem")
    (tmp_path / "not-a-key.pem").write_text("hello")
    with pytest.raises(ValueError, match="not a PEM private key"):
        start_mx(store_dir=tmp_path / "mx", reporter_domain=REPORTER, reporter_selector="s",
                 reporter_key_file=tmp_path / "not-a-key.pem")


async def test_child_process_takes_the_report_settings(
    tmp_path: Path, relay: MxServer, reporting: Reporting
) -> None:
    mx = spawn_mx(
        store_dir=tmp_path / "mx", hostname="mx.alpha.test", report_relay=relay.address,
        fbl_address=FBL, reporter_domain=REPORTER, reporter_address="feedback@reports.alpha.test",
        reporter_selector=reporting.key.selector, reporter_key_file=reporting.key_file,
    )
    try:
        await send(mx.address, ["complain-5@alpha.test"])
        await wait_for("the report sent", mx.reports, with_status("sent", "failed"))
        [record] = await wait_for("the report at the relay", relay.received,
                                  lambda r: len(r) == 1)
    finally:
        mx.stop()
    assert mx.reports()[-1]["status"] == "sent"
    assert record["mail_from"] == "feedback@reports.alpha.test"
    raw = Path(record["file"]).read_bytes()
    resolver = TxtResolver(nameservers=[reporting.dns.address], timeout=10.0)
    assert verify_report_dkim(raw, dnsfunc=resolver.dkimpy_dnsfunc).status == "verified"
