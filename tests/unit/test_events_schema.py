"""The README's event tables document the event schema exactly: every event type and
every field of `quiver.events.EventRecord`, and nothing the schema lacks."""

from __future__ import annotations

import re
from pathlib import Path

from quiver.events import _REQUIRED, EVENT_FIELDS, EVENT_TYPES, FINAL_EVENTS

README = Path(__file__).resolve().parents[2] / "README.md"


def _tables(section: str) -> dict[str, list[list[str]]]:
    """Each markdown table in `section`, keyed by its first header cell: its rows' cells."""
    tables: dict[str, list[list[str]]] = {}
    rows: list[list[str]] | None = None
    for line in section.splitlines():
        if not line.startswith("|"):
            rows = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if rows is None:
            rows = tables.setdefault(cells[0], [])
        elif not set(cells[0]) <= {"-", " "}:
            rows.append(cells)
    return tables


def _events_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Events\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_the_readme_field_table_lists_every_schema_field_and_no_other() -> None:
    rows = _tables(_events_section())["field"]
    documented = [name for row in rows for name in _names(row[0])]
    assert len(documented) == len(set(documented)), "a field documented twice"
    assert set(documented) == set(EVENT_FIELDS)
    every = {name for row in rows if row[1] == "every event" for name in _names(row[0])}
    assert every == set(_REQUIRED)


def test_the_readme_event_table_lists_every_event_type_and_which_are_final() -> None:
    rows = _tables(_events_section())["event"]
    documented = {_names(row[0])[0]: row[1] == "yes" for row in rows}
    assert set(documented) == set(EVENT_TYPES)
    assert {name for name, final in documented.items() if final} == FINAL_EVENTS
