"""SMTP AUTH with tenants' keys (the key table on moto's server), each tenant held to
its domains, its connection limit and its message rate."""

from __future__ import annotations

import asyncio
import base64
import smtplib
from collections.abc import Iterator

import aiosmtplib
import pytest
from smtp_ingress_rig import IngressRig, ingress_rig

from quiver.devstack import moto_server
from quiver.ingress.tenant_gate import PolicyTenantGate
from quiver.policy import parse_policy
from quiver.storage.dynamo_keys import DynamoTenantKeys
from quiver.tenants.keys import TenantKeys

pytestmark = pytest.mark.integration

POLICY = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
[tenants.acme]
domains = ["acme.example"]
max_connections = 2
max_messages_per_second = 3
[tenants.globex]
domains = ["globex.example"]
"""


def message(sender: str, subject: str = "hi") -> bytes:
    return (f"From: {sender}\r\nTo: bob@example.com\r\nSubject: {subject}\r\n"
            f"X-Quiver-Campaign: launch\r\n\r\nbody\r\n").encode()


class FrozenClock:
    """Time stands still: a tenant's rate bucket never refills within a test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngressRig]:
    with ingress_rig(tmp_path_factory.mktemp("smtp-auth")) as running:
        yield running


@pytest.fixture(scope="module")
def keys(rig: IngressRig) -> TenantKeys:
    table = rig.deployment.tenant_keys_table
    assert table, "the local resources include the tenant keys table"
    return TenantKeys(DynamoTenantKeys(moto_server.client(rig.moto.endpoint, "dynamodb"), table))


@pytest.fixture(scope="module")
def acme_key(keys: TenantKeys) -> str:
    key, _ = asyncio.run(keys.create(tenant="acme", who="test", now=1.0))
    return key


@pytest.fixture
def gated(rig: IngressRig, keys: TenantKeys) -> Iterator[tuple[IngressRig, tuple[str, int]]]:
    rig.queued()
    gate = PolicyTenantGate(parse_policy(POLICY).tenants, keys)
    listener = rig.listen(gate=gate, clock=FrozenClock())
    yield rig, listener.address
    rig.stop(listener)


def login(rig: IngressRig, address: tuple[str, int], user: str, key: str) -> smtplib.SMTP:
    smtp = smtplib.SMTP(*address, timeout=30)
    smtp.starttls(context=rig.client_tls())
    smtp.login(user, key)
    return smtp


def test_auth_plain_sends_as_the_tenant(gated: tuple[IngressRig, tuple[str, int]],
                                        acme_key: str) -> None:
    rig, address = gated
    with login(rig, address, "acme", acme_key) as smtp:
        smtp.sendmail("news@acme.example", ["bob@example.com"], message("news@acme.example"))
    [queued] = rig.queued()
    assert (queued.envelope.tenant, queued.envelope.campaign) == ("acme", "launch")


async def test_auth_login_with_the_key_id_as_user(
        gated: tuple[IngressRig, tuple[str, int]], acme_key: str) -> None:
    rig, (_, port) = gated
    smtp = aiosmtplib.SMTP(hostname="localhost", port=port, tls_context=rig.client_tls(),
                           start_tls=True, timeout=30)
    await smtp.connect()
    try:
        key_id = acme_key.split("_")[1]
        await smtp.ehlo()
        await smtp.auth_login(key_id, acme_key)
        await smtp.sendmail("news@acme.example", ["bob@example.com"],
                            message("news@acme.example"))
    finally:
        await smtp.quit()
    assert [q.envelope.tenant for q in rig.queued()] == ["acme"]


def test_a_wrong_key_or_user_is_refused(gated: tuple[IngressRig, tuple[str, int]],
                                        acme_key: str) -> None:
    rig, address = gated
    for user, key in (("acme", acme_key[:-1] + "0"), ("globex", acme_key), ("acme", "x")):
        if key == acme_key[:-1] + "0" and acme_key.endswith("0"):
            key = acme_key[:-1] + "1"
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            login(rig, address, user, key)
        assert refused.value.smtp_code == 535


def test_a_tenant_cannot_send_as_another_tenants_domain(
        gated: tuple[IngressRig, tuple[str, int]], acme_key: str) -> None:
    rig, address = gated
    with login(rig, address, "acme", acme_key) as smtp:
        code, text = smtp.mail("news@globex.example")
        assert code == 550 and b"not a verified sending domain of tenant 'acme'" in text
        smtp.rset()
        # The envelope is acme's, the From header globex's: refused after DATA.
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("news@acme.example", ["bob@example.com"],
                          message("ceo@globex.example"))
        assert refused.value.smtp_code == 550
        assert b"From header" in refused.value.smtp_error
    assert rig.queued() == []


def test_connection_limit_and_rate_limit(gated: tuple[IngressRig, tuple[str, int]],
                                         acme_key: str) -> None:
    rig, address = gated
    first, second = (login(rig, address, "acme", acme_key) for _ in range(2))
    third = smtplib.SMTP(*address, timeout=30)
    third.starttls(context=rig.client_tls())
    third.ehlo()
    plain = base64.b64encode(f"\0acme\0{acme_key}".encode()).decode()
    code, text = third.docmd("AUTH", f"PLAIN {plain}")
    assert code == 421 and b"too many connections for tenant acme" in text
    third.close()
    # 3 messages a second, and the clock stands still: the fourth waits.
    for n in range(3):
        first.sendmail("news@acme.example", ["bob@example.com"],
                       message("news@acme.example", str(n)))
    code, text = second.mail("news@acme.example")
    assert code == 451 and b"over its rate of 3 messages a second" in text
    first.quit(), second.quit()
    assert len(rig.queued()) == 3
