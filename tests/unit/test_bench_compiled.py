"""bench/compiled.py: the copy it compiles marks only the classes it names as non-native."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from compiled import NON_NATIVE, ROOT, mark_non_native

SOURCE = ("from __future__ import annotations\n\nclass A(bytes):\n    pass\n\n"
          "class AB(Exception):\n    pass\n")


def test_only_the_named_class_is_decorated_and_the_result_compiles() -> None:
    out = mark_non_native(SOURCE, ("A",))
    assert "@mypyc_attr(native_class=False)\nclass A(bytes)" in out
    assert "@mypyc_attr(native_class=False)\nclass AB" not in out
    assert out.count("from mypy_extensions import mypyc_attr") == 1
    compile(out, "marked.py", "exec")


def test_a_missing_class_or_future_import_is_an_error() -> None:
    with pytest.raises(ValueError, match="class C not found"):
        mark_non_native(SOURCE, ("C",))
    with pytest.raises(ValueError, match="from __future__ import annotations"):
        mark_non_native("class A(bytes):\n    pass\n", ("A",))


def test_the_classes_it_marks_still_exist_in_the_tree() -> None:
    # The source moves on; a renamed class must fail here, not in a 10-minute benchmark.
    for rel, classes in NON_NATIVE.items():
        mark_non_native((ROOT / rel).read_text(), classes)
