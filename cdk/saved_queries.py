"""The saved queries (quiver/data/queries/) as Athena named queries in the event
analytics' workgroup and database: the same files `quiver events query --saved`
runs under DuckDB, in their Athena dialect."""

from __future__ import annotations

import re

from aws_cdk import aws_athena as athena
from constructs import Construct

from cdk.event_analytics import EventAnalytics
from cdk.logical_ids import logical_id_part
from quiver.analytics.saved import saved_queries

# Athena keeps a named query's description to 1024 characters.
MAX_DESCRIPTION = 1024
_FROM = re.compile(r"\bFROM\s+([A-Za-z_][A-Za-z0-9_]*)")


class SavedQueries(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, analytics: EventAnalytics,
                 compacted_table: str) -> None:
        super().__init__(scope, construct_id)
        self.queries: dict[str, athena.CfnNamedQuery] = {}
        for query in saved_queries().values():
            text = query.text("athena")
            # The Athena texts name the tables; a renamed table must fail the synth.
            unknown = set(_FROM.findall(text)) - {analytics.table_name, compacted_table}
            if unknown:
                raise ValueError(f"saved query {query.name!r} reads {sorted(unknown)}, not "
                                 f"{analytics.table_name} or {compacted_table}")
            named = athena.CfnNamedQuery(
                self, logical_id_part(query.name),
                name=f"quiver-{query.name.replace('_', '-')}",
                description=query.description[:MAX_DESCRIPTION],
                database=analytics.database_name,
                work_group=analytics.workgroup_name,
                query_string=text,
            )
            named.add_dependency(analytics.workgroup)
            self.queries[query.name] = named
