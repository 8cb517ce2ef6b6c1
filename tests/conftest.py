"""Suite-wide rules: Hypothesis without wall-clock deadlines, and no silent skips in CI.

A skip makes a green run prove less than it shows. In CI (see suite_mode.py) a
skip whose reason is not in suite_mode.ALLOWED_SKIPS is reported as a failure
that names the reason; on a laptop it stays a skip, listed by `pytest -rs`.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

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
        return report
    report.outcome = "failed"
    report.longrepr = (
        f"skipped in a run that must prove everything ({REQUIRE_ALL_ENV} / CI): {reason}\n"
        "Install what it needs (scripts/setup.sh as root), or, if skipping is fair on "
        "every CI host, add the reason to ALLOWED_SKIPS in tests/suite_mode.py with why."
    )
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Here rather than in makereport: with pytest-xdist the workers make the reports
    # and only this hook runs where the summary is printed.
    if report.skipped and require_all() and not hasattr(report, "wasxfail"):
        _ALLOWED_SEEN.append((report.nodeid, skip_reason(report)))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not require_all():
        return
    terminalreporter.write_line(
        f"{REQUIRE_ALL_ENV}: {len(_ALLOWED_SEEN)} allowed skip(s), "
        f"allow-list of {len(ALLOWED_SKIPS)}; any other skip failed its test"
    )
    for nodeid, reason in _ALLOWED_SEEN:
        terminalreporter.write_line(f"  allowed: {nodeid}: {reason}")


# pytest-xdist (`scripts/test.sh` runs with `-n`): most integration tests wait on
# servers, timers and retries rather than on the CPU, so several run at once. Each
# worker builds its own fixtures, so the tests that share them stay together on one
# worker, in order: every test of a module (module fixtures start real servers, and
# some tests read what an earlier one left), of an integration subpackage (interop/
# shares one stack, the receivers and the port-53 resolver Exim reads), and of the
# CDK tests (one synth per session). A module that uses the session's local stack
# starts its own on a worker that has none yet.
#
# Grouping is by node id in a scheduler of our own: xdist's `xdist_group` marks
# rewrite `item._nodeid`, which pytest 9.2's nodes no longer read.
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return worker_scope(nodeid)

    return SharedFixtureScheduling(config, log)


def worker_scope(nodeid: str) -> str:
    """The tests that must run on one worker share this scope."""
    path = nodeid.split("::", 1)[0]
    parts = path.split("/")
    if parts[:2] == ["tests", "infra"]:
        return "tests/infra"
    if parts[:2] == ["tests", "integration"] and len(parts) > 3:
        return "/".join(parts[:3])
    return path
