"""Where a policy comes from: a file path, or `ssm:<parameter name>` when deployed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from quiver.policy.load import PolicyError, parse_policy
from quiver.policy.model import Policy

SSM_PREFIX = "ssm:"


def read_policy(
    spec: str, *, ssm: Callable[[], Any] | None = None
) -> tuple[Policy, Path, str]:
    """The policy, the directory relative paths in it (key files) resolve against, and
    the text it was parsed from (a reload compares against it)."""
    text = read_policy_text(spec, ssm=ssm)
    base = Path.cwd() if spec.startswith(SSM_PREFIX) else Path(spec).resolve().parent
    return parse_policy(text, origin=spec), base, text


def read_policy_text(spec: str, *, ssm: Callable[[], Any] | None = None) -> str:
    """The policy's TOML text, from the file or the SSM parameter `spec` names."""
    if spec.startswith(SSM_PREFIX):
        name = spec[len(SSM_PREFIX):]
        if ssm is None:
            raise PolicyError(["no SSM client available"], spec)
        try:
            response = ssm().get_parameter(Name=name, WithDecryption=True)
        except Exception as exc:
            raise PolicyError([f"cannot read SSM parameter {name}: {exc}"], spec) from None
        return str(response["Parameter"]["Value"])
    try:
        return Path(spec).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([f"cannot read: {exc.strerror}"], spec) from None
    except UnicodeDecodeError:
        raise PolicyError(["not UTF-8 text"], spec) from None
