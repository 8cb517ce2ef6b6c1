"""Suite-wide rules: Hypothesis without wall-clock deadlines, and no silent skips in CI.

A skip makes a green run prove less than it shows. In CI (see suite_mode.py) a
skip whose reason is not in suite_mode.ALLOWED_SKIPS is reported as a failure
that names the reason; on a laptop it stays a skip, listed by `pytest -rs`.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest
from hypothesis import HealthCheck, settings
from suite_mode import ALLOWED_SKIPS, REQUIRE_ALL_ENV, allowed_skip, require_all

# Hypothesis fails an example that takes over 200 ms by default: a statement about the
# machine's load, not about the code. Generation can be slow on a busy machine too.
settings.register_profile(
    "quiver", deadline=None, suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("quiver")

_ALLOWED_SEEN: list[tuple[str, str]] = []


def skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if not report.skipped or hasattr(report, "wasxfail") or not require_all():
        return report
    reason = skip_reason(report)
    if allowed_skip(reason):
        _ALLOWED_SEEN.append((report.nodeid, reason))
        return report
    report.outcome = "failed"
    report.longrepr = (
        f"skipped in a run that must prove everything ({REQUIRE_ALL_ENV} / CI): {reason}\n"
        "Install what it needs (scripts/setup.sh as root), or, if skipping is fair on "
        "every CI host, add the reason to ALLOWED_SKIPS in tests/suite_mode.py with why."
    )
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not require_all():
        return
    terminalreporter.write_line(
        f"{REQUIRE_ALL_ENV}: {len(_ALLOWED_SEEN)} allowed skip(s), "
        f"allow-list of {len(ALLOWED_SKIPS)}; any other skip failed its test"
    )
    for nodeid, reason in _ALLOWED_SEEN:
        terminalreporter.write_line(f"  allowed: {nodeid}: {reason}")
