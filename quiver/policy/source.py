"""Where a policy comes from: a file path, or `ssm:<parameter name>` when deployed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from quiver.policy.load import PolicyError, parse_policy
from quiver.policy.model import Policy

SSM_PREFIX = "ssm:"


def read_policy(spec: str, *, ssm: Callable[[], Any] | None = None) -> tuple[Policy, Path]:
    """The policy and the directory relative paths in it (key files) resolve against."""
    if spec.startswith(SSM_PREFIX):
        name = spec[len(SSM_PREFIX):]
        if ssm is None:
            raise PolicyError(["no SSM client available"], spec)
        try:
            response = ssm().get_parameter(Name=name, WithDecryption=True)
        except Exception as exc:
            raise PolicyError([f"cannot read SSM parameter {name}: {exc}"], spec) from None
        return parse_policy(response["Parameter"]["Value"], origin=spec), Path.cwd()
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([f"cannot read: {exc.strerror}"], spec) from None
    except UnicodeDecodeError:
        raise PolicyError(["not UTF-8 text"], spec) from None
    return parse_policy(text, origin=spec), path.resolve().parent
