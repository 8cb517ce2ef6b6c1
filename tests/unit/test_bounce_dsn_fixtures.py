"""Every bounce fixture against the one table of expected results.

tests/fixtures/bounces/*.eml are bounces, auto-replies and other mail written for
Quiver in the shapes common MTAs produce; tests/fixtures/bounces/expected.toml says
what parse_bounce must make of each. The agreement rate is printed (run with -s) and
must be 100 %: a fixture the parser gets wrong is fixed in the parser, or the table
records what is produced with a comment saying why.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from quiver.bounce.dsn import parse_bounce
from quiver.bounce.dsn_types import BounceReport, ParseResult

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bounces"
TABLE: list[dict[str, Any]] = tomllib.loads(
    (FIXTURES / "expected.toml").read_text("utf-8"))["fixture"]


def observed(result: ParseResult, expected: dict[str, Any]) -> dict[str, Any]:
    """The result in the table's shape, with only the keys the entry sets."""
    if not isinstance(result, BounceReport):
        return {"file": expected["file"], "kind": "ignored", "reason": result.reason.value}
    original = result.original
    got: dict[str, Any] = {
        "file": expected["file"],
        "kind": "report",
        "format": result.format,
        "return_path_local": result.return_path_local,
        "recipients": [
            {"recipient": r.recipient, "status": r.status or "",
             "kind": r.classification.kind, "category": r.classification.category}
            for r in result.recipients],
    }
    for key, value in (("message_id", original.message_id if original else None),
                       ("quiver_id", original.quiver_id if original else None)):
        if value is not None or key in expected:
            got[key] = value
    return got


def test_table_names_every_fixture_once() -> None:
    files = sorted(p.name for p in FIXTURES.glob("*.eml"))
    named = [entry["file"] for entry in TABLE]
    assert sorted(named) == files
    assert len(files) >= 40


def test_every_fixture_agrees_with_the_table() -> None:
    disagreements = []
    for entry in TABLE:
        got = observed(parse_bounce((FIXTURES / entry["file"]).read_bytes()), entry)
        if got != entry:
            disagreements.append((entry, got))
    matches = len(TABLE) - len(disagreements)
    print(f"\nbounce fixtures: {matches}/{len(TABLE)} agree "
          f"({100 * matches / len(TABLE):.1f} %)")
    for entry, got in disagreements:
        print(f"  {entry['file']}:\n    expected {entry}\n    got      {got}")
    assert not disagreements


@pytest.mark.parametrize("entry", TABLE, ids=[e["file"] for e in TABLE])
def test_fixture(entry: dict[str, Any]) -> None:
    assert observed(parse_bounce((FIXTURES / entry["file"]).read_bytes()), entry) == entry


@pytest.mark.parametrize("entry", TABLE, ids=[e["file"] for e in TABLE])
def test_fixture_with_crlf_line_ends(entry: dict[str, Any]) -> None:
    # The fixtures are stored with LF; mail on the wire and in the inbound bucket has
    # CRLF. Both must read the same.
    raw = (FIXTURES / entry["file"]).read_bytes().replace(b"\n", b"\r\n")
    assert observed(parse_bounce(raw), entry) == entry
