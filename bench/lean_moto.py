"""moto's server for the end-to-end benchmark: SQS calls counted, two costs optionally cut.

moto stands in for SQS, whose CPU in production is not on the sender's machine.
On this benchmark's two cores, plain moto spends several milliseconds of CPU per
message, mostly in two places that grow with the number of messages in a queue
(in flight included):

- every "now" it takes goes through `datetime.utcnow() - datetime(1970)`, about
  2 µs, and it takes two per message per visibility check, for every message in
  the queue, on every receive and every attribute read;
- every message it returns from ReceiveMessage first checks the retention period
  by computing *all* the queue's attributes (three full scans of the queue).

`lean` keeps the answers identical: the same instant from `time.time()`, and the
retention period read from the queue itself. Either way every SQS call is
appended to a log as `Action queue-name entries`, so the benchmark can say how
many calls of each kind a message costs.

Run as a script it applies the patches and starts moto's server with the same
arguments as `python -m moto.server`; `start()` does that as a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from quiver.localstack.moto_server import (
    FAKE_CREDENTIALS,
    MotoServer,
    free_port,
    wait_for_moto,
)

ENV_CALLS = "QUIVER_BENCH_MOTO_CALLS"
ENV_LEAN = "QUIVER_BENCH_MOTO_LEAN"


def make_lean() -> None:
    import moto.sqs.models as models

    original_time = models.unix_time
    original_millis = models.unix_time_millis

    def unix_time(dt: Any = None) -> float:
        return time.time() if dt is None else float(original_time(dt))

    def unix_time_millis(dt: Any = None) -> float:
        return time.time() * 1000.0 if dt is None else float(original_millis(dt))

    def retained(self: Any, queue_name: str, message: Any) -> bool:
        queue = self.get_queue(queue_name)
        return bool(int(queue.message_retention_period) + message.sent_timestamp / 1000
                    > time.time())

    models.unix_time = unix_time
    models.unix_time_millis = unix_time_millis
    models.SQSBackend.is_message_valid_based_on_retention_period = retained


def count_calls(path: Path) -> None:
    from moto.sqs.responses import SQSResponse

    log = path.open("a", buffering=1)
    lock = threading.Lock()
    call_action = SQSResponse.call_action

    def counted(self: Any) -> Any:
        try:
            entries = self._get_param("Entries")
            line = f"{self._get_action()} {self._get_queue_name()} {len(entries or ())}\n"
        except Exception:  # counting must never change an answer
            line = "unknown - 0\n"
        with lock:
            log.write(line)
        return call_action(self)

    SQSResponse.call_action = counted


class CallLog:
    """The SQS calls moto has served, read back by the benchmark between phases."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def since(self, mark: int) -> Counter[str]:
        """Calls since `mark`, keyed `Action queue`; entries of batch calls as `... entries`."""
        counts: Counter[str] = Counter()
        if not self.path.exists():
            return counts
        with self.path.open("rb") as f:
            f.seek(mark)
            for line in f.read().decode(errors="replace").splitlines():
                parts = line.split()
                if len(parts) != 3:
                    continue
                action, queue, entries = parts
                counts[f"{action} {queue}"] += 1
                if entries != "0":
                    counts[f"{action} {queue} entries"] += int(entries)
        return counts


def start(*, log_dir: Path, lean: bool, host: str = "127.0.0.1"
          ) -> tuple[MotoServer, CallLog]:
    """Like quiver.localstack.moto_server.start_moto, with the call log, optionally lean."""
    port = free_port(host)
    log_path = log_dir / "moto.log"
    calls = CallLog(log_dir / "moto-calls.log")
    log = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, __file__, "-H", host, "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, **FAKE_CREDENTIALS, ENV_CALLS: str(calls.path),
             ENV_LEAN: "1" if lean else ""},
    )
    log.close()
    endpoint = f"http://{host}:{port}"
    wait_for_moto(process, endpoint=endpoint, log_path=log_path)
    return MotoServer(process=process, endpoint=endpoint, log_path=log_path), calls


if __name__ == "__main__":
    if os.environ.get(ENV_LEAN):
        make_lean()
    if os.environ.get(ENV_CALLS):
        count_calls(Path(os.environ[ENV_CALLS]))
    from moto.server import main

    main(sys.argv[1:])
