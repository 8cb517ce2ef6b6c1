"""Fixtures of the interop suite: the local stack, and real receiving MTAs on loopback.

Everything here is shared by the suite's modules (package scope): one local stack,
one certificate for every receiver's MX name (from the stack's CA), the port-53
resolver Exim needs, and one receiver of each kind, started on first use and
stopped when the suite ends. A receiver that cannot run here fails its tests when
QUIVER_WITH_INTEROP=1 (scripts/test.sh, after scripts/setup.sh installed them all) or
in CI, and skips them with the reason otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from stackrig import Running

from interop.exim_receiver import EximReceiver
from interop.haraka_receiver import HarakaReceiver
from interop.interop_rig import (
    EXIM,
    HARAKA,
    POSTFIX,
    POSTFIX_LEGACY,
    SITES,
    interop_stack,
    resolver_for_exim,
)
from interop.postfix_receiver import PostfixReceiver
from interop.receivers import ReceiverUnavailable, unavailable
from quiver.devstack.haproxy import find_haproxy
from quiver.devstack.processes import free_port_on
from quiver.devstack.servers.tls import issue_cert


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    if find_haproxy() is None:
        unavailable("haproxy is not installed (scripts/setup.sh installs it)")
    with interop_stack(tmp_path_factory.mktemp("interop")) as running:
        yield running


@pytest.fixture(scope="package")
def mx_port(stack: Running) -> int:
    """The one port every receiver listens on (the policy's delivery port)."""
    return free_port_on([site.ip for site in SITES])


@pytest.fixture(scope="package")
def mx_cert(stack: Running) -> tuple[Path, Path]:
    """(certificate, key) naming every receiver's MX host, issued by the stack's CA."""
    root = stack.stack.root
    return issue_cert(ca_dir=root / "ca", hostnames=[site.mx for site in SITES],
                      ips=[site.ip for site in SITES], dir=root / "interop-tls")


@pytest.fixture(scope="package")
def exim_nameserver(stack: Running) -> Iterator[str]:
    with resolver_for_exim(stack) as address:
        yield address


def _started(make: Callable[[], Any]) -> Iterator[Any]:
    receiver = make()
    try:
        receiver.start()
    except ReceiverUnavailable as error:
        receiver.stop()
        unavailable(str(error))
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture(scope="package")
def postfix(mx_port: int, mx_cert: tuple[Path, Path]) -> Iterator[PostfixReceiver]:
    cert, key = mx_cert
    yield from _started(lambda: PostfixReceiver(site=POSTFIX, legacy=POSTFIX_LEGACY,
                                                port=mx_port, cert=cert, key=key))


@pytest.fixture(scope="package")
def exim(mx_port: int, mx_cert: tuple[Path, Path], exim_nameserver: str
         ) -> Iterator[EximReceiver]:
    cert, key = mx_cert
    yield from _started(lambda: EximReceiver(site=EXIM, port=mx_port, cert=cert, key=key,
                                             nameserver=exim_nameserver))


@pytest.fixture(scope="package")
def haraka(mx_port: int, mx_cert: tuple[Path, Path]) -> Iterator[HarakaReceiver]:
    cert, key = mx_cert
    yield from _started(lambda: HarakaReceiver(site=HARAKA, port=mx_port, cert=cert, key=key))
