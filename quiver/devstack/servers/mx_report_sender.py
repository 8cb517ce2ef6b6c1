"""Mails the reports the MX script asks for, after the 250, from the MX's event loop.

A recipient scripted `asyncbounce…` gets a DSN sent to the transaction's MAIL FROM
with the null sender; one scripted `complain…` gets a feedback report sent to the
FBL address from the reporter (see `mx_reports` for what they contain). Both go to
one report relay, the SMTP server standing in for the bounce domain's MX and for
SES inbound: a real MTA would look up the MX of the report's recipient domain (the
return path's, the FBL address's), but on loopback every server listens on its own
port, so the relay is named explicitly.

Each report is a background task: the SMTP reply never waits for it. A failed
attempt (the relay may not be up yet, or answers 4xx) is retried with doubling
backoff, at most REPORT_ATTEMPTS times; a 5xx refusal is final. Every outcome is
a line in the store's reports.jsonl. Stopping the MX cancels what is pending and
records it as cancelled.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiosmtplib

from quiver.devstack.servers.mx_reports import Delivery, Reporter, arf_for, dsn_for
from quiver.devstack.servers.mx_script import Action, behaviour_for
from quiver.devstack.servers.mx_store import MxStore
from quiver.dkim.errors import DkimError
from quiver.dkim.keys import load_private_key

# Six attempts over about 15 s (0.5, 1, 2, 4, 8): enough for a relay started just
# after the MX, short enough that a demo with a missing relay learns it quickly.
REPORT_ATTEMPTS = 6
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 8.0
# One attempt, connect to final reply. Loopback answers in milliseconds; this only
# catches a relay that hangs.
SEND_TIMEOUT = 30.0
# Reports in flight at once, and waiting at most: a benchmark full of `complain…`
# recipients with the relay down must not grow the MX's memory without bound (each
# pending report holds its original). Past the bound a report is recorded not_sent.
MAX_CONCURRENT_SENDS = 4
MAX_PENDING_REPORTS = 1000
# The local part of the reporter's address when none is configured (Yahoo's is
# feedback@, many are fbl@).
DEFAULT_REPORTER_LOCAL_PART = "fbl"

Kind = Literal["dsn", "arf"]
Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_relay(relay: tuple[str, int] | None) -> None:
    """The relay must be on loopback: the local MX stands in for providers and never
    mails the Internet, whatever a demo's configuration says."""
    if relay is None:
        return
    host, port = relay
    if not 0 < port < 65536:
        raise ValueError(f"report relay port {port} is not a TCP port (1-65535)")
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"report relay {host!r} is not a loopback address; the local MX sends "
            "reports only to servers on this machine (use 127.0.0.1 or ::1)")


def load_reporter(
    *,
    domain: str | None,
    address: str | None,
    selector: str | None,
    key_file: Path | None,
) -> Reporter | None:
    """The configured reporter with its key read and checked, or None without a domain."""
    if domain is None:
        if address is not None or selector is not None or key_file is not None:
            raise ValueError("reporter address, selector and key need a reporter domain")
        return None
    if (selector is None) != (key_file is None):
        raise ValueError("the reporter's selector and key file go together")
    key: bytes | None = None
    if key_file is not None:
        try:
            key = key_file.read_bytes()
            load_private_key(key, "rsa-sha256")
        except OSError as exc:
            raise ValueError(f"cannot read the reporter key {key_file}: {exc}") from exc
        except DkimError as exc:
            raise ValueError(f"reporter key {key_file}: {exc}") from exc
    return Reporter(
        domain=domain, address=address or f"{DEFAULT_REPORTER_LOCAL_PART}@{domain}",
        selector=selector, private_key=key,
    )


def _entry(kind: Kind, rcpts: Sequence[str], *, message: int, to: str, sender: str,
           status: str, **more: Any) -> dict[str, Any]:
    """One line of reports.jsonl. `message` is the stored message the report is about
    (messages/<n>.eml); `mail_from` is the report's own envelope sender ("" for a DSN)."""
    return {"kind": kind, "rcpts": list(rcpts), "message": message, "to": to,
            "mail_from": sender, "status": status, **more}


@dataclass(frozen=True)
class _Job:
    kind: Kind
    rcpts: tuple[str, ...]
    message: int
    to: str
    sender: str
    build: Callable[[], bytes]

    def entry(self, status: str, **more: Any) -> dict[str, Any]:
        return _entry(self.kind, self.rcpts, message=self.message, to=self.to,
                      sender=self.sender, status=status, **more)


class ReportSender:
    """The MX's report mailer: `accepted` after each stored message, `close` on stop.
    Runs on the MX's event loop; reads nothing but its settings and the message."""

    def __init__(
        self,
        *,
        store: MxStore,
        hostname: str,
        relay: tuple[str, int] | None,
        fbl_address: str | None,
        reporter: Reporter | None,
        clock: Clock = _utc_now,
    ) -> None:
        check_relay(relay)
        self._store = store
        self._hostname = hostname
        self._relay = relay
        self._fbl_address = fbl_address
        self._reporter = reporter
        self._clock = clock
        self._pending: set[asyncio.Task[None]] = set()
        self._sends = asyncio.Semaphore(MAX_CONCURRENT_SENDS)
        self._closed = False

    def accepted(
        self, *, message: int, mail_from: str, helo: str | None, peer_ip: str,
        rcpts: Sequence[str], content: bytes,
    ) -> None:
        """A message was stored as `message`: schedule what its recipients' script asks
        for. Returns at once; the reports are built and sent in the background."""
        actions = [(r, behaviour_for(r).action) for r in rcpts]
        bounced = tuple(r for r, action in actions if action is Action.ASYNC_BOUNCE)
        complaints = [r for r, action in actions if action is Action.COMPLAIN]
        if not bounced and not complaints:
            return
        # aiosmtpd keeps the null reverse-path as written: "<>".
        mail_from = "" if mail_from == "<>" else mail_from
        delivery = Delivery(mail_from=mail_from, helo=helo, peer_ip=peer_ip,
                            by=self._hostname, arrived=self._clock())
        if bounced:
            self._dsn(message, bounced, delivery, content)
        for rcpt in complaints:
            self._arf(message, rcpt, delivery, content)

    def _dsn(self, message: int, rcpts: tuple[str, ...], delivery: Delivery,
             content: bytes) -> None:
        def build() -> bytes:
            return dsn_for(original=content, recipients=rcpts, delivery=delivery,
                           now=self._clock())

        job = _Job("dsn", rcpts, message, delivery.mail_from, "", build)
        if not delivery.mail_from:
            self._store.report_outcome(job.entry(
                "not_sent", reason="the message has the null sender; a bounce is never bounced"))
            return
        self._schedule(job)

    def _arf(self, message: int, rcpt: str, delivery: Delivery, content: bytes) -> None:
        reporter, fbl = self._reporter, self._fbl_address
        if self._relay is None:
            reason = "no report relay configured"
        elif fbl is None:
            reason = "no FBL address configured"
        elif reporter is None:
            reason = "no reporter domain configured"
        elif delivery.mail_from.lower() == reporter.address.lower():
            reason = "the message is itself a feedback report; reports are not reported"
        else:
            def build() -> bytes:
                return arf_for(original=content, rcpt=rcpt, delivery=delivery,
                               reporter=reporter, fbl_address=fbl, now=self._clock())

            job = _Job("arf", (rcpt,), message, fbl, reporter.address, build)
            self._schedule(job, signed=reporter.private_key is not None)
            return
        self._store.report_outcome(_entry(
            "arf", [rcpt], message=message, to=fbl or "",
            sender=reporter.address if reporter else "", status="not_sent", reason=reason))

    def _schedule(self, job: _Job, **more: Any) -> None:
        if self._relay is None:
            self._store.report_outcome(job.entry("not_sent", reason="no report relay configured"))
            return
        if self._closed:
            self._store.report_outcome(job.entry("not_sent", reason="the MX is stopping"))
            return
        if len(self._pending) >= MAX_PENDING_REPORTS:
            self._store.report_outcome(job.entry(
                "not_sent", reason=f"{MAX_PENDING_REPORTS} reports already pending"))
            return
        task = asyncio.get_running_loop().create_task(self._deliver(job, self._relay, more))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver(self, job: _Job, relay: tuple[str, int], more: dict[str, Any]) -> None:
        attempt = 0
        try:
            try:
                raw = job.build()
            except Exception as exc:  # a hostile original must not kill the task unrecorded
                reason = str(exc) if isinstance(exc, ValueError) else _describe(exc)
                self._store.report_outcome(job.entry("not_sent", reason=reason))
                return
            delay = FIRST_BACKOFF
            while True:
                attempt += 1
                try:
                    async with self._sends:
                        reply = await self._send_once(job, raw, relay)
                except Exception as exc:  # recorded, whatever it is; _permanent sorts them
                    error = _describe(exc)
                    if _permanent(exc) or attempt >= REPORT_ATTEMPTS:
                        self._store.report_outcome(job.entry(
                            "failed", attempt=attempt, error=error, **more))
                        return
                    self._store.report_outcome(job.entry(
                        "retrying", attempt=attempt, error=error, retry_in=delay, **more))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF)
                    continue
                self._store.report_outcome(job.entry(
                    "sent", attempt=attempt, reply=reply, size=len(raw), **more))
                return
        except asyncio.CancelledError:
            self._store.report_outcome(job.entry("cancelled", attempt=attempt, **more))
            raise

    async def _send_once(self, job: _Job, raw: bytes, relay: tuple[str, int]) -> str:
        host, port = relay
        options = [] if job.sender.isascii() and job.to.isascii() else ["SMTPUTF8"]
        async with aiosmtplib.SMTP(
            hostname=host, port=port, start_tls=False, use_tls=False,
            local_hostname=self._hostname, timeout=SEND_TIMEOUT,
        ) as smtp:
            await smtp.ehlo()
            if not raw.isascii() and smtp.supports_extension("8bitmime"):
                options.append("BODY=8BITMIME")
            _, reply = await smtp.sendmail(job.sender, [job.to], raw, mail_options=options)
            return reply

    async def close(self) -> None:
        """Cancel every pending report (each records `cancelled`) and wait for them."""
        self._closed = True
        pending = list(self._pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _permanent(exc: Exception) -> bool:
    """Whether another attempt would fail the same way: a 5xx reply, a relay without
    SMTPUTF8, an address aiosmtplib refuses to send (ValueError). A 4xx reply and
    network failures (the relay not up yet) are worth retrying."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return all(r.code >= 500 for r in exc.recipients)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code >= 500
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return True
    return not isinstance(exc, aiosmtplib.SMTPException | OSError | TimeoutError)


def _describe(exc: Exception) -> str:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return "; ".join(f"{r.code} {r.message}" for r in exc.recipients)[:500]
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {exc.message}"[:500]
    return f"{type(exc).__name__}: {exc}"[:500]
