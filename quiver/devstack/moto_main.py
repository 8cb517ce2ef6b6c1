"""Entry point of the local moto server: `python -m quiver.devstack.moto_main ARGS`.

moto's SQS reads the clock through `unix_time_millis()`, which builds two UTC
datetimes per call (about 11 µs), and calls it twice per queued message, in
flight or not, every time it lists a queue's visible messages, several times per
ReceiveMessage. At a depth of 400 a ReceiveMessage took 300-500 ms, so the
emulator, not the sender, paced every test that queued a few hundred messages.
`time.time()` is the same value; with it that call takes a few milliseconds.
Everything else is moto's own server, unchanged.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime


def _clock(original: Callable[..., float], scale: float) -> Callable[..., float]:
    def now(dt: datetime | None = None) -> float:
        return time.time() * scale if dt is None else original(dt)

    return now


def patch_clock() -> bool:
    """Swap moto's SQS clock reads for time.time(); False if this moto lacks them."""
    from moto.sqs import models

    originals = (getattr(models, "unix_time", None), getattr(models, "unix_time_millis", None))
    if originals[0] is None or originals[1] is None:
        return False
    models.unix_time = _clock(originals[0], 1.0)  # type: ignore[attr-defined]
    models.unix_time_millis = _clock(originals[1], 1000.0)  # type: ignore[attr-defined]
    return True


def main() -> None:
    from moto import server

    if not patch_clock():
        # Unpatched, every test that queues a few hundred messages would be paced by
        # the emulator again, and nothing would say so.
        sys.exit("moto_main: this moto has no moto.sqs.models.unix_time/unix_time_millis "
                 "to patch; pin a moto version that has them (see pyproject.toml)")
    server.main(sys.argv[1:])


if __name__ == "__main__":
    main()
