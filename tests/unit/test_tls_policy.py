"""TLS modes in policy: `[tls] default` and `[[tls.rules]]` validated with their paths,
`delivery.verify_tls` read as the older spelling of the default, rules matched like
throttles, applied live; and the memory of MX hosts whose handshake failed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quiver.delivery import Path as AttemptPath
from quiver.policy import PolicyError, parse_policy
from quiver.policy.reload import merge_live
from quiver.scheduler.throttle import Destination
from quiver.scheduler.tls import FallbackMemory, tls_mode_for

MINIMAL = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
[providers]
google = ["*.google.com"]
"""


def dest(domain: str = "gmail.com", provider: str | None = "google",
         hosts: tuple[str, ...] = ("gmail-smtp-in.l.google.com",)) -> Destination:
    return Destination(source="s1", site=",".join(hosts), domain=domain, provider=provider,
                       mx_hosts=hosts)


@pytest.mark.parametrize(("delivery", "tls", "default", "warned"), [
    ("", "", "opportunistic", False),  # Postfix's `may`: the default
    ("verify_tls = true", "", "verify", False),  # the older key keeps its meaning
    ("verify_tls = false", "", "opportunistic", False),
    ("", 'default = "required"', "required", False),
    ("verify_tls = true", 'default = "opportunistic"', "opportunistic", True),  # tls wins
])
def test_the_default_mode_and_the_older_verify_tls_key(
        delivery: str, tls: str, default: str, warned: bool) -> None:
    policy = parse_policy(MINIMAL + f"[delivery]\n{delivery}\n[tls]\n{tls}\n")
    assert policy.tls.default == default
    assert any("verify_tls is ignored" in w for w in policy.warnings) == warned


def test_rules_are_matched_like_throttles() -> None:
    policy = parse_policy(MINIMAL + """
[tls]
default = "opportunistic"
[[tls.rules]]            # 0
provider = "google"
mode = "required"
[[tls.rules]]            # 1: a domain beats its provider
domain = "bank.example"
mode = "verify"
[[tls.rules]]            # 2: an mx pattern beats a domain
mx = "*.broken.example"
mode = "opportunistic"
[[tls.rules]]            # 3: a literal beats a wildcard
mx = "mx1.broken.example"
mode = "required"
[[tls.rules]]            # 4: same rank as 3, later: loses
mx = "mx1.broken.example"
mode = "verify"
""")
    tls = policy.tls
    assert tls_mode_for(tls, dest()) == "required"
    assert tls_mode_for(tls, dest(domain="bank.example")) == "verify"
    assert tls_mode_for(tls, dest(domain="bank.example", hosts=("mx2.broken.example",))) == (
        "opportunistic")
    assert tls_mode_for(tls, dest(hosts=("mx1.broken.example",))) == "required"
    assert tls_mode_for(tls, dest(domain="x.test", provider=None, hosts=("mx.x.test",))) == (
        "opportunistic")


@pytest.mark.parametrize(("text", "problem"), [
    ('[tls]\ndefault = "may"', r"tls\.default: expected one of opportunistic, required, verify"),
    ('[tls]\nmode = "verify"', r"tls\.mode: unknown key"),
    ('[[tls.rules]]\ndomain = "a.test"\nmode = "secure"', r"tls\.rules\[0\]\.mode: expected"),
    ('[[tls.rules]]\ndomain = "a.test"', r"tls\.rules\[0\]\.mode: required"),
    ('[[tls.rules]]\nmode = "verify"', r"tls\.rules\[0\]: name exactly one of"),
    ('[[tls.rules]]\ndomain = "a.test"\nmx = "b.test"\nmode = "verify"',
     r"tls\.rules\[0\]: name exactly one of"),
    ('[[tls.rules]]\nprovider = "nobody"\nmode = "verify"',
     r"tls\.rules\[0\]\.provider: unknown provider"),
    ('[tls]\nrules = "verify"', r"tls\.rules: expected an array of tables"),
])
def test_mistakes_are_named_by_their_path(text: str, problem: str) -> None:
    with pytest.raises(PolicyError, match=problem):
        parse_policy(MINIMAL + text + "\n")


def test_tls_modes_apply_live_but_wait_for_a_restart_when_providers_change() -> None:
    base = parse_policy(MINIMAL)
    stricter = parse_policy(MINIMAL + '[tls]\ndefault = "verify"\n')
    merged, change = merge_live(base, stricter)
    assert merged.tls.default == "verify" and change.applied == ("tls",)
    renamed = parse_policy(MINIMAL.replace("google =", "gmail =")
                           + '[[tls.rules]]\nprovider = "gmail"\nmode = "verify"\n')
    merged, change = merge_live(base, renamed)
    assert merged.tls == base.tls and "tls" in change.restart


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("origin", [0.0, 1e6, -1e4])
def test_a_failed_handshake_is_remembered_for_an_hour_whatever_the_clocks_origin(
        origin: float) -> None:
    clock = Clock(origin)
    memory = FallbackMemory(clock=clock)
    assert not memory.failed_lately("mx.a.test", "192.0.2.9")
    memory.remember("mx.a.test", "192.0.2.9")
    clock.now += 3599
    assert memory.failed_lately("mx.a.test", "192.0.2.9")
    assert not memory.failed_lately("mx.a.test", "192.0.2.10")  # per address
    clock.now += 1
    assert not memory.failed_lately("mx.a.test", "192.0.2.9")
    assert len(memory) == 0  # forgotten once expired


def test_the_memory_stays_bounded_forgetting_the_oldest() -> None:
    clock = Clock(0.0)
    memory = FallbackMemory(clock=clock, entries=100)
    for n in range(250):
        clock.now += 1
        memory.remember(f"mx{n}.hostile.test", "192.0.2.9")
    assert len(memory) == 100
    assert memory.failed_lately("mx249.hostile.test", "192.0.2.9")
    assert not memory.failed_lately("mx0.hostile.test", "192.0.2.9")


def test_the_readmes_tls_snippet_is_a_valid_policy_part() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```toml\n(.*?)```", readme, re.S) if "[tls]" in b]
    tls = parse_policy(MINIMAL + snippet).tls
    assert tls.default == "opportunistic"
    assert tls_mode_for(tls, dest(domain="bank.example", provider=None)) == "verify"


def test_every_attempt_names_its_tls_mode_as_an_event_field() -> None:
    fallback = AttemptPath(tls_mode="plaintext-fallback")
    assert fallback.fields["tls_mode"] == "plaintext-fallback"
    assert AttemptPath().fields["tls_mode"] is None  # no connection, no mode
