"""The outbound queue message, contract v1 (see ARCHITECTURE.md).

`decode` is the only way a queue body becomes an `Envelope`; every refusal is an
`EnvelopeError` naming the field and the rule broken, so a `rejected` event can
carry a reason the sending service can act on. Keys beginning with `_` are
quiver's own bookkeeping for re-enqueued messages; callers never set them.
`readable` recovers what it can from a body `decode` refused, so the events of a
rejected message still carry the caller's id and recipients.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from quiver.addresses import AddressError, normalize_address
from quiver.smtp.reply import Response
from quiver.speedups import b64decode_strict, loads

VERSION = 1
MAX_RECIPIENTS = 100
MAX_ID = 128
MAX_META_BYTES = 4096
MAX_LABEL = 128  # pool, tenant, campaign
# SQS refuses bodies above 256 KiB; a raw body near that is already a client bug.
MAX_BODY_BYTES = 256 * 1024

_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9._:@/+-]{1,128}$")
_S3_URI = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(.{1,1024})$")
_CALLER_KEYS = frozenset(
    {"v", "id", "from", "to", "raw", "raw_s3", "pool", "tenant", "campaign", "meta", "expires"}
)
# Bookkeeping written by quiver when it re-enqueues a deferred message.
_RESERVED_KEYS = frozenset({"_attempt", "_not_before", "_queued_at", "_last"})
# A pending recipient's last reply travels with the message (for its `expired` event);
# its text is bounded like any reply text (quiver.smtp.reply.MAX_TEXT), and recipients
# that share a reply (one transaction's, usually) share one entry.
MAX_LAST_TEXT = 512
_ENHANCED = re.compile(r"^(?:[245]\.\d{1,3}\.\d{1,3})?$")
_LAST_KEYS = frozenset({"code", "enhanced", "text", "tried", "to"})
# An invalid recipient string is still shown on its `rejected` event, cut to this.
MAX_SHOWN_ADDRESS = 512
_ALL_KEYS = _CALLER_KEYS | _RESERVED_KEYS


class EnvelopeError(ValueError):
    """A queue message that breaks contract v1: `field` and `rule` say how."""

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")


@dataclass(frozen=True, slots=True)
class LastReply:
    """A pending recipient's last reply (`tried`), or why it was never tried (not `tried`)."""

    code: int
    enhanced: str  # "" when the reply had no enhanced status code
    text: str
    tried: bool

    @classmethod
    def of(cls, *, code: int, enhanced: str | None, text: str, tried: bool) -> LastReply:
        return cls(code=code, enhanced=enhanced or "", text=text[:MAX_LAST_TEXT], tried=tried)

    def as_event(self) -> Response:
        """The event's `response` object."""
        return {"code": self.code, "enhanced": self.enhanced or None, "text": self.text}


@dataclass(frozen=True, slots=True)
class Envelope:
    id: str
    sender: str
    recipients: tuple[str, ...]
    raw: bytes | None = None
    raw_s3: str | None = None
    pool: str | None = None
    tenant: str | None = None
    campaign: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    expires: datetime | None = None
    # Bookkeeping: attempts made so far, earliest time of the next one, and when the
    # message was first accepted (epoch seconds), which bounds its retry age.
    # Real tries counts per recipient: a re-enqueued message holds only recipients
    # with the same count (the lifecycle splits them), so one number serves them all.
    attempt: int = 0
    not_before: float | None = None
    queued_at: float | None = None
    # By recipient: its last reply, or why it was not tried (absent: nothing known).
    last: dict[str, LastReply] = field(default_factory=dict)

    def without_raw(self) -> Envelope:
        """This envelope without its inline body (what a signed message keeps while it
        is delivered). Built directly: it runs once per message, and
        `dataclasses.replace` costs several times more."""
        return Envelope(
            id=self.id, sender=self.sender, recipients=self.recipients, raw=None,
            raw_s3=self.raw_s3, pool=self.pool, tenant=self.tenant, campaign=self.campaign,
            meta=self.meta, expires=self.expires, attempt=self.attempt,
            not_before=self.not_before, queued_at=self.queued_at, last=self.last,
        )

    def retry(
        self, *, recipients: tuple[str, ...], attempt: int, not_before: float, queued_at: float,
        last: dict[str, LastReply],
    ) -> Envelope:
        """The envelope to re-enqueue for the still-pending `recipients`."""
        return replace(
            self, recipients=recipients, attempt=attempt, not_before=not_before,
            queued_at=queued_at, last={r: last[r] for r in recipients if r in last},
        )


def decode(body: str | bytes) -> Envelope:
    """Parse and validate an SQS body; raises EnvelopeError on any contract breach."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise EnvelopeError("body", "not UTF-8") from None
    try:
        data = loads(body)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise EnvelopeError("body", f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise EnvelopeError("body", "expected a JSON object")
    return from_dict(data, allow_reserved=True)


def from_dict(data: dict[str, Any], *, allow_reserved: bool) -> Envelope:
    allowed_keys = _ALL_KEYS if allow_reserved else _CALLER_KEYS
    unknown = [] if data.keys() <= allowed_keys else sorted(data.keys() - allowed_keys)
    if allow_reserved:
        # Bookkeeping this version does not know comes from a newer one (a rollout runs
        # both): read the message without it rather than reject it.
        unknown = [k for k in unknown if not k.startswith("_")]
    if unknown:
        rule = "reserved for quiver's bookkeeping" if unknown[0].startswith("_") else "unknown key"
        allowed = ", ".join(sorted(_CALLER_KEYS))
        key = unknown[0]
        # The key is caller data: quote it unless it is plain, so the error stays one line.
        name = key if key.isidentifier() or key.isalnum() else json.dumps(key)
        raise EnvelopeError(name, f"{rule} (allowed: {allowed})")
    v = data.get("v")
    if v is None:
        raise EnvelopeError("v", "required")
    if type(v) is not int or v != VERSION:
        raise EnvelopeError("v", f"unsupported version {v!r} (this build reads {VERSION})")
    message_id = data.get("id")
    if not isinstance(message_id, str) or not _ID.match(message_id):
        raise EnvelopeError("id", "required: 1-128 characters of [A-Za-z0-9._:@-]")
    sender = _sender(data.get("from"))
    recipients = _recipients(data.get("to"))
    raw, raw_s3 = _body(data)
    return Envelope(
        id=message_id,
        sender=sender,
        recipients=recipients,
        raw=raw,
        raw_s3=raw_s3,
        pool=_label(data, "pool"),
        tenant=_label(data, "tenant"),
        campaign=_label(data, "campaign"),
        meta=_meta(data.get("meta")),
        expires=_expires(data.get("expires")),
        attempt=_non_negative_int(data, "_attempt", 0),
        not_before=_epoch(data, "_not_before"),
        queued_at=_epoch(data, "_queued_at"),
        last=_last(data.get("_last"), recipients),
    )


def encode(envelope: Envelope) -> str:
    """The SQS body for `envelope` (bookkeeping keys only when set)."""
    data: dict[str, Any] = {
        "v": VERSION,
        "id": envelope.id,
        "from": envelope.sender,
        "to": list(envelope.recipients),
    }
    if envelope.raw is not None:
        data["raw"] = base64.b64encode(envelope.raw).decode("ascii")
    if envelope.raw_s3 is not None:
        data["raw_s3"] = envelope.raw_s3
    for key in ("pool", "tenant", "campaign"):
        if (value := getattr(envelope, key)) is not None:
            data[key] = value
    if envelope.meta:
        data["meta"] = envelope.meta
    if envelope.expires is not None:
        data["expires"] = envelope.expires.isoformat().replace("+00:00", "Z")
    if envelope.attempt:
        data["_attempt"] = envelope.attempt
    if envelope.not_before is not None:
        data["_not_before"] = round(envelope.not_before, 3)
    if envelope.queued_at is not None:
        data["_queued_at"] = round(envelope.queued_at, 3)
    if envelope.last:
        data["_last"] = _encode_last(envelope.recipients, envelope.last)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _sender(value: Any) -> str:
    # The null reverse-path (MAIL FROM:<>): for DSNs and other notifications that
    # must never cause a bounce of their own (RFC 5321 4.5.5).
    if value == "":
        return ""
    return _address(value, "from")


def _address(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise EnvelopeError(name, "required: an address string")
    try:
        return normalize_address(value)
    except AddressError as exc:
        raise EnvelopeError(name, f"invalid address: {exc}") from None


def _recipients(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_RECIPIENTS:
        raise EnvelopeError("to", f"required: a list of 1-{MAX_RECIPIENTS} addresses")
    out: list[str] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        address = _address(item, f"to[{i}]")
        key = address.lower()
        if key in seen:
            # Two copies would mean two final events for one recipient.
            raise EnvelopeError(f"to[{i}]", f"duplicate recipient {address!r}")
        seen.add(key)
        out.append(address)
    return tuple(out)


def _body(data: dict[str, Any]) -> tuple[bytes | None, str | None]:
    has_raw, has_s3 = "raw" in data, "raw_s3" in data
    if has_raw == has_s3:
        raise EnvelopeError("raw", "exactly one of raw or raw_s3 is required")
    if has_raw:
        value = data["raw"]
        if not isinstance(value, str) or not value:
            raise EnvelopeError("raw", "expected non-empty base64 text")
        if len(value) > MAX_BODY_BYTES * 4 // 3 + 4:
            raise EnvelopeError("raw", f"larger than {MAX_BODY_BYTES} bytes; use raw_s3")
        try:
            # strict_mode: only the alphabet, correct padding, nothing after it.
            return b64decode_strict(value), None
        except (binascii.Error, ValueError):
            raise EnvelopeError("raw", "not valid base64") from None
    value = data["raw_s3"]
    if not isinstance(value, str) or not _S3_URI.match(value) or any(ord(c) < 32 for c in value):
        raise EnvelopeError("raw_s3", "expected s3://bucket/key")
    return None, value


def parse_s3_uri(uri: str) -> tuple[str, str]:
    match = _S3_URI.match(uri)
    if not match:
        raise EnvelopeError("raw_s3", "expected s3://bucket/key")
    return match.group(1), match.group(2)


def _label(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not _LABEL_RE.match(value):
        raise EnvelopeError(name, "expected 1-128 characters of [A-Za-z0-9._:@/+-]")
    return value


def _meta(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EnvelopeError("meta", "expected a flat JSON object")
    for key, item in value.items():
        if item is not None and not isinstance(item, str | int | float | bool):
            raise EnvelopeError(f"meta.{key}", "values must be strings, numbers, booleans or null")
        if isinstance(item, float) and not math.isfinite(item):
            # json reads NaN and Infinity, but they are not JSON (RFC 8259 6): copied
            # onto events, they would make lines no reader of the contract accepts.
            raise EnvelopeError(f"meta.{key}", "numbers must be finite (NaN, Infinity: not JSON)")
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > MAX_META_BYTES:
        raise EnvelopeError("meta", f"{size} bytes encoded; at most {MAX_META_BYTES}")
    return value


def _expires(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise EnvelopeError("expires", "expected an RFC 3339 time string")
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise EnvelopeError("expires", f"not an RFC 3339 time: {value!r}") from None
    if when.tzinfo is None or "T" not in value.upper():
        raise EnvelopeError("expires", "needs a date, a time and a UTC offset (e.g. ...T12:00:00Z)")
    return when.astimezone(UTC)


def _non_negative_int(data: dict[str, Any], name: str, default: int) -> int:
    value = data.get(name, default)
    if type(value) is not int or value < 0:
        raise EnvelopeError(name, "expected a non-negative integer")
    return value


def _epoch(data: dict[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise EnvelopeError(name, "expected epoch seconds")
    return float(value)


def _last(value: Any, recipients: tuple[str, ...]) -> dict[str, LastReply]:
    """`_last`: [{code, enhanced, text, tried, to: [indexes into `to`]}, ...]."""
    if value is None:
        return {}
    if not isinstance(value, list):
        raise EnvelopeError("_last", "expected a list")
    out: dict[str, LastReply] = {}
    for n, item in enumerate(value):
        where = f"_last[{n}]"
        if not isinstance(item, dict) or item.keys() != _LAST_KEYS:
            raise EnvelopeError(where, f"expected an object with {', '.join(sorted(_LAST_KEYS))}")
        code, enhanced, text, tried, to = (item[k] for k in ("code", "enhanced", "text",
                                                              "tried", "to"))
        if type(code) is not int or not 200 <= code <= 599:
            raise EnvelopeError(f"{where}.code", "expected a reply code 200-599")
        if not isinstance(enhanced, str) or not _ENHANCED.match(enhanced):
            raise EnvelopeError(f"{where}.enhanced", "expected an enhanced status code or ''")
        if not isinstance(text, str) or len(text) > MAX_LAST_TEXT:
            raise EnvelopeError(f"{where}.text", f"expected at most {MAX_LAST_TEXT} characters")
        if type(tried) is not bool:
            raise EnvelopeError(f"{where}.tried", "expected true or false")
        if not isinstance(to, list) or not to:
            raise EnvelopeError(f"{where}.to", "expected a non-empty list of recipient indexes")
        reply = LastReply(code=code, enhanced=enhanced, text=text, tried=tried)
        for index in to:
            if type(index) is not int or not 0 <= index < len(recipients):
                raise EnvelopeError(f"{where}.to", f"{index!r} is not an index into `to`")
            if recipients[index] in out:
                raise EnvelopeError(f"{where}.to", f"recipient {index} appears twice")
            out[recipients[index]] = reply
    return out


def _encode_last(recipients: tuple[str, ...], last: dict[str, LastReply]) -> list[dict[str, Any]]:
    # One entry per distinct reply: the recipients of one transaction usually share it.
    groups: dict[LastReply, list[int]] = {}
    for index, rcpt in enumerate(recipients):
        reply = last.get(rcpt)
        if reply is not None:
            groups.setdefault(reply, []).append(index)
    return [
        {"code": r.code, "enhanced": r.enhanced, "text": r.text[:MAX_LAST_TEXT],
         "tried": r.tried, "to": to}
        for r, to in groups.items()
    ]


@dataclass(frozen=True, slots=True)
class Readable:
    """What a body that broke the contract still says about itself, for its events.

    `id` is None when the body has no valid caller id; `recipients` holds every
    string of `to` (valid ones normalized, invalid ones as given, cut to
    MAX_SHOWN_ADDRESS), so the caller finds the rejection by what it sent.
    """

    id: str | None = None
    sender: str | None = None
    recipients: tuple[str, ...] = ()
    pool: str | None = None
    tenant: str | None = None
    campaign: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    attempt: int = 0


def readable(body: str | bytes) -> Readable:
    """Read each field of a refused body on its own; never raises."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return Readable()
    if not isinstance(data, dict):
        return Readable()
    message_id = data.get("id")
    return Readable(
        id=message_id if isinstance(message_id, str) and _ID.match(message_id) else None,
        sender=_readable(lambda: _sender(data.get("from"))),
        recipients=_readable_recipients(data.get("to")),
        pool=_readable(lambda: _label(data, "pool")),
        tenant=_readable(lambda: _label(data, "tenant")),
        campaign=_readable(lambda: _label(data, "campaign")),
        meta=_readable(lambda: _meta(data.get("meta"))) or {},
        attempt=_readable(lambda: _non_negative_int(data, "_attempt", 0)) or 0,
    )


def _readable(read: Any) -> Any:
    try:
        return read()
    except (EnvelopeError, RecursionError, TypeError, ValueError):
        return None


def _readable_recipients(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    out: list[str] = []
    seen: set[str] = set()
    for item in value:
        if not isinstance(item, str) or not item:
            continue
        try:
            address = normalize_address(item)
        except AddressError:
            address = item[:MAX_SHOWN_ADDRESS]
        if address.lower() not in seen:
            seen.add(address.lower())
            out.append(address)
        if len(out) == MAX_RECIPIENTS:
            break  # at most as many events as a valid message could have recipients
    return tuple(out)
