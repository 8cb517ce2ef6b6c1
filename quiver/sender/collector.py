"""The garbage collector tuned for a long-running sender.

CPython's cyclic collector runs a young-generation pass every 700 net allocations
of container objects: a few times per message on the sender's hot path, and every
pass also walks the objects that only ever grow (policy, botocore's service models,
compiled regexes). Most of the sender's garbage is freed by reference counting, so
the passes find little. After start-up, what exists is moved out of the collector's
sight for good (`gc.freeze`), and the young generation is collected every
YOUNG_THRESHOLD allocations: a few hundred kilobytes of cyclic garbage at most wait
for it, against a measured CPU cost per message (bench/sender_cpu.py).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000


def tune_collector() -> None:
    """Freeze what start-up built and collect the young generation less often. Call it
    once the sender is built, before it takes messages."""
    gc.collect()  # start-up's garbage is freed, not frozen with the rest
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
