"""The README's return-path snippets run: its policy section loads and means what the
text says, and its `quiver return-path rotate --file` line makes a ring that signs."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest

from quiver.cli import main
from quiver.policy import parse_policy
from quiver.returnpath import load_key_ring

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
MINIMAL = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
"""


def block(lang: str, marker: str) -> str:
    out, current, info = [], None, ""
    for line in README.splitlines():
        if current is None and line.startswith("```"):
            current, info = [], line[3:].strip()
        elif current is not None and line.strip() == "```":
            if info == lang and marker in "\n".join(current):
                out.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(line)
    (found,) = out
    return found


def test_the_policy_snippet_loads_and_routes_as_described() -> None:
    section = parse_policy(MINIMAL + block("toml", "# return-path policy")).return_path
    assert section.key_secret == "quiver/return-path/keys"
    assert section.bounce_domain("example.com", tenant=None) == "bounces.example.com"
    assert section.bounce_domain("mail.example.org", tenant=None) == "bounces.example.org"


def test_the_rotate_file_line_makes_a_ring_that_signs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = block("bash", "quiver return-path rotate --file").splitlines()
    (line,) = [x for x in lines if "--file" in x]
    argv = shlex.split(line.split("#", 1)[0])
    assert argv[:2] == ["quiver", "return-path"]
    monkeypatch.chdir(tmp_path)
    assert main(argv[1:]) == 0
    ring = load_key_ring(key_file=argv[-1], base_dir=tmp_path)
    assert ring.signing(time.time()).id == 1
