"""Every snippet in the README runs: the client code, `quiver enqueue`, `quiver config check`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from stackrig import Running

from quiver.events import FINAL_EVENTS
from quiver.localstack.samples import render

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
    assert events[0]["meta"] == {"order": 42} and events[0]["campaign"] == "order-confirmation"


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
