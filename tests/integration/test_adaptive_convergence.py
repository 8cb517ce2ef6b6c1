"""A simulated provider on the local stack: its MX accepts at most R messages/s from
each sending IP and answers 421 4.7.28 past it; the sender is not told R.

With a static limit of 5R, the adaptive sender converges to within 20 % of R within
60 s of its first attempt, and after that at most 5 % of its attempts are deferred;
when R doubles mid-run, it finds the new rate again (within 20 % of 2R, in at most
60 s). Measured at the MX, second by second (quiver/devstack/convergence.py); the
60 s and the 5 % are the adaptive rate's promise, the rest are conditions. About
70 s of wall time when it converges as it should (bench/adaptive.py: 23 s
to converge, 16 s after the doubling).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from suite_mode import require_all

from quiver.devstack.convergence import RunSettings, run_once

pytestmark = pytest.mark.integration

HIDDEN_RATE = 20.0
PROMISED_SECONDS = 60
TOLERANCE = 0.2
MAX_DEFERRED_SHARE = 0.05


def test_the_adaptive_sender_finds_the_hidden_rate_and_finds_it_again_when_it_doubles(
        tmp_path: Path) -> None:
    settings = RunSettings(
        hidden_rate=HIDDEN_RATE, changed_rate=2 * HIDDEN_RATE, adaptive=True,
        # Each phase ends 10 s after converging, or 10 s past the promise: a phase
        # that converges at the very limit still shows 10 s within the band.
        settle=10, phase_limit=PROMISED_SECONDS + 10,
        haproxy=True if require_all() else None,
    )
    result = run_once(tmp_path / "stack", settings)
    first, second = result["phases"]
    for phase, rate in ((first, HIDDEN_RATE), (second, 2 * HIDDEN_RATE)):
        assert phase["seconds_to_converge"] is not None, phase
        assert phase["seconds_to_converge"] <= PROMISED_SECONDS, phase
        assert abs(phase["converged_rate"] - rate) <= TOLERANCE * rate, phase
    assert first["deferred_share_after"] <= MAX_DEFERRED_SHARE, first
    # The static limit of 5R was really tried first: the MX refused the excess.
    assert first["refused"] > 0, first
