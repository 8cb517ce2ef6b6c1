"""The CI gate on skips: an unexpected skip fails a run that must prove everything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from suite_mode import REQUIRE_ALL_ENV, allowed_skip, require_all

TESTS = Path(__file__).resolve().parents[1]

SAMPLE = '''
import pytest

def test_runs():
    assert 1 + 1 == 2

def test_needs_a_missing_tool():
    pytest.skip("frobnicator is not installed")

@pytest.mark.skipif(True, reason="no IPv6 loopback on this host")
def test_needs_ipv6():
    pass
'''


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, False),
    ({"CI": "true"}, True),
    ({"CI": "1"}, True),
    ({"CI": "false"}, False),
    ({REQUIRE_ALL_ENV: "1"}, True),
    ({REQUIRE_ALL_ENV: "0", "CI": "true"}, False),  # the explicit switch wins
    ({REQUIRE_ALL_ENV: "", "CI": "true"}, True),
])
def test_require_all_reads_the_environment(environ: dict[str, str], expected: bool) -> None:
    assert require_all(environ) is expected


def test_only_listed_reasons_are_allowed() -> None:
    assert allowed_skip("no IPv6 loopback on this host")
    assert not allowed_skip("haproxy is not installed (apt-get install haproxy)")
    assert not allowed_skip("no IPv6 loopback on this host, and haproxy is not installed")


def run_sample(tmp_path: Path, **environ: str) -> subprocess.CompletedProcess[str]:
    for name in ("conftest.py", "suite_mode.py"):
        shutil.copy(TESTS / name, tmp_path / name)
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", REQUIRE_ALL_ENV)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         str(tmp_path)],
        cwd=tmp_path, env={**env, **environ}, capture_output=True, text=True, timeout=120,
    )


def test_an_unexpected_skip_fails_ci_and_an_allowed_one_is_counted(tmp_path: Path) -> None:
    result = run_sample(tmp_path, CI="true")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 1 passed, 1 skipped" in result.stdout, result.stdout
    assert "frobnicator is not installed" in result.stdout
    assert "1 allowed skip(s)" in result.stdout


def test_a_laptop_run_keeps_skips_as_skips(tmp_path: Path) -> None:
    result = run_sample(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 2 skipped" in result.stdout, result.stdout
    assert "SKIPPED" in result.stdout and "frobnicator is not installed" in result.stdout
