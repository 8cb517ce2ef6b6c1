"""The throttled MX over real SMTP: past its rate a client IP gets Gmail's 421 4.7.28
at the end of DATA and the connection closes; other client IPs have their own budget.

The gate's clock is injected and only moved by the test, so which message is over
the rate does not depend on how fast this machine runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest

from quiver.devstack.servers.throttled_mx import SecondCount, ThrottledMx, start_throttled_mx

pytestmark = pytest.mark.integration

SENDER = "bounces@sender.test"
MESSAGE = b"From: s@sender.test\r\nTo: r@sim-provider.test\r\nSubject: rate\r\n\r\nbody\r\n"


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def mx(tmp_path: Path, clock: Clock) -> Iterator[ThrottledMx]:
    # 4/s with a burst of one message: the second message in the same instant is over.
    server = start_throttled_mx(rate=4, store_dir=tmp_path / "mx", clock=clock)
    yield server
    server.stop()


def client(mx: ThrottledMx, source: str) -> aiosmtplib.SMTP:
    host, port = mx.address
    return aiosmtplib.SMTP(hostname=host, port=port, source_address=(source, 0),
                           start_tls=False, local_hostname="client.sender.test", timeout=30)


async def send(mx: ThrottledMx, source: str) -> aiosmtplib.SMTPResponse:
    """One message on a fresh connection: the end-of-DATA reply, or the refusal."""
    smtp = client(mx, source)
    await smtp.connect()
    try:
        _, reply = await smtp.sendmail(SENDER, ["r@sim-provider.test"], MESSAGE)
        await smtp.quit()
        return aiosmtplib.SMTPResponse(250, reply)
    except aiosmtplib.SMTPDataError as exc:
        return aiosmtplib.SMTPResponse(exc.code, exc.message)
    finally:
        smtp.close()


async def test_over_the_rate_the_mx_answers_421_4_7_28_and_closes(mx: ThrottledMx) -> None:
    smtp = client(mx, "127.0.0.4")
    await smtp.connect()
    _, first = await smtp.sendmail(SENDER, ["r@sim-provider.test"], MESSAGE)
    assert first.startswith("2.0.0")
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await smtp.sendmail(SENDER, ["r@sim-provider.test"], MESSAGE)
    assert refused.value.code == 421
    assert refused.value.message.startswith("4.7.28 [127.0.0.4] Our system has detected")
    assert "UnsolicitedRateLimitError" in refused.value.message
    # A 421 closes the connection: the next command finds it gone.
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await smtp.noop()
    smtp.close()
    assert len(mx.server.received()) == 1
    assert mx.gate.counts() == [SecondCount(5000, 1, 1)]


async def test_each_client_ip_has_its_own_rate(mx: ThrottledMx) -> None:
    assert (await send(mx, "127.0.0.2")).code == 250
    assert (await send(mx, "127.0.0.2")).code == 421
    assert (await send(mx, "127.0.0.3")).code == 250
    assert [r["peer_ip"] for r in mx.server.received()] == ["127.0.0.2", "127.0.0.3"]


async def test_time_refills_the_budget_and_set_rate_raises_it(
        mx: ThrottledMx, clock: Clock) -> None:
    assert (await send(mx, "127.0.0.2")).code == 250
    assert (await send(mx, "127.0.0.2")).code == 421
    clock.now += 0.25  # one message's worth at 4/s
    assert (await send(mx, "127.0.0.2")).code == 250
    assert (await send(mx, "127.0.0.2")).code == 421
    mx.set_rate(8)  # burst: 2 messages
    clock.now += 1.0
    codes = [(await send(mx, "127.0.0.2")).code for _ in range(3)]
    assert codes == [250, 250, 421]
    assert mx.gate.counts() == [SecondCount(5000, 2, 2), SecondCount(5001, 2, 1)]
