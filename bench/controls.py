"""Operator controls on the local stack: how soon `quiver ctl pause` and `quiver ctl
stop` are in force across two sender processes, and that nothing is lost or bounced.

Each cycle: mail flows to two demo domains at two providers; `pause --provider
quiver-remote` (delta.test's MX; timed from the command to the last RCPT the local MX
saw for it, while alpha.test keeps flowing), `resume`; then `stop` (to the last
RCPT anywhere) and `start`. After the cycles the feeder stops and every message
must reach its final event. Printed:
pause_effective_s_max, stop_effective_s_max (and the per-cycle figures),
messages_lost, bounced_by_pause. Everything runs on loopback, bounded in count and
time. Prints figures; never fails on time.

    .venv/bin/python bench/controls.py             # 5 cycles
    .venv/bin/python bench/controls.py --cycles 2 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from quiver.devstack.controls_drill import Drill, DrillError, Feeder, policy_with_controls
from quiver.devstack.export_pump import ExportPump, Tally
from quiver.devstack.stack import LocalStack
from quiver.events import FINAL_EVENTS


def run(cycles: int, root: Path, *, say: bool) -> dict[str, object]:
    def progress(text: str) -> None:
        if say:
            print(text, file=sys.stderr, flush=True)

    stack = LocalStack(root, max_age="30m")
    stack.start()
    assert stack.deployment is not None
    tally = Tally()
    pump = ExportPump(sqs=stack.client("sqs"), deployment=stack.deployment, on_records=tally,
                      environ=stack.env())
    pump.start()
    try:
        config = policy_with_controls(stack)
        for name in ("sender-a", "sender-b"):
            stack.start_sender(name=name, config=config)
        progress(f"local stack up ({stack.describe_egress()}), two senders")
        feeder = Feeder(stack, limit=400 * cycles)
        drill = Drill(stack, say=progress)
        pauses: list[float] = []
        stops: list[float] = []
        error = ""
        feeder.start()
        try:
            for n in range(cycles):
                progress(f"cycle {n + 1}/{cycles}")
                pauses.append(drill.pause_cycle()["pause_effective_s"])
                stops.append(drill.stop_cycle()["stop_effective_s"])
        except DrillError as exc:
            error = str(exc)
        finally:
            sent = feeder.stop()
        deadline = time.monotonic() + 300
        while tally.finals < sent and time.monotonic() < deadline:
            time.sleep(0.5)
        delivered = tally.total("delivered")
        finals = {event: tally.total(event) for event in sorted(FINAL_EVENTS)}
        return {
            "cycles": len(stops), "senders": 2,
            "pause_effective_s_max": round(max(pauses), 3) if pauses else None,
            "stop_effective_s_max": round(max(stops), 3) if stops else None,
            "pause_effective_s": [round(p, 3) for p in pauses],
            "stop_effective_s": [round(s, 3) for s in stops],
            "messages": sent, "finals": finals,
            "messages_lost": sent - sum(finals.values()),
            "bounced_by_pause": finals["bounced"], "delivered": delivered,
            **({"error": error} if error else {}),
        }
    finally:
        pump.stop()
        stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one JSON object, nothing else")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="quiver-controls-") as tmp:
        figures = run(max(1, args.cycles), Path(tmp), say=not args.json)
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
