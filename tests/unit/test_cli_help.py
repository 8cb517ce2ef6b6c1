"""Every option and argument of every command says what it is for in --help."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from proxy_tier.__main__ import build_parser as proxy_tier_parser
from quiver.cli import parser


def walk(p: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    """(command path, action) for every action of `p` and of its subcommands."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def undocumented(p: argparse.ArgumentParser, prog: str) -> list[str]:
    return [
        f"{path}: {'/'.join(action.option_strings) or action.dest}"
        for path, action in walk(p, prog)
        if not action.help or action.help == argparse.SUPPRESS
    ]


def test_every_quiver_option_has_help() -> None:
    assert undocumented(parser(), "quiver") == []


def test_every_proxy_tier_option_has_help() -> None:
    assert undocumented(proxy_tier_parser(), "python -m proxy_tier") == []


def test_the_walk_reaches_every_subcommand() -> None:
    paths = {path for path, _ in walk(parser(), "quiver")}
    assert paths >= {"quiver sender", "quiver enqueue", "quiver config check",
                     "quiver local", "quiver demo"}
    assert {path for path, _ in walk(proxy_tier_parser(), "python -m proxy_tier")} >= {
        "python -m proxy_tier render"}


def test_a_missing_help_is_caught() -> None:
    p = parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices["local"].add_argument("--undocumented")
    assert undocumented(p, "quiver") == ["quiver local: --undocumented"]
