"""The sender image definition: base, non-root user, entrypoint, stop signal, context."""

from __future__ import annotations

import json
import tomllib

import pytest
from infra_helpers import ROOT

pytestmark = pytest.mark.infra


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_base_image_is_python_311_slim() -> None:
    assert instructions()[0] == ("FROM", "python:3.11-slim")


def test_runs_as_a_non_root_user() -> None:
    users = [args for keyword, args in instructions() if keyword == "USER"]
    assert users, "no USER: the sender would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert any("useradd" in args and user in args for k, args in instructions() if k == "RUN")


def test_entrypoint_is_the_quiver_cli_and_it_stops_on_sigterm() -> None:
    parsed = dict(instructions())
    assert json.loads(parsed["ENTRYPOINT"]) == ["quiver"]
    assert parsed["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(parsed["CMD"]) == ["sender", "--config", "ssm:/quiver/policy"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "quiver" in scripts


def test_installs_the_package_from_the_repo() -> None:
    copies = [args for keyword, args in instructions() if keyword == "COPY"]
    assert "pyproject.toml README.md ./" in copies
    assert "quiver ./quiver" in copies
    # The sender imports proxy_tier.health to probe the egress nodes.
    assert "proxy_tier ./proxy_tier" in copies
    assert any("pip install" in args and " ." in args for k, args in instructions() if k == "RUN")


def test_dockerignore_is_an_allow_list() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!quiver/", "!proxy_tier/"} <= set(lines)
