"""`quiver trace` on the local stack: a recipient the local MX defers twice and then
accepts (`defer2-…`), a sibling it refuses, the sender, the export to the events
bucket on moto's server, and the command as a user runs it (a child process with the
environment `quiver local` prints)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from stackrig import Running, enqueue, message, running_stack

pytestmark = pytest.mark.integration

# The README's example: any case, as the trace matches it in another.
DEFERRED = "Defer2-Ann@alpha.test"
REFUSED = "permfail-bob@alpha.test"


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, str]]:
    with running_stack(tmp_path_factory.mktemp("trace"), max_age="60s") as running:
        msg = message(0, [DEFERRED, REFUSED], prefix="welcome")
        enqueue(running, [msg])
        events = running.events_for({msg.id}, finals=2, timeout=180)
        assert sum(e["event"] in ("delivered", "bounced") for e in events) == 2, events
        yield running, msg.id


def trace(running: Running, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quiver", "trace", *args],
                          env={**os.environ, **running.stack.env()}, capture_output=True,
                          text=True, timeout=120)


def test_an_address_shows_deferred_deferred_delivered_with_attempts_1_2_3(
        traced: tuple[Running, str]) -> None:
    running, message_id = traced
    done = trace(running, "defer2-ann@ALPHA.test", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["reader"] == "s3"
    assert [(e["event"], e["attempt"]) for e in out["events"]] == [
        ("deferred", 1), ("deferred", 2), ("delivered", 3)]
    # Matched in another case; shown as it was sent.
    assert {e["rcpt"] for e in out["events"]} == {DEFERRED}
    assert [e["response"]["code"] for e in out["events"]] == [451, 451, 250]
    assert all(e["next_attempt_at"] > e["at"] for e in out["events"][:2])
    (recipient,) = out["recipients"]
    assert recipient["id"] == message_id
    assert recipient["state"] == "delivered"
    assert recipient["verdict"].startswith("delivered at " + out["events"][2]["at"])
    # The export claimed the final event in the finals table.
    assert recipient["claim"]["event"] == "delivered"


def test_a_message_id_shows_each_recipient_with_a_verdict_in_text(
        traced: tuple[Running, str]) -> None:
    running, message_id = traced
    done = trace(running, message_id, "--since", "1h")
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    lines = done.stdout.splitlines()
    table = [line.split() for line in lines if line.startswith("20")]
    assert [row[1] for row in table if row[3].lower() == DEFERRED.lower()] == [
        "deferred", "deferred", "delivered"]
    assert [row[1] for row in table if row[3] == REFUSED] == ["bounced"]
    verdicts = {line.split(": ", 1)[0]: line.split(": ", 1)[1]
                for line in lines if line.startswith(message_id + " ")}
    assert verdicts[f"{message_id} {REFUSED}"].startswith("bounced: 550 5.1.1 user unknown")
    (deferred_line,) = [v for k, v in verdicts.items() if k.lower().endswith(DEFERRED.lower())]
    assert deferred_line.startswith("delivered at ")


def test_nothing_found_exits_1_and_bad_input_exits_2(traced: tuple[Running, str],
                                                     tmp_path: Path) -> None:
    running, _ = traced
    nobody = trace(running, "nobody@alpha.test")
    assert nobody.returncode == 1, nobody.stderr
    assert "no events in the window" in nobody.stdout
    bad = trace(running, "someone@alpha.test", "--since", "yesterday")
    assert bad.returncode == 2
    assert "--since" in bad.stderr and "expected a duration" in bad.stderr
    no_athena = trace(running, "someone@alpha.test", "--athena")
    assert no_athena.returncode == 2
    assert "QUIVER_ATHENA_WORKGROUP" in no_athena.stderr


def readme_blocks(lang: str) -> list[str]:
    out, current, info = [], None, ""
    for line in (Path(__file__).resolve().parents[2] / "README.md").read_text().splitlines():
        if current is None and line.startswith("```"):
            current, info = [], line[3:].strip()
        elif current is not None and line.strip() == "```":
            if info == lang:
                out.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(line)
    return out


def test_the_readmes_trace_commands_run_and_its_output_is_what_they_print(
        traced: tuple[Running, str]) -> None:
    running, message_id = traced
    (shell,) = [b for b in readme_blocks("sh") if "quiver trace " in b]
    assert message_id in shell
    env = {**os.environ, **running.stack.env(),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    outputs = []
    for line in shell.splitlines():
        command = line.partition("#")[0]
        done = subprocess.run(shlex.split(command), env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, (line, done.stderr)
        outputs.append(done.stdout)
    json.loads(outputs[1])
    (shown,) = [b for b in readme_blocks("") if b.startswith("$ quiver trace ")]

    def shape(text: str) -> tuple[list[str], list[list[str]], list[str]]:
        lines = text.splitlines()
        header = [line for line in lines if line.startswith("AT ")]
        rows = [line.split()[1:5] for line in lines if line.startswith("20")]
        verdicts = [line.split(" at ")[0] for line in lines if line.startswith(message_id)]
        return header, rows, verdicts

    assert shape(shown) == shape(outputs[0])
