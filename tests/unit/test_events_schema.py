"""One event schema: quiver/event_schema.py describes exactly the fields that
`quiver.events.EventRecord` types, with compatible types; docs/events.md is what it
generates; the README points there; and a record as the export writes it conforms."""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints, is_typeddict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver import event_schema
from quiver.event_schema import (
    FIELDS,
    PARTITION_KEYS,
    conforms,
    duckdb_type,
    glue_columns,
    record_problems,
    stored,
    stored_meta,
)
from quiver.events import EVENT_FIELDS, EVENT_TYPES, FINAL_EVENTS, EventRecord
from quiver.export import partition, read_object

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "events.md"


def test_docs_events_md_is_generated_from_the_schema() -> None:
    assert DOC.read_text(encoding="utf-8") == event_schema.markdown(), (
        "docs/events.md differs from the schema: run "
        "`python -m quiver.event_schema --markdown > docs/events.md`")


def test_the_readme_points_to_the_generated_schema() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("\n## Events\n")
    section = readme[start:readme.index("\n## ", start + 1)]
    assert "(docs/events.md)" in section
    assert "python -m quiver.event_schema --duckdb" in section


def test_the_schema_describes_every_field_of_the_record_in_its_order() -> None:
    assert [f.name for f in FIELDS] == list(EVENT_FIELDS)
    # Every event type has a meaning, and `final` in the doc is FINAL_EVENTS.
    assert set(event_schema.EVENT_MEANINGS) == set(EVENT_TYPES)
    for line in event_schema.markdown().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0].strip("`") in EVENT_TYPES:
            assert (cells[1] == "yes") == (cells[0].strip("`") in FINAL_EVENTS)


def _python_types(annotation: Any) -> list[Any]:
    """The non-None members of an annotation (X | None -> [X])."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _compatible(annotation: Any, type_: str) -> bool:
    (python,) = _python_types(annotation)
    origin = get_origin(python)
    if origin is typing.Literal:
        return type_ == "string" and all(isinstance(a, str) for a in get_args(python))
    if python is str:
        return type_ in ("string", "timestamp")
    if python is int:
        return type_ in ("int", "bigint")
    if python is float:
        return type_ == "double"
    if origin is dict:
        return type_ == "map<string,string>" and get_args(python)[0] is str
    if is_typeddict(python):
        members = type_.removeprefix("struct<").removesuffix(">").split(",")
        return [m.split(":")[0] for m in members] == list(get_type_hints(python))
    return False


def test_each_field_type_fits_the_python_type_the_producers_build() -> None:
    hints = get_type_hints(EventRecord)
    wrong = [(f.name, hints[f.name], f.type) for f in FIELDS
             if not _compatible(hints[f.name], f.type)]
    assert wrong == []


def test_every_example_conforms_and_every_type_maps_to_duckdb() -> None:
    for f in FIELDS:
        assert conforms(f.example, f.type), f.name
        assert duckdb_type(f.type)
        assert f.events <= set(EVENT_TYPES) and f.events, f.name
        assert f.description, f.name


def test_glue_columns_are_the_fields_but_the_partition_key() -> None:
    names = [n for n, _ in glue_columns()]
    assert names == [f.name for f in FIELDS if f.name != "event"]
    assert dict(glue_columns())["at"] == "string"
    assert dict(glue_columns())["meta"] == "map<string,string>"
    assert "reason" in names and dict(PARTITION_KEYS)["hour"] == "string"


meta_values = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))


@given(st.dictionaries(st.text(max_size=10), meta_values, max_size=8))
def test_the_export_writes_meta_as_strings_by_the_documented_rule(meta: dict[str, Any]) -> None:
    record: EventRecord = {
        "v": 1, "event": "delivered", "at": "2026-12-03T08:05:00.000Z", "id": "m-1",
        "rcpt": "a@x.example", "from": "b@y.example", "tenant": None, "campaign": None,
        "pool": "shared", "meta": meta, "attempt": 1,
    }
    ((key, data),) = partition("b1", [record]).items()
    assert key == "events/event=delivered/date=2026-12-03/hour=08/b1.jsonl.gz"
    (written,) = read_object(data)
    assert record_problems(written) == []
    assert written["meta"] == stored_meta(meta)
    for name, value in meta.items():
        if value is None or isinstance(value, str):
            assert written["meta"][name] == value
        else:  # a number or boolean: its JSON text, which reads back as the value
            assert json.loads(written["meta"][name]) == value
    assert {k: v for k, v in written.items() if k != "meta"} == {
        k: v for k, v in record.items() if k != "meta"}


def test_a_record_whose_meta_is_already_strings_is_written_as_it_is() -> None:
    record = {"event": "delivered", "meta": {"a": "1", "b": None}}
    assert stored(record) is record


@pytest.mark.parametrize(("record", "problem"), [
    ({"event": "delivered", "colour": "red"}, "colour: not a field"),
    ({"event": "delivered", "attempt": "1"}, "attempt: '1' is not int"),
    ({"event": "delivered", "meta": {"n": 1}}, "meta: {'n': 1} is not map"),
    ({"event": "delivered", "response": {"code": "250"}}, "response:"),
    ({"event": "delivered", "feedback_type": "abuse"}, "not a field of 'delivered'"),
    ({"event": "deferred", "transaction_ms": True}, "transaction_ms: True is not bigint"),
])
def test_record_problems_names_what_the_table_would_misread(record: dict[str, Any],
                                                             problem: str) -> None:
    assert any(problem in p for p in record_problems(record)), record_problems(record)


def test_the_command_prints_each_generated_form(capsys: pytest.CaptureFixture[str]) -> None:
    assert event_schema.main(["--glue"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"Name": n, "Type": t} for n, t in glue_columns()]
    assert event_schema.main(["--duckdb", "it's/*.jsonl.gz"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("read_json('it''s/*.jsonl.gz'") and "'hour': 'VARCHAR'" in out
