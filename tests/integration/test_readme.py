"""Every snippet in the README runs: the client code, `quiver enqueue`, `quiver config check`."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from local_command import OutputReader, descendants, read_env_file, still_running, wait_until
from stackrig import Running

from quiver.devstack.samples import render
from quiver.events import FINAL_EVENTS
from quiver.policy import load_policy

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    """Fenced code blocks with the given info string ("" for a bare fence)."""
    out, current, info = [], None, ""
    for line in README.splitlines():
        if current is None and line.startswith("```"):
            current, info = [], line[3:].strip()
        elif current is not None and line.strip() == "```":
            if info == lang:
                out.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(line)
    return out


def test_config_check_snippet_prints_what_the_readme_shows(tmp_path: Path) -> None:
    (toml,) = [b for b in blocks("toml") if 'ip = "nope"' in b]
    (shown,) = [b for b in blocks("") if "$ quiver config check broken.toml" in b]
    (tmp_path / "broken.toml").write_text(toml)
    result = subprocess.run([sys.executable, "-m", "quiver", "config", "check", "broken.toml"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1
    expected = shown.split("\n", 1)[1].strip()
    assert result.stderr.strip() == expected


def test_client_snippet_enqueues_a_message_that_is_delivered(local_stack: Running,
                                                             monkeypatch) -> None:
    (snippet,) = [b for b in blocks("python") if "QuiverClient.from_settings" in b]
    for key, value in local_stack.stack.env().items():
        monkeypatch.setenv(key, value)
    to = "ann@example.org"
    code = snippet.replace('"ann@example.org"', '"readme-client@alpha.test"')
    namespace = {"rendered_message_bytes": render(
        message_id="order-42-confirmation", from_addr="hello@news.quiver-demo.test",
        to=["readme-client@alpha.test"], subject="Your order")}
    assert to in snippet
    exec(compile(code, "README.md", "exec"), namespace)
    events = local_stack.events_for({"order-42-confirmation"}, finals=1, timeout=60)
    assert [e["event"] for e in events if e["event"] in FINAL_EVENTS] == ["delivered"]
    # `meta` as exported: the number as its JSON text (README, "Events").
    assert events[0]["meta"] == {"order": "42"}
    assert events[0]["campaign"] == "order-confirmation"


def test_enqueue_snippet_from_the_shell(local_stack: Running, tmp_path: Path) -> None:
    (shell,) = [b for b in blocks("sh") if "quiver enqueue" in b]
    command = next(line for line in shell.splitlines() if line.startswith("quiver enqueue"))
    (tmp_path / "message.eml").write_bytes(render(
        message_id="readme-shell", from_addr="hello@news.quiver-demo.test",
        to=["someone@alpha.test"], subject="from the shell"))
    env = {**os.environ, **local_stack.stack.env(),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run([*command.split(), "--id", "readme-shell"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "enqueued readme-shell" in result.stdout
    events = local_stack.events_for({"readme-shell"}, finals=1, timeout=60)
    assert [e["event"] for e in events if e["event"] in FINAL_EVENTS] == ["delivered"]


def test_suppression_section_snippet_is_the_defaults() -> None:
    from quiver.policy import parse_policy
    from quiver.policy.suppression import SuppressionPolicy

    (section,) = [b for b in blocks("toml") if b.startswith("[suppression]")]
    policy = parse_policy('default_pool = "p"\n[sources.s]\nip = "192.0.2.1"\n'
                          'ehlo = "o.example.com"\n[pools.p]\nsources = ["s"]\n' + section)
    assert policy.suppression == SuppressionPolicy()


def test_suppression_snippet_from_the_shell(local_stack: Running, tmp_path: Path) -> None:
    """The README's `quiver suppression` session, line by line, on the local stack's
    table: each `check` exits as its comment says, the export holds what was imported."""
    (shell,) = [b for b in blocks("sh") if "quiver suppression import" in b]
    env = {**os.environ, **local_stack.stack.env(),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    heredoc, _, rest = shell.partition("\nCSV\n")
    done = subprocess.run(["bash", "-c", heredoc + "\nCSV\n"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for line in rest.splitlines():
        command, _, comment = line.partition("#")
        expected = int(comment.split(":")[0].split()[-1]) if "exit" in comment else 0
        result = subprocess.run(shlex.split(command), cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == expected, (line, result.stdout, result.stderr)
        if "import" in command:
            assert result.stdout == "imported 2 entries\n"
        if "check" in command and expected == 0:
            assert result.stdout.startswith("bob@shop.example: suppressed: unsubscribe in "
                                            "scope tenant:shop since ")
    exported = (tmp_path / "suppression-backup.csv").read_text().splitlines()
    assert exported[0] == "address,scope,reason,created,expires,source"
    assert "ann@shop.example,global,complaint,2026-11-02T09:30:00.000Z,,old ESP export" in \
        exported
    assert not any(line.startswith("carol@") for line in exported)


# --- `quiver local` with its knobs, as the README shows them --------------------------

STARTUP_TIMEOUT = 180.0
DELIVERY_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0


def local_snippets() -> tuple[str, str, str]:
    """The README's records file, policy fragment and `quiver local` command line."""
    (records,) = [b for b in blocks("toml") if b.startswith("# records.toml")]
    (fragment,) = [b for b in blocks("toml") if b.startswith("# local-policy.toml")]
    (shell,) = [b for b in blocks("sh") if "quiver local --dir" in b]
    (command,) = [line for line in shell.splitlines() if line.startswith("quiver local")]
    return records, fragment, command


def venv_env() -> dict[str, str]:
    """The environment a user has: this venv's `quiver` on PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def test_local_dns_mistake_snippet_prints_what_the_readme_shows(tmp_path: Path) -> None:
    records, _, _ = local_snippets()
    (shown,) = [b for b in blocks("") if b.startswith("$ quiver local --dns records.toml")]
    broken = records.replace('value = "127.0.0.1"', 'value = "127.0.0.300"')
    assert broken != records
    (tmp_path / "records.toml").write_text(broken)
    result = subprocess.run(shown.splitlines()[0][2:].split(), cwd=tmp_path, env=venv_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == shown.split("\n", 1)[1].strip()
    assert not (tmp_path / ".quiver").exists()  # nothing started, nothing written


def received(root: Path, rcpt: str) -> dict | None:
    """The local MX's record of the message it accepted for `rcpt`, if any."""
    log = root / "mx" / "received.jsonl"
    if not log.exists():
        return None
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if rcpt in record["rcpt_tos"]:
            return record
    return None


def test_local_without_a_sender_with_records_and_a_policy_fragment(tmp_path: Path) -> None:
    """`quiver local --no-sender --dns F --policy P` as the README shows it: the printed
    sender command delivers to a domain that only F defines, through P's pool and with
    P's EHLO, again after kill -9 and a restart; SIGTERM leaves no process behind."""
    records, fragment, command = local_snippets()
    (tmp_path / "records.toml").write_text(records)
    (tmp_path / "local-policy.toml").write_text(fragment)
    (tmp_path / "logs").mkdir()
    env = venv_env()
    local = subprocess.Popen(command.split(), cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = OutputReader(local)
    senders: list[subprocess.Popen[bytes]] = []
    try:
        output.wait_for(lambda line: line == "Press Ctrl-C to stop.", timeout=STARTUP_TIMEOUT)
        root = tmp_path / ".quiver" / "local"
        stack_env = read_env_file(root / "env.sh")
        policy = load_policy(root / "policy.toml")
        # The fragment, merged key by key over the generated policy.
        assert policy.local_only is True
        assert (policy.retry.max_age, policy.retry.first) == (600, 1)
        local1 = policy.sources["local1"]
        assert (local1.ehlo, local1.ip) == ("one.partner-tests.test", "127.0.0.2")
        assert policy.pools["shared"].sources == (("local1", 1),)
        assert policy.sources["local2"].ehlo == "o2.quiver.local.test"
        assert policy.intake.visibility_timeout == 30
        servers = descendants(local.pid)
        assert servers, "the stack started no server process"

        line = output.wait_for(lambda text: " sender --config " in text, timeout=1)
        sender_argv = shlex.split(line)
        assert sender_argv[0] == "env"
        assert sender_argv[-4:] == ["--config", str(root / "policy.toml"),
                                    "--nameserver", stack_env["QUIVER_NAMESERVERS"]]

        # The command as printed, its status endpoint on any free port: the default,
        # 8080, may be held by another test's sender running beside this one.
        sender_env = {**env, "QUIVER_STATUS_PORT": "0"}

        def start_sender(n: int) -> subprocess.Popen[bytes]:
            with (tmp_path / "logs" / f"sender-{n}.log").open("wb") as log:
                process = subprocess.Popen(sender_argv, cwd=tmp_path, env=sender_env,
                                           stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL)
            senders.append(process)
            return process

        def enqueue(message_id: str, rcpt: str) -> None:
            eml = tmp_path / f"{message_id}.eml"
            eml.write_bytes(render(message_id=message_id, from_addr="hello@news.quiver-demo.test",
                                   to=[rcpt], subject=message_id))
            result = subprocess.run(
                ["bash", "-c", f". {shlex.quote(str(root / 'env.sh'))} && quiver enqueue "
                 f"--from hello@news.quiver-demo.test --to {rcpt} --id {message_id} {eml}"],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr

        start_sender(1)
        enqueue("readme-local-1", "ann@partner.test")
        first = wait_until(lambda: received(root, "ann@partner.test"),
                           timeout=DELIVERY_TIMEOUT, what="the MX to receive ann@partner.test")

        senders[0].kill()  # kill -9, then the same command again
        senders[0].wait(timeout=STOP_TIMEOUT)
        start_sender(2)
        enqueue("readme-local-2", "bob@partner.test")
        # A receive the killed sender left open may be handed the message, which then
        # comes back after the visibility timeout (as on SQS).
        second = wait_until(lambda: received(root, "bob@partner.test"),
                            timeout=policy.intake.visibility_timeout + DELIVERY_TIMEOUT,
                            what="the MX to receive bob@partner.test after the restart")
        for record in (first, second):
            # The fragment's pool and EHLO; verified TLS to mx.partner.test, a name only
            # the records file has (the local MX's certificate covers it).
            assert (record["peer_ip"], record["helo"]) == ("127.0.0.2", "one.partner-tests.test")
            assert record["tls"] and record["tls"].startswith("TLS")

        senders[1].send_signal(signal.SIGTERM)
        assert senders[1].wait(timeout=STOP_TIMEOUT) == 0
        local.send_signal(signal.SIGTERM)
        assert local.wait(timeout=STOP_TIMEOUT) == 0
        output.join(timeout=STOP_TIMEOUT)
        assert output.lines[-1] == "local stack stopped", output.text()
        assert still_running(servers) == set()
    finally:
        for process in [*senders, local]:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
