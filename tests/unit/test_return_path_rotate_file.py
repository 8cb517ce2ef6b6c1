"""`quiver return-path rotate --file`: a local key ring created, rotated, kept private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from quiver.cli import main
from quiver.returnpath import parse_key_ring


def test_rotate_creates_then_rotates_a_private_key_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    assert main(["return-path", "rotate", "--file", str(path)]) == 0
    assert "key 1 signs from now on" in capsys.readouterr().out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert main(["return-path", "rotate", "--file", str(path), "--activate-in", "600"]) == 0
    assert "key 2 signs in 600 s, when every reader has it; retired keys verify for 30 " \
        "days after retirement: [1]" in capsys.readouterr().out
    ring = parse_key_ring(path.read_text())
    assert [k.id for k in ring.keys] == [1, 2]


def test_a_broken_file_is_named_and_left_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    path.write_text("{}")
    assert main(["return-path", "rotate", "--file", str(path)]) == 1
    assert f"{path}: expected" in capsys.readouterr().err
    assert path.read_text() == "{}"
