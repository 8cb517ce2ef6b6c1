"""`quiver preflight` against the local DNS server: a complete zone passes, and each
missing or wrong record fails the run with a row that names it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quiver.devstack.servers.dns import DnsServer, Zone, start_dns
from quiver.dkim.keys import dns_txt_value, generate_private_key

pytestmark = pytest.mark.integration

REGION = "eu-west-1"
SES = f"inbound-smtp.{REGION}.amazonaws.com"
SOURCES = {"tx1": "192.0.2.11", "tx2": "192.0.2.12"}

POLICY = """
version = 1
local_only = true
default_pool = "main"

[sources.tx1]
ip = "192.0.2.11"
ehlo = "tx1.mail.example.test"

[sources.tx2]
ip = "192.0.2.12"
ehlo = "tx2.mail.example.test"

[sources.idle]
ip = "192.0.2.99"
ehlo = "idle.mail.example.test"

[pools.main]
sources = ["tx1", "tx2"]

[[dkim]]
domain = "example.test"
selector = "q2026"
algorithm = "rsa-sha256"
key_file = "dkim.pem"

[return_path]
key_file = "ring.json"

[[return_path.domains]]
from = "example.test"
bounce = "bounces.example.test"

[feedback]
addresses = ["fbl@fbl.example.test"]
"""


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("preflight")
    (folder / "dkim.pem").write_bytes(generate_private_key("rsa-sha256"))
    path = folder / "policy.toml"
    path.write_text(POLICY, encoding="utf-8")
    return path


def complete_zone(pem: bytes, *, omit: tuple[tuple[str, str], ...] = ()) -> Zone:
    """Every record the policy needs, less the (name, type) pairs in `omit`."""
    zone = Zone()

    def add(name: str, rtype: str, put: Callable[[], object]) -> None:
        if (name, rtype) not in omit:
            put()

    for source, ip in SOURCES.items():
        host = f"{source}.mail.example.test"
        add(host, "A", lambda host=host, ip=ip: zone.add_a(host, ip))
        add(ip, "PTR", lambda host=host, ip=ip: zone.add_ptr(ip, host))
    # SPF by include, a and redirect: one lookup each, well within RFC 7208's ten.
    add("example.test", "TXT",
        lambda: zone.add_txt("example.test", "v=spf1 include:_spf.example.test -all"))
    add("_spf.example.test", "TXT", lambda: zone.add_txt(
        "_spf.example.test", "v=spf1 ip4:192.0.2.11 a:tx2.mail.example.test ~all"))
    add("bounces.example.test", "TXT", lambda: zone.add_txt(
        "bounces.example.test", "v=spf1 redirect=_spf.example.test"))
    add("q2026._domainkey.example.test", "TXT",
        lambda: zone.add_txt("q2026._domainkey.example.test", dns_txt_value(pem)))
    add("bounces.example.test", "MX", lambda: zone.add_mx("bounces.example.test", SES))
    add("fbl.example.test", "MX", lambda: zone.add_mx("fbl.example.test", SES))
    return zone


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def serve() -> Iterator[Callable[[Zone], DnsServer]]:
    running: list[DnsServer] = []

    def start(zone: Zone) -> DnsServer:
        server = start_dns(zone)
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


def preflight(policy: Path, server: DnsServer, *extra: str) -> subprocess.CompletedProcess[str]:
    host, port = server.address
    return subprocess.run(
        [sys.executable, "-m", "quiver", "preflight", "--config", str(policy),
         "--nameserver", f"{host}:{port}", "--region", REGION, "--timeout", "5", *extra],
        capture_output=True, text=True, timeout=120, check=False,
    )


def rows(result: subprocess.CompletedProcess[str]) -> list[dict[str, str]]:
    checks: list[dict[str, str]] = json.loads(result.stdout)["checks"]
    return checks


def test_a_complete_zone_is_ready(policy_file: Path,
                                  serve: Callable[[Zone], DnsServer]) -> None:
    pem = (policy_file.parent / "dkim.pem").read_bytes()
    result = preflight(policy_file, serve(complete_zone(pem)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ready to send" in result.stdout
    for check in ("ptr", "fcrdns", "ehlo", "spf", "dkim", "mx"):
        assert f"\n{check} " in result.stdout
    # The idle source is in no pool: nothing of it is checked.
    assert "192.0.2.99" not in result.stdout


def test_every_check_and_subject_in_json(policy_file: Path,
                                         serve: Callable[[Zone], DnsServer]) -> None:
    pem = (policy_file.parent / "dkim.pem").read_bytes()
    result = preflight(policy_file, serve(complete_zone(pem)), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    got = {(r["check"], r["subject"]): r["status"] for r in rows(result)}
    assert got == {
        **{(c, f"{n} {ip}"): "ok" for n, ip in SOURCES.items()
           for c in ("ptr", "fcrdns", "ehlo")},
        **{("spf", f"{d} {n} {ip}"): "ok" for d in ("example.test", "bounces.example.test")
           for n, ip in SOURCES.items()},
        ("dkim", "q2026._domainkey.example.test"): "ok",
        ("mx", "bounces.example.test (bounce domain)"): "ok",
        ("mx", "fbl.example.test (FBL address domain)"): "ok",
    }


@pytest.mark.parametrize(("name", "rtype", "check", "subject", "status"), [
    ("q2026._domainkey.example.test", "TXT", "dkim", "q2026._domainkey.example.test",
     "missing"),
    ("192.0.2.12", "PTR", "ptr", "tx2 192.0.2.12", "missing"),
    ("tx1.mail.example.test", "A", "fcrdns", "tx1 192.0.2.11", "wrong"),
    ("bounces.example.test", "MX", "mx", "bounces.example.test (bounce domain)", "missing"),
    ("_spf.example.test", "TXT", "spf", "example.test tx1 192.0.2.11", "wrong"),
    ("bounces.example.test", "TXT", "spf", "bounces.example.test tx2 192.0.2.12",
     "missing"),
])
def test_one_record_missing_fails_and_is_named(
    policy_file: Path, serve: Callable[[Zone], DnsServer],
    name: str, rtype: str, check: str, subject: str, status: str,
) -> None:
    pem = (policy_file.parent / "dkim.pem").read_bytes()
    server = serve(complete_zone(pem, omit=((name, rtype),)))
    result = preflight(policy_file, server, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    failed = {(r["check"], r["subject"]): r["status"] for r in rows(result)
              if r["status"] != "ok"}
    assert failed[(check, subject)] == status
    table = preflight(policy_file, server)
    assert table.returncode == 1
    line = next(li for li in table.stdout.splitlines() if li.startswith(check + " ")
                and subject in li)
    assert status in line


def test_a_wrong_dkim_key_and_a_foreign_mx(policy_file: Path,
                                           serve: Callable[[Zone], DnsServer]) -> None:
    pem = (policy_file.parent / "dkim.pem").read_bytes()
    zone = complete_zone(pem, omit=(("q2026._domainkey.example.test", "TXT"),
                                    ("fbl.example.test", "MX")))
    zone.add_txt("q2026._domainkey.example.test",
                 dns_txt_value(generate_private_key("rsa-sha256")))
    zone.add_mx("fbl.example.test", "mx.elsewhere.test")
    result = preflight(policy_file, serve(zone), "--json")
    assert result.returncode == 1
    got = {r["check"]: (r["status"], r["detail"]) for r in rows(result)
           if r["check"] in ("dkim", "mx") and r["status"] != "ok"}
    assert got["dkim"][0] == "wrong" and "not the public half" in got["dkim"][1]
    # Mail for an MX elsewhere may still reach SES by relay: a warning, not a failure.
    assert got["mx"][0] == "warn"


def test_usage_errors_exit_2(policy_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("version = 1\n[sources.x]\nip = 'nope'\n", encoding="utf-8")
    for args in (["--config", str(bad)],
                 ["--config", str(policy_file), "--nameserver", "dns.example:53"],
                 ["--config", str(policy_file), "--nameserver", "127.0.0.1:0"],
                 []):
        result = subprocess.run([sys.executable, "-m", "quiver", "preflight", *args],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip()


def test_an_unanswering_nameserver_is_unknown_not_missing(policy_file: Path) -> None:
    # A bound UDP socket that never replies: every lookup times out.
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        host, port = silent.getsockname()
        result = subprocess.run(
            [sys.executable, "-m", "quiver", "preflight", "--config", str(policy_file),
             "--nameserver", f"{host}:{port}", "--timeout", "0.5", "--json"],
            capture_output=True, text=True, timeout=300, check=False,
        )
    assert result.returncode == 1, result.stderr
    statuses = {r["status"] for r in rows(result)}
    assert statuses == {"unknown"}
