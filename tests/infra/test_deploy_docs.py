"""The README's deploy section stays true to the app: stacks, settings, DNS, Athena and
the dashboard's complaint query."""

from __future__ import annotations

import re
from typing import Any

import pytest
from infra_helpers import ROOT, only

from cdk.event_analytics import PARTITION_KEYS, glue_columns
from cdk.observability import TOP_COMPLAINTS_QUERY
from quiver.policy import Policy

pytestmark = pytest.mark.infra

DOC = ROOT / "README.md"
SQL_WORDS = {
    "select", "from", "where", "and", "or", "not", "as", "group", "by", "order", "desc", "asc",
    "count", "sum", "avg", "min", "max", "limit", "between", "in", "is", "null", "having",
    "approx_percentile", "from_iso8601_timestamp", "date_trunc", "distinct",
}
STRUCT_FIELDS = {"kind", "category", "reason", "code", "enhanced", "text"}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_commands_use_the_pinned_cli_and_real_stack_names(synth: Any) -> None:
    text = DOC.read_text()
    assert "node_modules/.bin/cdk bootstrap" in text
    assert "node_modules/.bin/cdk deploy --all" in text
    for stack in (synth.stacks.stateful, synth.stacks.service):
        assert f"`{stack.stack_name}`" in text
    for key in ("quiver:policy", "quiver:prefix", "quiver:vpc-cidr", "quiver:alarm-email",
                "quiver:public-ipv4-pool"):
        assert key in text and key in (ROOT / "app.py").read_text()


def test_dns_records_cover_every_source(policy: Policy) -> None:
    text = DOC.read_text()
    (spf,) = [line for line in text.splitlines() if "v=spf1" in line]
    for source in policy.sources.values():
        assert f"| A | `{source.ehlo}` | `{source.ip}` |" in text
        assert f"ip4:{source.ip}" in spf
    for key in policy.dkim:
        assert f"{key.selector}._domainkey.{key.domain}" in text
        assert f"quiver/dkim/{key.domain}/{key.selector}" in text
    assert "inbound-smtp.us-east-1.amazonaws.com" in text


def test_athena_query_uses_the_synthesized_table(service: dict[str, Any]) -> None:
    _, database = only(service, "AWS::Glue::Database")
    # The raw events' table (the compacted one has the same columns).
    (table,) = [r["Properties"] for k, r in service["Resources"].items()
                if r["Type"] == "AWS::Glue::Table" and k.startswith("EventAnalytics")]
    _, workgroup = only(service, "AWS::Athena::WorkGroup")
    qualified = f"{database['DatabaseInput']['Name']}.{table['TableInput']['Name']}"
    (sql,) = [b for b in blocks("sql") if f"FROM {qualified}" in b]
    assert f"--work-group {workgroup['Name']}" in DOC.read_text()
    code = re.sub(r"--[^\n]*", "", sql)
    code = re.sub(r"'[^']*'", "", code).replace(qualified, "")
    aliases = set(re.findall(r"\bAS\s+(\w+)", code, flags=re.I))
    columns = {name for name, _ in glue_columns()} | {name for name, _ in PARTITION_KEYS}
    for word in re.findall(r"[A-Za-z_]+", code):
        assert (word.lower() in SQL_WORDS or word in columns or word in aliases
                or word in STRUCT_FIELDS), f"{word!r} is not a column of {qualified}"
    # Partition pruning: the query names the partitions it reads.
    where = code.split("WHERE", 1)[1]
    assert "event" in where and '"date"' in where


def test_complaint_ranking_query_is_the_dashboard_s(service: dict[str, Any]) -> None:
    (query,) = [b.strip() for b in blocks("sql") if "FROM SCHEMA(" in b]
    assert query == TOP_COMPLAINTS_QUERY
    _, dashboard = only(service, "AWS::CloudWatch::Dashboard")
    body = "".join(p for p in dashboard["DashboardBody"]["Fn::Join"][1] if isinstance(p, str))
    assert f'"expression":"{query}"' in body
