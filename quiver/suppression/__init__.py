"""The suppression list as the sender, the CLI and the intake Lambdas use it.

`address` (normalised addresses and scopes), `cache` (short-lived answers per
scope and address), `check` (the sender's batched, cached lookups), `writer`
(entries the sender adds, written in batches behind delivery), `csvfile` (the
CSV a team brings or takes away). The table itself is `quiver.storage`'s
SuppressionStore.
"""

from quiver.suppression.address import (
    GLOBAL_SCOPE,
    ScopeError,
    parse_scope,
    scope_name,
    suppression_address,
)
from quiver.suppression.check import SuppressionCheck, describe, suppressed_fields
from quiver.suppression.writer import SuppressionWriter, hard_bounce_entry

__all__ = [
    "GLOBAL_SCOPE", "ScopeError", "SuppressionCheck", "SuppressionWriter", "describe",
    "hard_bounce_entry", "parse_scope", "scope_name", "suppressed_fields",
    "suppression_address",
]
