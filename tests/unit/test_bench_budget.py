"""bench/e2e.py: what both issue 16 ratios leave the sender besides its signature."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from e2e import Outcome, QuiverRun, RelayRun, run_budgets, without_rsa_budget

US = st.floats(min_value=1.0, max_value=1e5, allow_nan=False)


@given(rsa=US, postfix=US)
def test_a_sender_at_the_budget_meets_both_ratios_and_one_past_it_misses_one(
        rsa: float, postfix: float) -> None:
    budget = without_rsa_budget(rsa, postfix)
    sender = rsa + budget
    assert (sender - rsa) / rsa <= 0.6 + 1e-9 and sender / postfix <= 0.5 + 1e-9
    past = rsa + budget + 1e-6 * (rsa + postfix)
    assert (past - rsa) / rsa > 0.6 or past / postfix > 0.5


def test_the_widest_budget_is_where_a_signature_costs_0_3125_of_postfix() -> None:
    postfix = 2000.0
    widest = without_rsa_budget(0.3125 * postfix, postfix)
    assert widest == pytest.approx(0.1875 * postfix)
    for rsa in (250.0, 500.0, 800.0, 1000.0):
        assert without_rsa_budget(rsa, postfix) <= widest
    # A signature dearer than half of Postfix's whole message leaves nothing.
    assert without_rsa_budget(1100.0, postfix) < 0


def quiver_run(complete: bool = True) -> QuiverRun:
    return QuiverRun(messages=1000, seconds=1.0, complete=complete, sender_cpu_s=0.7,
                     moto_cpu_s=0.9, sink_cpu_s=0.1, driver_cpu_s=0.1, enqueue_failures=0,
                     sqs_calls={})


def relay_run(cpu_s: float, complete: bool = True) -> RelayRun:
    return RelayRun(messages=1000, seconds=1.0, complete=complete, postfix_cpu_s=cpu_s,
                    source_cpu_s=0.1, sink_cpu_s=0.1)


def test_each_run_pairs_its_own_signature_with_the_postfix_run_after_it() -> None:
    outcome = Outcome(settings=None,  # type: ignore[arg-type]
                      quiver=[quiver_run(), quiver_run(complete=False), quiver_run()],
                      postfix=[relay_run(2.0), relay_run(2.0), relay_run(1.6)],
                      rsa_sign_us=[250.0, 250.0, 600.0])
    # Run 1: 0.6 x 250. Run 2 did not complete: no budget from it. Run 3: Postfix
    # 1,600 µs a message, RSA 600: 0.5 x 1,600 - 600.
    assert run_budgets(outcome) == [pytest.approx(150.0), pytest.approx(200.0)]
    # Without a Postfix run there is no budget at all.
    assert run_budgets(Outcome(settings=None,  # type: ignore[arg-type]
                               quiver=[quiver_run()], rsa_sign_us=[250.0])) == []
