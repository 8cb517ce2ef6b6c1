"""Where the events live in the events bucket: the raw landing zone the export
writes, the compacted copy, and the compaction's manifests.

Both data layouts share the partition path `event=<type>/date=YYYY-MM-DD/hour=HH/`,
so one partition projection describes both Glue tables. The manifests sit under a
prefix of their own, outside either table's location.
"""

from __future__ import annotations

from dataclasses import dataclass

# quiver.export.PREFIX (a test holds them equal): not imported, because the export
# module brings the policy (and dnspython) that the compaction Lambda does not carry.
RAW_PREFIX = "events"

COMPACTED_PREFIX = "events-compacted"
MANIFEST_PREFIX = "events-compaction"
RAW_SUFFIX = ".jsonl.gz"
PARQUET_SUFFIX = ".parquet"


@dataclass(frozen=True, slots=True, order=True)
class Partition:
    """One event type's hour: the unit the compaction works on."""

    event: str
    date: str  # YYYY-MM-DD (UTC)
    hour: str  # HH

    @property
    def path(self) -> str:
        return f"event={self.event}/date={self.date}/hour={self.hour}/"

    @property
    def raw_prefix(self) -> str:
        return f"{RAW_PREFIX}/{self.path}"

    @property
    def compacted_prefix(self) -> str:
        return f"{COMPACTED_PREFIX}/{self.path}"

    @property
    def manifest_key(self) -> str:
        return f"{MANIFEST_PREFIX}/{self.path.rstrip('/')}.json"

    def part_key(self, index: int, plan: str) -> str:
        """A part's key: its index and the plan it belongs to (a digest of the inputs),
        so runs over the same inputs write the same keys and runs over different
        inputs never overwrite each other's parts."""
        return f"{self.compacted_prefix}part-{index:05d}-{plan[:16]}{PARQUET_SUFFIX}"
