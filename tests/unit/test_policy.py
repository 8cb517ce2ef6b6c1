"""Policy validation: every problem listed with its path; the repo's policy is valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.policy import PolicyError, load_policy, parse_policy
from quiver.units import parse_duration, parse_rate, parse_size

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
"""


def test_repo_policy_is_valid() -> None:
    policy = load_policy(ROOT / "policy" / "quiver.toml")
    assert policy.default_pool in policy.pools
    assert policy.warnings == ()
    for source in policy.sources.values():
        assert source.node in policy.proxy.nodes and source.local_ip


def test_defaults() -> None:
    p = parse_policy(MINIMAL)
    assert p.retry.first == 300 and p.retry.cap == 4 * 3600 and p.retry.max_age == 3 * 86400
    assert [p.retry.delay(n) for n in (1, 2, 3, 7, 8)] == [300, 600, 1200, 14400, 14400]
    assert p.intake.drain_deadline == 100 and p.delivery.port == 25
    assert p.frontend(p.sources["s1"]) is None
    assert p.delivery.signing_processes == 1 and p.delivery.signing_threads == 0
    assert p.delivery.pipeline_next is True


@pytest.mark.parametrize("key", ["signing_processes", "signing_threads"])
@pytest.mark.parametrize("value", ["-1", "17", "true", '"2"', "1.5"])
def test_signing_workers_must_be_a_small_whole_number(key: str, value: str) -> None:
    with pytest.raises(PolicyError, match=rf"delivery\.{key}"):
        parse_policy(MINIMAL + f"\n[delivery]\n{key} = {value}\n")


@pytest.mark.parametrize(("lines", "processes", "threads"), [
    ("", 1, 0),  # the default: one worker process
    ("signing_threads = 2", 0, 2),  # written before processes existed: keeps its threads
    ("signing_threads = 0", 0, 0),  # on the event loop, as it said
    ("signing_processes = 3", 3, 0),
    ("signing_processes = 0\nsigning_threads = 2", 0, 2),
    ("signing_processes = 2\nsigning_threads = 0", 2, 0),
    ("signing_processes = 0", 0, 0),
])
def test_signing_runs_in_processes_unless_the_policy_names_threads(
        lines: str, processes: int, threads: int) -> None:
    d = parse_policy(MINIMAL + f"\n[delivery]\n{lines}\n").delivery
    assert (d.signing_processes, d.signing_threads) == (processes, threads)


def test_signing_processes_and_threads_are_not_both_used() -> None:
    with pytest.raises(PolicyError, match=r"delivery\.signing_processes: set "
                                          r"signing_processes or signing_threads, not both"):
        parse_policy(MINIMAL + "\n[delivery]\nsigning_processes = 1\nsigning_threads = 1\n")


@pytest.mark.parametrize("value", ["1", '"no"', "0"])
def test_pipeline_next_is_true_or_false(value: str) -> None:
    with pytest.raises(PolicyError, match=r"delivery\.pipeline_next"):
        parse_policy(MINIMAL + f"\n[delivery]\npipeline_next = {value}\n")
    off = parse_policy(MINIMAL + "\n[delivery]\npipeline_next = false\n")
    assert off.delivery.pipeline_next is False


def test_every_problem_is_listed_with_its_path() -> None:
    broken = """
version = 1
default_pool = "missing"
typo = 1
[sources.s1]
ip = "300.1.1.1"
[sources.s2]
ip = "192.0.2.2"
ehlo = "o2.example.com"
node = "nowhere"
[pools.p]
sources = { s1 = 0, s9 = 1 }
[[throttles]]
provider = "gmail"
max_rate = "fast"
[[dkim]]
domain = "example.com"
selector = "s"
algorithm = "rsa-md5"
[retry]
max_age = "20d"
[intake]
visibility_timeout = "13h"
"""
    with pytest.raises(PolicyError) as info:
        parse_policy(broken, origin="test.toml")
    problems = info.value.problems
    expected = [
        "typo: unknown key",
        "sources.s1.ip: expected an IP address",
        "sources.s1.ehlo: required",
        "sources.s2.node: unknown proxy node 'nowhere'",
        "pools.p.sources.s1: weight: expected a positive integer",
        "pools.p.sources.s9: unknown source",
        "default_pool: unknown pool 'missing'",
        "throttles[0].provider: unknown provider 'gmail'",
        "throttles[0].max_rate: expected a rate",
        "dkim[0].algorithm: expected rsa-sha256 or ed25519-sha256",
        "dkim[0]: set exactly one of key_file",
        "retry.max_age: must be at most 13d",
        "intake.visibility_timeout: must be between 30s and 12h",
    ]
    for fragment in expected:
        assert any(fragment in p for p in problems), (fragment, problems)
    assert str(info.value).startswith("test.toml: ")


def test_pool_in_one_az_is_a_warning() -> None:
    text = MINIMAL + '[sources.s2]\nip = "192.0.2.2"\nehlo = "o2.example.com"\n'
    text = text.replace('sources = ["s1"]', 'sources = ["s1", "s2"]')
    assert any("all sources are in AZ" in w for w in parse_policy(text).warnings)


def test_duplicate_ips_are_refused() -> None:
    text = MINIMAL + '[sources.s2]\nip = "192.0.2.1"\nehlo = "o2.example.com"\n'
    with pytest.raises(PolicyError, match="already used by source 's1'"):
        parse_policy(text)


def test_not_toml() -> None:
    with pytest.raises(PolicyError, match="not valid TOML"):
        parse_policy("[[[")


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_arbitrary_text_gives_policy_error_not_crash(text: str) -> None:
    try:
        parse_policy(text)
    except PolicyError as exc:
        assert exc.problems


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("25s", 25), ("5m", 300),
                                                ("4h", 14400), ("3d", 259200), (7, 7.0)])
def test_durations(text, seconds) -> None:
    assert parse_duration(text) == seconds


def test_units_refuse_garbage() -> None:
    for bad in ("5 parsecs", "-1s", True, None):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_size("200KiB") == 204800 and parse_size("1MB") == 10**6
    assert parse_rate("300/s").per_second == 300 and str(parse_rate("5000/m")) == "5000/m"
    with pytest.raises(ValueError):
        parse_rate("0/s")


def test_config_check_cli(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "quiver", "config", "check",
                         str(ROOT / "policy" / "quiver.toml")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "ok (5 sources, 2 pools" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('default_pool = "x"\n[sources.a]\nip = "nope"\n')
    result = subprocess.run([sys.executable, "-m", "quiver", "config", "check", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "sources.a.ip: expected an IP address" in result.stderr
    assert "pools: define at least one pool" in result.stderr


def test_content_section_defaults_and_values() -> None:
    default = parse_policy(MINIMAL).content
    assert (default.max_message_size, default.long_lines, default.eight_bit) == (
        40 * 1024 * 1024, "reencode", "declare")
    set_ = parse_policy(MINIMAL + '[content]\nmax_message_size = "10MiB"\nlong_lines = "refuse"\n'
                        'eight_bit = "downgrade"\n').content
    assert (set_.max_message_size, set_.long_lines, set_.eight_bit) == (
        10 * 1024 * 1024, "refuse", "downgrade")


def test_content_section_problems_are_named() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(MINIMAL + '[content]\nmax_message_size = "1GiB"\nlong_lines = "wrap"\n'
                     'eight_bit = "yes"\nsize = 1\n')
    assert info.value.problems == [
        "content.size: unknown key (allowed: eight_bit, long_lines, max_message_size)",
        "content.max_message_size: must be between 1KiB and 100MiB (the sender holds a "
        "message in memory while it is delivered)",
        "content.long_lines: expected 'reencode' or 'refuse', got 'wrap'",
        "content.eight_bit: expected 'declare' or 'downgrade', got 'yes'",
    ]
