"""A policy fragment merged over the local stack's generated policy (`quiver local --policy`).

The merge goes table by table: a table in the fragment merges into the generated
table of the same name, key by key and recursively, so `[retry] max_age = "60s"`
changes that one key and keeps the rest of [retry]. Any other value replaces the
generated one, and that includes arrays of tables: a fragment's `[[throttles]]`
(or `[[dkim]]`) list replaces the generated list whole. Appending would look
friendlier but mislead: throttle ties go to the earlier rule in the file, so a
fragment's rule of the same specificity as the generated catch-all would silently
lose to it. Replaced, the fragment's list is exactly the rules in force.

The result is validated as any policy is, and its problems name their paths.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from quiver.policy import PolicyError, build_policy


def read_fragment(path: str | Path) -> dict[str, Any]:
    """The fragment's TOML data; PolicyError (naming the file) if it cannot be read."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError([f"cannot read: {exc.strerror}"], str(path)) from None
    except UnicodeDecodeError:
        raise PolicyError(["not UTF-8 text"], str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError([f"not valid TOML: {exc}"], str(path)) from None


def merge(base: Mapping[str, Any], fragment: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `fragment` merged over it (neither is modified)."""
    out = dict(base)
    for key, value in fragment.items():
        current = out.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            out[key] = merge(current, value)
        else:
            out[key] = value
    return out


def merged_policy_text(base_text: str, fragment: Mapping[str, Any], *, origin: str) -> str:
    """The policy file `base_text` with `fragment` merged over it, validated.

    Raises PolicyError whose problems name each path; `origin` says where they come
    from (the fragment's file). The text is TOML without the generated comments.
    """
    data = merge(tomllib.loads(base_text), fragment)
    build_policy(data, origin=f"{origin} (merged over the local stack's policy)")
    return (
        f"# Written by the local stack: its generated policy with {origin} merged over\n"
        "# it (tables key by key, arrays replaced); regenerated on every start.\n"
        + tomli_w.dumps(data)
    )
