"""quiver.speedups gives the standard library's answers: the same values, the same
accept/refuse decisions, the same bytes (hypothesis against json and binascii)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quiver import speedups
from quiver.envelope import EnvelopeError, decode

# JSON values as the contract's documents hold them, finite floats included.
_SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


def _value_or_error(read: Callable[[str], Any], text: str) -> tuple[str, Any]:
    try:
        return "ok", read(text)
    except (ValueError, RecursionError) as exc:
        return "error", type(exc)


def _same(a: Any, b: Any) -> bool:
    # NaN != NaN; compare such documents by their text.
    return json.dumps(a) == json.dumps(b)


def _assert_read_as_json_reads(text: str) -> None:
    """speedups.loads accepts `text` exactly when json.loads does, with the same value."""
    want = _value_or_error(json.loads, text)
    got = _value_or_error(speedups.loads, text)
    assert got[0] == want[0], text
    if got[0] == "ok":
        assert _same(got[1], want[1])


def test_the_fast_libraries_are_installed_here() -> None:
    """The figures in the README are for the C path; a venv without it would
    measure the fallback without saying so."""
    assert speedups.orjson is not None
    assert speedups.pybase64 is not None


@settings(max_examples=300, deadline=None)
@given(_VALUES)
def test_loads_reads_what_json_writes(value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False)
    assert _same(speedups.loads(text), json.loads(text))
    assert _same(speedups.loads(text.encode()), json.loads(text.encode()))


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from('{}[]",:0123456789.eE-+ \tnulltruefalseNaInfiy\\u\ud800a'),
               max_size=40))
def test_loads_accepts_and_refuses_as_json_does(text: str) -> None:
    _assert_read_as_json_reads(text)


@pytest.mark.parametrize("text", [
    '{"meta": {"n": NaN}}', '{"a": 1e400}', '{"big": 123456789012345678901234567890}',
    '"\\ud800"', '{"a": 1, "a": 2}', '\ufeff{}', '[' * 3000 + ']' * 3000,
    '[' * 1000 + ']' * 1000, '{"a":' * 995 + '1' + '}' * 995, '[' * 400 + ']' * 400,
    '-9223372036854775809', '1e19', '"text"', '2.5',
])
def test_loads_takes_jsons_side_where_orjson_refuses(text: str) -> None:
    _assert_read_as_json_reads(text)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=10), _VALUES, max_size=8))
def test_json_line_is_jsons_line(record: dict[str, Any]) -> None:
    want = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    got = speedups.json_line(record)
    # orjson writes some floats in another (equally exact) form: 1e16 vs 1e+16.
    assert json.loads(got) == json.loads(want)
    assert got.endswith(b"\n") and got.count(b"\n") == 1


def test_json_line_falls_back_for_what_orjson_cannot_write() -> None:
    record = {"big": 2**80, 1: "int key"}
    assert speedups.json_line(record) == (
        json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
    # A lone surrogate cannot be UTF-8: the same error as the standard library's path.
    with pytest.raises(UnicodeEncodeError):
        speedups.json_line({"s": "\ud800"})


def _strict(text: str) -> tuple[str, bytes | None]:
    try:
        return "ok", binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        return "error", None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_b64decode_strict_reads_canonical_base64(data: bytes) -> None:
    text = base64.b64encode(data).decode()
    assert speedups.b64decode_strict(text) == data
    assert speedups.b64encode_text(data) == text


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=st.sampled_from("ABCQRabcz019+/=\n \t-_*é"), max_size=24))
def test_b64decode_strict_accepts_and_refuses_as_strict_mode_does(text: str) -> None:
    want = _strict(text)
    try:
        got: tuple[str, bytes | None] = ("ok", speedups.b64decode_strict(text))
    except (binascii.Error, ValueError):
        got = ("error", None)
    assert got == want, text


def test_meta_with_a_non_finite_number_is_refused() -> None:
    raw = base64.b64encode(b"From: a@b.test\r\n\r\nhi\r\n").decode()

    def body(number: str) -> str:
        return json.dumps({"v": 1, "id": "m1", "from": "a@b.test", "to": ["c@d.test"],
                           "raw": raw, "meta": {"n": "NUMBER"}}).replace('"NUMBER"', number)

    for number in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(EnvelopeError, match=r"meta\.n: numbers must be finite"):
            decode(body(number))
    assert decode(body("2.5")).meta == {"n": 2.5}
    assert decode(body("123456789012345678901234567890")).meta == {
        "n": 123456789012345678901234567890}


def test_without_the_libraries_the_standard_library_does_the_work() -> None:
    """A Lambda's bundle holds quiver/ without orjson and pybase64 (cdk/lambda_code.py)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['orjson'] = None; sys.modules['pybase64'] = None\n"
        "from quiver import speedups as s\n"
        "assert s.orjson is None and s.pybase64 is None\n"
        "assert s.loads('{\"a\": [1, 2.5, null]}') == {'a': [1, 2.5, None]}\n"
        "assert s.json_line({'a': 'é'}) == '{\"a\":\"é\"}\\n'.encode()\n"
        "assert s.b64decode_strict('aGk=') == b'hi' and s.b64encode_text(b'hi') == 'aGk='\n"
        "try:\n    s.b64decode_strict('aGk')\nexcept ValueError:\n    pass\n"
        "else:\n    raise AssertionError('bad padding accepted')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
