"""Dependencies run one way: every import in the tree, read with ast, against the layers.

    app.py, cdk/, functions/, proxy_tier/   may import quiver
    quiver/cli.py                           the entry point: wiring, and the dev stack
    quiver/wiring.py                        the composition root, above both halves
    quiver/sender/   quiver/scheduler/      the engine's halves: neither imports the other
    quiver/delivery.py, events, envelope, storage, routing, smtp, policy, ...   below both
    quiver/devstack/                        the dev wing: nothing in the runtime imports it

Lazy imports inside functions count too: a cycle hidden in a function body is still
a cycle, and a runtime module reaching the dev wing would break the sender image.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUIVER = ROOT / "quiver"


def imports_of(path: Path) -> Iterator[str]:
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    return imports_in(path.read_text(), package)


def imports_in(source: str, package: str) -> Iterator[str]:
    """Every module `source` (a module of `package`) imports, absolute (relative imports
    resolved), anywhere in it."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            yield base
            # `from quiver import sender` imports quiver.sender.
            yield from (f"{base}.{alias.name}" for alias in node.names)


def modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files for name in imports_of(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    )


def runtime_modules() -> list[Path]:
    return [p for p in modules(QUIVER) if "devstack" not in p.relative_to(QUIVER).parts]


def test_quiver_never_imports_the_proxy_tier_functions_or_cdk() -> None:
    assert violations(modules(QUIVER), ("proxy_tier", "functions", "cdk", "app")) == []


def test_the_scheduler_never_imports_the_sender_or_the_wiring() -> None:
    files = modules(QUIVER / "scheduler")
    assert violations(files, ("quiver.sender", "quiver.wiring", "quiver.cli")) == []


def test_the_sender_never_imports_the_scheduler_or_the_wiring() -> None:
    files = modules(QUIVER / "sender")
    assert violations(files, ("quiver.scheduler", "quiver.wiring", "quiver.cli")) == []


@pytest.mark.parametrize("low", [
    "delivery.py", "events.py", "envelope.py", "storage", "routing", "smtp", "policy",
    "dkim", "content", "bounce", "feedback",
])
def test_the_low_layers_import_neither_half_of_the_engine(low: str) -> None:
    target = QUIVER / low
    files = [target] if target.is_file() else modules(target)
    forbidden = ("quiver.sender", "quiver.scheduler", "quiver.wiring", "quiver.cli")
    assert violations(files, forbidden) == []


def test_nothing_in_the_runtime_imports_the_dev_stack_but_the_cli() -> None:
    files = [p for p in runtime_modules() if p != QUIVER / "cli.py"]
    assert violations(files, ("quiver.devstack",)) == []


def test_the_checker_sees_lazy_and_relative_imports() -> None:
    # A rule that cannot fail proves nothing: feed it the shapes it must catch.
    source = "def f():\n    from ..sender import lifecycle\n    import proxy_tier.render\n"
    assert set(imports_in(source, "quiver.scheduler")) == {
        "quiver.sender", "quiver.sender.lifecycle", "proxy_tier.render"}
