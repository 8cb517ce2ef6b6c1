"""RFC 3464 delivery-status fields: per-message and per-recipient blocks, and the
status/diagnostic values inside them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from quiver.bounce.dsn_limits import MAX_FIELD_CHARS, MAX_LINE_CHARS, MAX_RECIPIENTS

Fields = dict[str, str]

_FIELD = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]{0,76})[ \t]*:[ \t]*(.*)$")
ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]|\.\d)")
# An SMTP reply at the start of a diagnostic, possibly with its enhanced code.
_REPLY = re.compile(r"^\s*([245]\d\d)(?:[ -]+(?:#?([245]\.\d{1,3}\.\d{1,3})\b)?|$)")
# The code of every line of a multi-line reply, unfolded into one ("550-5.1.1 ...
# 550-5.1.1 ... 550 5.1.1 ..."): stripped from the text that is classified.
_REPEATED_CODES = re.compile(r"\s[245]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3}\s)?")


def parse_blocks(text: str) -> list[Fields]:
    """Split a delivery-status body into field blocks separated by blank lines.
    Continuation lines (starting with white space) extend the previous field; the
    first occurrence of a field in a block wins; names are lower-cased."""
    blocks: list[Fields] = []
    current: Fields = {}
    last: str | None = None
    for line in text.splitlines():
        line = line[:MAX_LINE_CHARS]
        if not line.strip():
            if current:
                blocks.append(current)
                if len(blocks) > MAX_RECIPIENTS:
                    break
            current, last = {}, None
            continue
        if line[0] in " \t":
            if last is not None and len(current[last]) < MAX_FIELD_CHARS:
                current[last] = f"{current[last]} {line.strip()}"[:MAX_FIELD_CHARS]
            continue
        match = _FIELD.match(line)
        if match is None:
            last = None
            continue
        name = match[1].lower()
        if name in current:
            last = None
            continue
        current[name] = match[2].strip()[:MAX_FIELD_CHARS]
        last = name
    if current and len(blocks) <= MAX_RECIPIENTS:
        blocks.append(current)
    return blocks


def typed_value(value: str | None) -> str | None:
    """`rfc822; ann@example.org` → `ann@example.org`; `dns; mx.example` → `mx.example`."""
    if value is None:
        return None
    _, sep, rest = value.partition(";")
    out = (rest if sep else value).strip()
    return out or None


def mta_name(value: str | None) -> str | None:
    """`dns; mx.example. (comment)` → `mx.example`."""
    raw = typed_value(value)
    if raw is None:
        return None
    name = re.sub(r"\([^)]*\)?", " ", raw).split()
    return name[0].rstrip(".") if name else None


def address(value: str | None) -> str | None:
    """A mailbox as written in a field, without angle brackets or comments."""
    raw = typed_value(value)
    if raw is None:
        return None
    raw = re.sub(r"\([^)]*\)", " ", raw).strip()
    bracketed = re.search(r"<([^<>\s]+@[^<>\s]+)>", raw)
    if bracketed:
        return bracketed[1]
    bare = re.search(r"[^\s<>\"'(),;:]+@[^\s<>\"'(),;:]+", raw)
    return bare[0].rstrip(".") if bare else None


def status_of(value: str | None) -> str | None:
    """The enhanced status code in a Status field ("5.1.1 (bad mailbox)" → "5.1.1")."""
    if not value:
        return None
    match = ENHANCED.search(value)
    return ".".join(match.groups()) if match else None


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: int | None
    enhanced: str | None
    text: str


def split_diagnostic(value: str) -> Diagnostic:
    """`smtp; 550-5.1.1 The account ... 550 5.1.1 more` → (550, "5.1.1", the text)."""
    kind, sep, rest = value.partition(";")
    text = rest if sep and re.fullmatch(r"\s*[A-Za-z][A-Za-z0-9-]*\s*", kind) else value
    text = " ".join(text.split())
    match = _REPLY.match(text)
    if match is None:
        found = ENHANCED.search(text)
        return Diagnostic(None, ".".join(found.groups()) if found else None, text)
    code = int(match[1])
    enhanced = match[2]
    body = _REPEATED_CODES.sub(" ", " " + text[match.end():]).strip()
    if enhanced is None:
        trailing = ENHANCED.search(body)
        enhanced = ".".join(trailing.groups()) if trailing else None
    return Diagnostic(code, enhanced, body)
