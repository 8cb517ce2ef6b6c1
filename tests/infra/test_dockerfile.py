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
    # The sender needs nothing from the proxy tier (its health probe is quiver's own).
    assert not [c for c in copies if "proxy_tier" in c]
    assert any("pip install" in args and " ." in args for k, args in instructions() if k == "RUN")


def test_dockerignore_is_an_allow_list() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!quiver/"} <= set(lines)
    # The dev stack stays out of the image, and nothing re-admits it after.
    assert "quiver/devstack/" in lines
    assert lines.index("quiver/devstack/") > lines.index("!quiver/")
    assert not [line for line in lines if line.startswith("!") and "devstack" in line]
    assert "!proxy_tier/" not in lines
