"""The analytics pieces that need no server: the columns and their DuckDB
types, the saved queries' files, the compaction's hours and parts, download paths."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.analytics.columns import (
    ColumnTypeError,
    duckdb_columns,
    duckdb_type,
    event_columns,
)
from quiver.analytics.compaction import (
    GRACE,
    RawObject,
    closed_hours,
    plan_digest,
    split_parts,
)
from quiver.analytics.download import UnsafeKey, local_path
from quiver.analytics.duck import events_view_sql
from quiver.analytics.layout import RAW_PREFIX, Partition
from quiver.analytics.saved import SavedQueryError, saved_queries
from quiver.events import EVENT_FIELDS
from quiver.export import PREFIX, object_key

NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
SCALARS = st.sampled_from(["string", "int", "bigint", "double", "boolean"])


def athena_types(depth: int = 2) -> st.SearchStrategy[str]:
    if depth == 0:
        return SCALARS
    inner = athena_types(depth - 1)
    return st.one_of(
        SCALARS,
        st.builds(lambda k, v: f"map<{k},{v}>", SCALARS, inner),
        st.builds(lambda v: f"array<{v}>", inner),
        st.lists(st.tuples(NAMES, inner), min_size=1, max_size=4,
                 unique_by=lambda f: f[0]).map(
            lambda fs: "struct<" + ",".join(f"{n}:{t}" for n, t in fs) + ">"),
    )


@given(athena_types())
def test_every_athena_type_is_a_type_duckdb_accepts(athena: str) -> None:
    spelled = duckdb_type(athena)
    # DuckDB parses it: a NULL cast to the type has that type.
    (kind,) = duckdb.connect().execute(f"SELECT typeof(NULL::{spelled})").fetchone() or ("",)
    assert kind


@pytest.mark.parametrize("bad", ["", "strin", "map<string>", "struct<>", "struct<a>",
                                 "map<string,string", "array<int,int>"])
def test_a_type_it_cannot_spell_is_an_error(bad: str) -> None:
    with pytest.raises(ColumnTypeError):
        duckdb_type(bad)


def test_the_columns_are_the_record_schemas_and_spell_for_duckdb() -> None:
    columns = event_columns()
    names = [n for n, _ in columns]
    assert len(set(names)) == len(names)
    assert set(names) <= set(EVENT_FIELDS) and "event" not in names
    assert "'meta': 'MAP(VARCHAR, VARCHAR)'" in duckdb_columns(columns)


def test_every_saved_query_has_both_dialects_and_consistent_params() -> None:
    queries = saved_queries()
    assert set(queries) >= {"outcome_rates_hourly", "delivery_latency", "top_bounce_reasons",
                            "recipient_history", "message_history", "rejected_messages",
                            "complaint_rate"}
    assert queries["recipient_history"].params == ("rcpt",)
    assert queries["message_history"].params == ("id",)
    for query in queries.values():
        assert query.description and "FROM events" in query.text("duckdb")
        # Athena reads partitions by "date": every Athena text filters on it.
        assert '"date" >=' in query.text("athena"), query.name


def test_binding_refuses_missing_and_unknown_params() -> None:
    history = saved_queries()["recipient_history"]
    assert history.bind({"rcpt": "a@b.test"}) == {"rcpt": "a@b.test"}
    with pytest.raises(SavedQueryError, match="--param rcpt="):
        history.bind({})
    with pytest.raises(SavedQueryError, match="unknown"):
        history.bind({"rcpt": "a@b.test", "id": "x"})


def test_hours_close_after_their_grace() -> None:
    at = datetime(2026, 12, 5, 10, 0, tzinfo=UTC) + GRACE
    assert closed_hours(at, lookback_hours=2) == [datetime(2026, 12, 5, 9, tzinfo=UTC),
                                                  datetime(2026, 12, 5, 8, tzinfo=UTC)]
    assert closed_hours(at - timedelta(seconds=1), lookback_hours=1) == [
        datetime(2026, 12, 5, 8, tzinfo=UTC)]


@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=50),
       st.integers(min_value=1, max_value=8000))
def test_parts_keep_the_order_and_respect_the_limit(sizes: list[int], limit: int) -> None:
    inputs = [RawObject(f"k{i:03d}", s, "e") for i, s in enumerate(sizes)]
    parts = split_parts(inputs, limit)
    assert [o for p in parts for o in p] == inputs
    assert all(p and (len(p) == 1 or sum(o.size for o in p) <= limit) for p in parts)


def test_a_plan_names_its_inputs_and_columns() -> None:
    inputs = [RawObject("a", 1, '"x"'), RawObject("b", 2, '"y"')]
    columns = event_columns()
    assert plan_digest(inputs, columns) == plan_digest(list(inputs), columns)
    assert plan_digest(inputs, columns) != plan_digest(inputs[:1], columns)
    assert plan_digest(inputs, columns) != plan_digest(inputs, columns[:-1])
    assert plan_digest([RawObject("a", 1, '"z"'), inputs[1]], columns) != plan_digest(
        inputs, columns)
    part = Partition("delivered", "2026-12-05", "09").part_key(3, "ab" * 32)
    assert part == "events-compacted/event=delivered/date=2026-12-05/hour=09/" \
                   "part-00003-abababababababab.parquet"


@pytest.mark.parametrize("key", ["../x", "events/../../x", "/abs", "events/./x", ""])
def test_download_refuses_keys_outside_the_folder(key: str, tmp_path: Path) -> None:
    with pytest.raises(UnsafeKey):
        local_path(tmp_path, key)


def test_the_view_over_a_folder_reads_partitions_as_strings(tmp_path: Path) -> None:
    sql = events_view_sql(tmp_path / "it's", "raw")
    assert "it''s" in sql and "'hour': 'VARCHAR'" in sql


def test_the_raw_layout_is_the_exports() -> None:
    assert RAW_PREFIX == PREFIX
    key = object_key(event="bounced", at="2026-12-05T09:59:59.999Z", batch_id="b")
    assert key == Partition("bounced", "2026-12-05", "09").raw_prefix + "b.jsonl.gz"
