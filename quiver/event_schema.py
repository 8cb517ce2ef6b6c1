"""The event record, contract v1, as analysts read it: every field's type, which event
types carry it, when it is null, what it means, and an example.

`quiver.events.EventRecord` types the record for the code that builds it; this module
describes the same fields (in the same order: a unit test holds them together) for
everything generated from them: the Glue table's columns (cdk/event_analytics.py),
docs/events.md (`python -m quiver.event_schema --markdown`), and the typed DuckDB read
(`duckdb_columns`, `duckdb_source`). Adding a field is additive: readers that do not
know it ignore it, so it stays v1. Renaming or retyping one would be v2.

Types are Hive/Athena type names, plus `timestamp`: an RFC 3339 UTC string with
milliseconds (`2026-12-03T18:39:28.684Z`), a `string` column in Glue (Athena reads it
with `from_iso8601_timestamp`) and TIMESTAMPTZ in DuckDB.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quiver.events import EVENT_TYPES, FINAL_EVENTS, POST_DELIVERY_EVENTS, EventType

EVERY: frozenset[EventType] = frozenset(EVENT_TYPES)
# Events that record a try at the receiving MX (an `expired` may too: the try whose
# retry would have come past the deadline).
ATTEMPTS: frozenset[EventType] = frozenset({"delivered", "deferred", "bounced", "expired"})
CONTROL: frozenset[EventType] = frozenset({"control"})

# The S3 key's partitions, as the Glue table declares them. `hour` is two digits
# (`08`), a string in Athena and in `duckdb_source`: `hour = '08'` matches, `'8'`
# matches nothing, and a number is a type error in Athena.
PARTITION_KEYS: tuple[tuple[str, str], ...] = (
    ("event", "string"), ("date", "string"), ("hour", "string"),
)

EVENT_MEANINGS: dict[EventType, str] = {
    "delivered": "the receiving MX accepted the recipient",
    "bounced": "refused permanently (or bounced by an operator); `bounce` says how",
    "expired": "no attempt left before `max_age` or the message's `expires`",
    "suppressed": "not sent, never tried: the recipient is on the suppression list",
    "rejected": "the queue message broke the contract; `reason` says how",
    "failed": "given up outside SMTP (the message kept coming back unfinished)",
    "deferred": "one real try failed temporarily; may repeat",
    "async_bounce": "a DSN (or text bounce) that came back later to the signed return path",
    "complaint": "a trusted ARF report about a delivered message",
    "unsubscribed": "the recipient unsubscribed (one-click or mailto)",
    "control": "not about a recipient: an operator's or the adaptive engine's change",
}


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: str  # Hive/Athena type, or `timestamp` (RFC 3339 UTC string)
    events: frozenset[EventType]  # the event types that carry it
    null: str  # when it is null (or absent, on the events named); "" if never
    description: str
    example: Any


def _f(name: str, type_: str, events: frozenset[EventType], null: str, description: str,
       example: Any) -> Field:
    return Field(name, type_, events, null, description, example)


# The attempt fields are absent from the events decided on receipt, before any
# delivery: an `expired` past its deadline, an operator's admin `bounced`.
_UNTRIED = "absent on an `expired` decided on receipt and on an admin `bounced`"
_RESPONSE = "struct<code:int,enhanced:string,text:string>"
_BOUNCE = "struct<kind:string,category:string,reason:string>"
_DSN = ("struct<recipient:string,status:string,diagnostic_code:string,"
        "remote_mta:string,reporting_mta:string,format:string>")

FIELDS: tuple[Field, ...] = (
    _f("v", "int", EVERY, "", "the contract version, 1", 1),
    _f("event", "string", EVERY, "",
       "the event type; also the `event=` partition of its S3 key (in Athena, the "
       "partition column)", "delivered"),
    _f("at", "timestamp", EVERY, "", "when it happened, RFC 3339 UTC with milliseconds",
       "2026-12-03T18:39:28.684Z"),
    _f("id", "string", EVERY, "",
       "the caller's message id (on `control`: the control's); on a `rejected` body "
       "without a valid id, the SQS message id", "welcome-00042"),
    _f("rcpt", "string", EVERY,
       "`control`; a rejection whose body named no recipient",
       "the recipient, as the caller wrote it (domain lower-cased)", "Ann@alpha.test"),
    _f("from", "string", EVERY,
       "`control`, post-delivery events, `unsubscribed`; a rejection without a valid `from`",
       "the caller's envelope sender (`\"\"`: the null reverse-path)", "news@example.com"),
    _f("tenant", "string", EVERY, "the message named none", "the caller's tenant", "acme"),
    _f("campaign", "string", EVERY, "the message named none", "the caller's campaign",
       "spring-sale"),
    _f("pool", "string", EVERY, "post-delivery events; a `control` naming no pool",
       "the egress pool the message was sent from", "shared"),
    _f("meta", "map<string,string>", EVERY, "",
       "the caller's `meta`, copied onto every event (`{}` if none). Stored as "
       "map<string,string>: a string value as it is, null as null, a number or boolean "
       "as its JSON text (`1`, `2.5`, `true`)", {"order": "1042", "vip": "true"}),
    _f("attempt", "int", EVERY, "",
       "real tries of this recipient so far, this event's included; 0 if never tried", 1),
    _f("source", "string", ATTEMPTS,
       "no connection was made (DNS failure, forbidden MX); " + _UNTRIED,
       "the egress source's name", "local1"),
    _f("source_ip", "string", ATTEMPTS, "as `source`", "the egress source's address",
       "198.51.100.7"),
    _f("proxy", "string", ATTEMPTS, "no proxy node (a direct source); " + _UNTRIED,
       "the proxy node that carried the connection", "proxy-a"),
    _f("mx", "string", ATTEMPTS, "as `source`", "the receiving MX host",
       "mx1.alpha.test"),
    _f("mx_ip", "string", ATTEMPTS, "as `source`", "the receiving MX's address",
       "203.0.113.25"),
    _f("site", "string", ATTEMPTS, "as `source`", "the MX site (hosts sharing limits)",
       "alpha.test"),
    _f("provider", "string", ATTEMPTS, "no provider rule matched the MX; " + _UNTRIED,
       "the mailbox provider", "gmail"),
    _f("response", _RESPONSE,
       ATTEMPTS | {"failed", "rejected", "suppressed"},
       "`rejected`, `suppressed`, an admin `bounced`; `failed` never tried",
       "the reply to this recipient's own try; on `expired`/`failed` its last reply, or "
       "`{451, 4.4.7, never attempted: <why>}`",
       {"code": 250, "enhanced": "2.0.0", "text": "OK queued as 1"}),
    _f("tls", "string", ATTEMPTS, "plaintext, or no connection; " + _UNTRIED,
       "the TLS protocol version", "TLSv1.3"),
    _f("tls_mode", "string", ATTEMPTS, "no connection was involved; " + _UNTRIED,
       "the TLS mode the connection used: the destination's (`opportunistic`, `required`, "
       "`verify`), or `plaintext-fallback` (opportunistic, sent in plaintext because its MX "
       "failed or refused STARTTLS, now or within the last hour)", "opportunistic"),
    _f("return_path", "string", ATTEMPTS,
       "absent when the caller's `from` went on the wire; " + _UNTRIED,
       "the signed envelope sender (VERP) this recipient's transaction used",
       "b-2x7k9q@bounce.example.com"),
    _f("next_attempt_at", "timestamp", frozenset({"deferred"}), "",
       "when the recipient is tried again", "2026-12-03T18:44:28.684Z"),
    _f("queued_ms", "bigint", ATTEMPTS, "",
       "milliseconds since the message was first queued (across retries)", 153),
    _f("bounce", _BOUNCE, frozenset({"bounced", "async_bounce", "suppressed"}), "",
       "how a refusal was classified (quiver/data/bounce_rules.toml); on `suppressed` kind "
       "`suppressed`; on an admin bounce kind `admin`",
       {"kind": "hard", "category": "bad-mailbox", "reason": "550 5.1.1 user unknown"}),
    _f("feedback_type", "string", frozenset({"complaint"}), "",
       "the ARF report's feedback type", "abuse"),
    _f("dsn", _DSN, frozenset({"async_bounce"}), "",
       "the report's entry for the recipient (its Final-Recipient, enhanced status, "
       "diagnostic code, MTAs, and `rfc3464` or the text-bounce format)",
       {"recipient": "ann@alpha.test", "status": "5.1.1",
        "diagnostic_code": "smtp; 550 5.1.1 user unknown", "remote_mta": "mx1.alpha.test",
        "reporting_mta": "mail.example.com", "format": "rfc3464"}),
    _f("reporter", "string", frozenset({"complaint"}), "",
       "the trusted reporter (its policy domain) behind a complaint", "fbl.alpha.test"),
    _f("inbound_object", "string", POST_DELIVERY_EVENTS, "a one-click unsubscribe",
       "the raw inbound mail, kept for the inbound bucket's expiry",
       "s3://quiver-inbound-123456789012-us-east-1/mail/abc123"),
    _f("reason", "string",
       frozenset({"rejected", "failed", "expired", "suppressed", "unsubscribed", "bounced",
                  "control"}),
       "absent on a `bounced` from SMTP (its `bounce` says why)",
       "why: the contract rule broken, the receive limit, the deadline passed, the "
       "suppression entry, the admin bounce, how the recipient unsubscribed, or the "
       "operator's reason", "to[0]: invalid address: contains a control character"),
    _f("sqs_message_id", "string", frozenset({"rejected", "failed"}), "",
       "the outbound queue message (the DLQ copy's `quiver-message-id` attribute)",
       "301e5113-3b2e-4eec-92f8-495206580230"),
    _f("action", "string", CONTROL, "",
       "what changed: `pause`, `resume`, `bounce`, `cancel`, `stop`, `start`, or the "
       "adaptive engine's `reduce`, `raise`, `suspend`, `warmup_advance`, `warmup_hold`",
       "pause"),
    _f("actor", "string", CONTROL, "", "who: an IAM ARN, `user@host`, or `adaptive`",
       "ops@bastion"),
    _f("selector", "map<string,string>", CONTROL, "",
       "the fields the control names (`{}` for a stop)", {"domain": "gmail.com"}),
    _f("until", "timestamp", CONTROL, "until lifted", "when the control lapses",
       "2026-12-03T20:00:00.000Z"),
    _f("rule", "string", CONTROL, "a control not by `adaptive`",
       "the policy rule or template that acted", "gmail-deferrals"),
    _f("observed", "double", CONTROL, "a control not by `adaptive`",
       "what the rule observed (a share of attempts 0-1, or a rate per second)", 0.12),
    _f("old", "double", CONTROL, "not by `adaptive`, or a suspension",
       "the value changed, before (a send rate per second, a warm-up day)", 50.0),
    _f("new", "double", CONTROL, "not by `adaptive`, or a suspension",
       "the value changed, after", 25.0),
    _f("message_size", "bigint", ATTEMPTS, _UNTRIED,
       "bytes of the message as sent in DATA for this recipient (the DKIM-Signature and "
       "added headers included, before SMTP dot-stuffing; the 7-bit form to a server "
       "without 8BITMIME); without a transaction, the size it was handed to SMTP at",
       48213),
    _f("dkim_domain", "string", ATTEMPTS, "the message went unsigned; " + _UNTRIED,
       "the DKIM signing domain (d=)", "example.com"),
    _f("dkim_selector", "string", ATTEMPTS, "as `dkim_domain`",
       "the DKIM selector (s=); several keys of one domain: their selectors, "
       "comma-separated, in signing order", "q2026"),
    _f("message_id_header", "string", ATTEMPTS,
       "the message has no Message-ID header; " + _UNTRIED,
       "the message's RFC 5322 Message-ID, angle brackets included (to join with "
       "complaints and replies)", "<welcome-00042@example.com>"),
    _f("transaction_ms", "bigint", ATTEMPTS,
       "no transaction took place (the connection failed before MAIL FROM, or the "
       "recipient was refused before anything went on the wire); " + _UNTRIED,
       "milliseconds from writing MAIL FROM to the transaction's last reply (the reply to "
       "DATA; the RCPT replies when every recipient was refused): the same for every "
       "recipient of one transaction", 212),
)
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
FIELDS_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
# Fields that are not Glue columns: Athena forbids a column named as a partition key.
NOT_COLUMNS = frozenset(name for name, _ in PARTITION_KEYS)


def athena_type(type_: str) -> str:
    """The Glue/Athena column type of a schema type."""
    return "string" if type_ == "timestamp" else type_


def glue_columns() -> tuple[tuple[str, str], ...]:
    """(name, Athena type) of every field that is a column of the Glue table."""
    return tuple((f.name, athena_type(f.type)) for f in FIELDS if f.name not in NOT_COLUMNS)


_DUCKDB_SCALARS = {
    "string": "VARCHAR", "int": "INTEGER", "bigint": "BIGINT", "double": "DOUBLE",
    "boolean": "BOOLEAN", "float": "FLOAT", "smallint": "SMALLINT",
    "timestamp": "TIMESTAMPTZ",
}


class ColumnTypeError(ValueError):
    """A schema or Athena type that has no DuckDB spelling."""


def duckdb_type(type_: str) -> str:
    """The DuckDB type of a schema or Athena type: `map<string,string>` ->
    `MAP(VARCHAR, VARCHAR)`; struct and array likewise, nested to any depth."""
    type_ = type_.strip()
    head, sep, rest = type_.partition("<")
    if not sep:
        try:
            return _DUCKDB_SCALARS[type_.lower()]
        except KeyError:
            raise ColumnTypeError(f"unknown type {type_!r}") from None
    if not rest.endswith(">"):
        raise ColumnTypeError(f"unbalanced type {type_!r}")
    args = _split_top(rest[:-1])
    kind = head.strip().lower()
    if kind == "map" and len(args) == 2:
        return f"MAP({duckdb_type(args[0])}, {duckdb_type(args[1])})"
    if kind == "array" and len(args) == 1:
        return f"{duckdb_type(args[0])}[]"
    if kind == "struct" and args:
        members = []
        for arg in args:
            name, colon, inner = arg.partition(":")
            if not colon or not name.strip():
                raise ColumnTypeError(f"struct member without a type in {type_!r}")
            members.append(f'"{name.strip()}" {duckdb_type(inner)}')
        return f"STRUCT({', '.join(members)})"
    raise ColumnTypeError(f"unknown type {type_!r}")


def _split_top(text: str) -> list[str]:
    """Split at the commas that are not inside <...>."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in (part.strip() for part in parts) if p]


def duckdb_columns() -> dict[str, str]:
    """`read_json(..., columns=...)`: every field but the partition keys (they come from
    the path, `hive_types`), so no sampling can drop or retype a column."""
    return {f.name: duckdb_type(f.type) for f in FIELDS if f.name not in NOT_COLUMNS}


def duckdb_source(files: str) -> str:
    """A DuckDB table expression over exported objects (`files`: a path or glob such as
    `events/event=*/date=*/hour=*/*.jsonl.gz`), typed as the Glue table is: partition
    keys as strings (`hour = '08'`, as in Athena), `meta` a map, `at` a TIMESTAMPTZ."""
    columns = ", ".join(f"'{name}': '{type_}'" for name, type_ in duckdb_columns().items())
    hive = ", ".join(f"'{name}': 'VARCHAR'" for name, _ in PARTITION_KEYS)
    quoted = files.replace("'", "''")
    return (f"read_json('{quoted}', format = 'newline_delimited', columns = {{{columns}}}, "
            f"hive_partitioning = true, hive_types = {{{hive}}})")


def stored_meta(meta: Mapping[str, Any]) -> dict[str, str | None]:
    """`meta` as the table types it (map<string,string>): strings as they are, null as
    null, numbers and booleans as their JSON text. The export writes this, so Athena's
    and DuckDB's maps read what the objects hold."""
    return {key: value if value is None or isinstance(value, str) else json.dumps(value)
            for key, value in meta.items()}


def stored(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """A record as the export writes it: `meta` by `stored_meta` (the record itself when
    every value is already a string or null, the common case, at no cost)."""
    meta = record.get("meta")
    if not meta or all(v is None or isinstance(v, str) for v in meta.values()):
        return record
    return {**record, "meta": stored_meta(meta)}


def conforms(value: Any, type_: str) -> bool:
    """Whether a JSON value (null aside) reads as `type_` without loss."""
    if type_ in ("string", "timestamp"):
        return isinstance(value, str)
    if type_ in ("int", "bigint"):
        return isinstance(value, int) and not isinstance(value, bool) and (
            type_ == "bigint" or -2**31 <= value < 2**31)
    if type_ == "double":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if type_ == "boolean":
        return isinstance(value, bool)
    if type_ == "map<string,string>":
        return isinstance(value, dict) and all(
            isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in value.items())
    match = re.fullmatch(r"struct<(.*)>", type_)
    if match is None or not isinstance(value, dict):
        return False
    members = dict(m.split(":", 1) for m in match.group(1).split(","))
    return set(value) <= set(members) and all(
        v is None or conforms(v, members[k]) for k, v in value.items())


def record_problems(record: Mapping[str, Any]) -> list[str]:
    """How a record as stored departs from the schema: a field it does not define, a
    value its column would not read, a field on an event type not said to carry it."""
    problems = []
    event = record.get("event")
    for name, value in record.items():
        spec = FIELDS_BY_NAME.get(name)
        if spec is None:
            problems.append(f"{name}: not a field of the schema")
        elif value is not None and not conforms(value, spec.type):
            problems.append(f"{name}: {value!r} is not {spec.type}")
        elif event not in spec.events:
            problems.append(f"{name}: not a field of {event!r} events")
    return problems


def _events_cell(events: frozenset[EventType]) -> str:
    if events == EVERY:
        return "every event"
    return ", ".join(f"`{e}`" for e in EVENT_TYPES if e in events)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _example(value: Any) -> str:
    return "`" + json.dumps(value, ensure_ascii=False) + "`"


def markdown() -> str:
    """docs/events.md: the schema as analysts read it (generated; a test compares)."""
    lines = [
        "# Event record, v1",
        "",
        "<!-- Generated by `python -m quiver.event_schema --markdown > docs/events.md`"
        " from quiver/event_schema.py; do not edit by hand. -->",
        "",
        "One JSON object per line, gzip'd, under "
        "`events/event=<type>/date=YYYY-MM-DD/hour=HH/<batch>.jsonl.gz` in the events "
        "bucket (`Content-Type: application/gzip`, no `Content-Encoding`: a download "
        "over HTTP stays gzip). Fields a reader does not know are to be ignored: new "
        "fields are added to v1, never renamed or retyped.",
        "",
        "## Event types",
        "",
        "| event | final | meaning |",
        "| --- | --- | --- |",
    ]
    lines += [f"| `{e}` | {'yes' if e in FINAL_EVENTS else 'no'} | {_cell(EVENT_MEANINGS[e])} |"
              for e in EVENT_TYPES]
    lines += [
        "",
        "Final events: exactly one per recipient of a message. A recipient's `deferred` "
        "events come before its final one; post-delivery events (`async_bounce`, "
        "`complaint`, `unsubscribed`) after it, zero or more.",
        "",
        "## Fields",
        "",
        "`type` is the Glue/Athena column type (`timestamp`: an RFC 3339 UTC string, a "
        "`string` column in Athena, TIMESTAMPTZ in DuckDB). A field is absent from events "
        "not named under `on`; `null when` says when it is null (or absent) on those.",
        "",
        "| field | type | on | null when | meaning | example |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| `{f.name}` | `{f.type}` | {_events_cell(f.events)} | {_cell(f.null) or 'never'} "
        f"| {_cell(f.description)} | {_cell(_example(f.example))} |"
        for f in FIELDS
    ]
    lines += [
        "",
        "## Partitions",
        "",
        "| key | type | values |",
        "| --- | --- | --- |",
        "| `event` | `string` | the event type |",
        "| `date` | `string` | `YYYY-MM-DD` of `at` (UTC); quote it in SQL: `\"date\"` |",
        "| `hour` | `string` | two digits, `00` to `23`, of `at` (UTC): filter with "
        "`hour = '08'`; `hour = '8'` matches nothing, and `hour = 8` is a type error in "
        "Athena |",
        "",
        "`at`, `from` and `date` are keywords in Athena or DuckDB: quote them "
        "(`\"at\"`, `\"from\"`, `\"date\"`).",
        "",
        "## `meta`",
        "",
        "A `map<string,string>`. The export writes each value that is not a string as its "
        "JSON text: `1042` is `'1042'`, `true` is `'true'`, `2.5` is `'2.5'`; null stays "
        "null. Compare with strings (`meta['vip'] = 'true'`) or cast "
        "(`CAST(meta['order'] AS bigint)`). Keys keep their case in the objects and in "
        "DuckDB's map.",
        "",
        "## DuckDB",
        "",
        "Read with explicit columns, so no sampling drops a field that only some event "
        "types carry, and with the partitions typed as in Athena "
        "(`python -m quiver.event_schema --duckdb GLOB` prints this):",
        "",
        "```sql",
        "CREATE VIEW events AS SELECT * FROM",
        "  " + duckdb_source("events/event=*/date=*/hour=*/*.jsonl.gz") + ";",
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quiver.event_schema",
                                     description="The event record schema, generated.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--markdown", action="store_true", help="docs/events.md")
    which.add_argument("--glue", action="store_true", help="the Glue columns, as JSON")
    which.add_argument("--duckdb", metavar="GLOB",
                       help="a DuckDB read_json(...) over the objects GLOB names")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown())
    elif args.glue:
        print(json.dumps([{"Name": n, "Type": t} for n, t in glue_columns()], indent=1))
    else:
        print(duckdb_source(args.duckdb))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
