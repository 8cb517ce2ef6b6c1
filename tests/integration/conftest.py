"""Shared fixtures: one embedded local stack (moto server, DNS, MX, sender) per session."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from demo_run import DemoRun
from stackrig import Running, running_stack

# The demo's run for its tests: 100 messages, two of each scripted mailbox
# (asyncbounce, complain, unsub, mailunsub, permfail).
DEMO_MESSAGES = 100
DEMO_TIMEOUT = 600


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_stack(tmp_path_factory.mktemp("quiver-local")) as running:
        yield running


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One `quiver demo` run, its events kept (`--keep`): the demo's own test and the
    saved queries' tests read it."""
    base = tmp_path_factory.mktemp("demo")
    root, kept = base / "demo", base / "kept"
    done = subprocess.run(
        [sys.executable, "-m", "quiver", "demo", "--messages", str(DEMO_MESSAGES), "--json",
         "--dir", str(root), "--keep", str(kept)],
        capture_output=True, text=True, timeout=DEMO_TIMEOUT, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return DemoRun(root=root, kept=kept, summary=json.loads(done.stdout))
