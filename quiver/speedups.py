"""JSON and base64 on the sender's hot path, in C where the libraries are installed.

Every message the sender takes is a JSON document holding its body in base64, and
every event it writes is a JSON line: the standard library's decoders cost about
8 µs (json) and 20 µs (a 5 KB body's base64) per message, orjson and pybase64
under 3 and 1. Both are in the sender image; where they are not (a Lambda's
bundle, a machine without wheels for them) the standard library does the work.

The answers are the standard library's in every case, so nothing a caller sees
depends on which code ran: orjson is strict RFC 8259 and refuses what `json`
accepts beyond it (NaN, lone surrogates, non-string keys), and each refusal is
handed to `json`, which gives its own result or error (as is a document where
orjson read an integer past 64 bits as a float, which `json` keeps exact, and one
nested deeper than 400 levels, where `json` may run out of stack); a
base64 text is taken from pybase64 only when it is the canonical encoding of what
came out, otherwise `binascii`'s strict mode decides.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - the image and the dev venv install it
    orjson = None  # type: ignore[assignment]
try:
    import pybase64
except ImportError:  # pragma: no cover - as above
    pybase64 = None  # type: ignore[assignment]

# orjson reads integers from -2**63 to 2**64 - 1 exactly; past them, as floats.
_ROUNDED = float(2**63)
# Documents nested deeper than this are read by `json`, whose limit depends on the
# caller's stack depth.
_DEEP = 400
# The events' line format: compact, UTF-8 as is (not \u-escaped).
_LINE_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _std_line(record: Any) -> bytes:
    return _LINE_ENCODER.encode(record).encode() + b"\n"


def _std_b64decode(text: str) -> bytes:
    # strict_mode: only the alphabet, correct padding, nothing after it.
    return binascii.a2b_base64(text, strict_mode=True)


if orjson is not None:
    _orjson_loads: Callable[[str | bytes], Any] = orjson.loads
    _orjson_dumps = orjson.dumps
    _APPEND_NEWLINE = orjson.OPT_APPEND_NEWLINE

    def loads(data: str | bytes) -> Any:
        """`json.loads(data)`: the same value, or the same exception."""
        try:
            value = _orjson_loads(data)
        except ValueError:  # orjson.JSONDecodeError is one
            return json.loads(data)
        return json.loads(data) if _may_differ(value) else value

    def _may_differ(value: Any) -> bool:
        """Whether `json` might read the document otherwise: a float that may stand
        for an integer literal past 64 bits (orjson reads one as a float, `json` as
        the exact int; a float literal that size is read again, to the same value),
        or nesting deeper than _DEEP (`json` refuses nesting near the recursion
        limit, from about 990 levels at the top of the stack; orjson at 1,024)."""
        if type(value) is not dict and type(value) is not list:
            return type(value) is float and abs(value) >= _ROUNDED and value.is_integer()
        stack = [(value, 0)]
        while stack:
            item, depth = stack.pop()
            if depth >= _DEEP:
                return True
            for child in item.values() if type(item) is dict else item:
                kind = type(child)
                if kind is dict or kind is list:
                    stack.append((child, depth + 1))
                elif kind is float and abs(child) >= _ROUNDED and child.is_integer():
                    return True
        return False

    def json_line(record: Any) -> bytes:
        """`record` as one compact JSON line, UTF-8, ending in LF (as `json` writes it)."""
        try:
            return _orjson_dumps(record, option=_APPEND_NEWLINE)
        except TypeError:  # orjson.JSONEncodeError is one
            return _std_line(record)
else:  # pragma: no cover
    loads = json.loads
    json_line = _std_line


if pybase64 is not None:
    _b64decode = pybase64.b64decode
    _b64encode = pybase64.b64encode

    def b64decode_strict(text: str) -> bytes:
        """`binascii.a2b_base64(text, strict_mode=True)`: the same bytes, or binascii.Error."""
        try:
            out = _b64decode(text, validate=True)
        except ValueError:  # binascii.Error is one; so is non-ASCII text
            return _std_b64decode(text)
        # Canonical text (what every encoder writes) decodes alike everywhere; for
        # any other, strict mode says whether it is accepted and what it holds.
        if _b64encode(out) == text.encode("ascii"):
            return out
        return _std_b64decode(text)

    def b64encode_text(data: bytes) -> str:
        """`base64.b64encode(data).decode("ascii")`."""
        return _b64encode(data).decode("ascii")
else:  # pragma: no cover
    b64decode_strict = _std_b64decode

    def b64encode_text(data: bytes) -> str:
        return binascii.b2a_base64(data, newline=False).decode("ascii")
