"""The sender runs its start hooks (membership's join) before its first receive."""

from __future__ import annotations

import asyncio
from typing import Any

from quiver.policy import Intake
from quiver.sender.engine import Sender


class RecordingQueue:
    def __init__(self, calls: list[str], stop: asyncio.Event) -> None:
        self.calls = calls
        self.stop = stop

    async def receive(self, **kwargs: Any) -> list[Any]:
        self.calls.append("receive")
        self.stop.set()
        return []

    async def change_visibility(self, receipts: list[str], *, seconds: int) -> None:
        self.calls.append("change_visibility")


class RecordingCompleter:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def start(self) -> None:
        self.calls.append("completer start")

    async def close(self) -> None:
        self.calls.append("completer close")


def test_start_hooks_run_before_the_completer_and_the_first_receive() -> None:
    calls: list[str] = []

    async def scenario() -> None:
        stop = asyncio.Event()

        async def join(given: asyncio.Event) -> None:
            assert given is stop  # a hook can return early on stop
            await asyncio.sleep(0.05)
            calls.append("join")

        sender = Sender(intake=Intake(receivers=1, drain_deadline=1.0),
                        queue=RecordingQueue(calls, stop),  # type: ignore[arg-type]
                        handler=None,  # type: ignore[arg-type]
                        completer=RecordingCompleter(calls),  # type: ignore[arg-type]
                        on_start=[join])
        await asyncio.wait_for(sender.run(stop), timeout=10)

    asyncio.run(scenario())
    assert calls[:3] == ["join", "completer start", "receive"]
    assert calls[-1] == "completer close"
