"""Adaptive rates against a simulated provider: how soon the sender finds a hidden rate.

The local stack's sender mails `sim-provider.test`, whose MX accepts at most R
messages/s from the sending IP and answers 421 4.7.28 past it; the sender's static
limit for it is 5R. Each run (a fresh stack) watches the MX second by second until
its sending rate (attempts) has stayed within 20 % of R, then doubles R and watches again
(quiver/devstack/convergence.py). Printed per mode (adaptation on, and off with
`[adaptive] enabled = false`), medians over the runs:

    hidden_rate, seconds_to_converge, converged_rate, deferred_share_after
    and the same after R doubles (*_after_change)

A phase that never converges has no seconds_to_converge (null); its rate and deferred
share are then over its last half. Everything runs on loopback and is bounded in
count and time. Prints figures, never fails on time.

    .venv/bin/python bench/adaptive.py --json                  # 3 runs, both modes
    .venv/bin/python bench/adaptive.py --json --runs 1 --modes adaptive
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from quiver.devstack.convergence import ConvergenceError, RunSettings, run_once
from quiver.devstack.convergence_figures import median_of

MODES = ("adaptive", "off")
FIGURES = ("seconds_to_converge", "converged_rate", "deferred_share_after")


def summarise(runs: list[dict[str, Any]], *, hidden_rate: float,
              changed_rate: float) -> dict[str, Any]:
    """Medians over the runs that finished; how many converged in each phase."""
    done = [r for r in runs if "phases" in r]
    out: dict[str, Any] = {"runs": len(runs), "finished": len(done),
                           "hidden_rate": hidden_rate}
    for index, suffix in ((0, ""), (1, "_after_change")):
        phases = [r["phases"][index] for r in done if len(r["phases"]) > index]
        if index == 1:
            if not phases:
                continue
            out["hidden_rate_after_change"] = changed_rate
        for name in FIGURES:
            value = median_of([p[name] for p in phases])
            out[name + suffix] = None if value is None else round(value, 4)
        out["converged_runs" + suffix] = sum(1 for p in phases if p["converged"])
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        out["errors"] = errors
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (default 3)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated: adaptive, off (default both)")
    parser.add_argument("--hidden-rate", type=float, default=20.0, help="R, messages/s")
    parser.add_argument("--changed-rate", type=float, default=None,
                        help="R after the change (default 2R; 0: no change)")
    parser.add_argument("--phase-limit", type=float, default=70.0,
                        help="seconds a phase may run at most (default 70)")
    parser.add_argument("--settle", type=int, default=10,
                        help="seconds within the band that end a phase early (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--keep", action="store_true", help="keep each run's stack files")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--modes: expected some of {', '.join(MODES)}, got {args.modes!r}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    changed = 2 * args.hidden_rate if args.changed_rate is None else args.changed_rate

    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    report: dict[str, Any] = {}
    raw: dict[str, list[dict[str, Any]]] = {}
    for mode in modes:
        runs: list[dict[str, Any]] = []
        for n in range(args.runs):
            say(f"{mode}: run {n + 1}/{args.runs}")
            root = Path(tempfile.mkdtemp(prefix=f"quiver-adaptive-{mode}-"))
            settings = RunSettings(hidden_rate=args.hidden_rate, changed_rate=changed,
                                   adaptive=mode == "adaptive", settle=args.settle,
                                   phase_limit=args.phase_limit)
            try:
                runs.append(run_once(root, settings, say=say))
            except ConvergenceError as exc:
                runs.append({"adaptive": mode == "adaptive", "error": str(exc)})
                say(f"{mode}: run {n + 1} failed: {exc}")
            finally:
                if args.keep:
                    say(f"kept {root}")
                else:
                    shutil.rmtree(root, ignore_errors=True)
        raw[mode] = runs
        report[mode] = summarise(runs, hidden_rate=args.hidden_rate, changed_rate=changed)
    if args.json:
        print(json.dumps({"modes": report, "runs": raw}, indent=2))
    else:
        for mode, figures in report.items():
            print(f"{mode}:")
            for key, value in figures.items():
                print(f"  {key:36} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
