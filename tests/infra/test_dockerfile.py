"""The sender image definition: base, non-root user, entrypoint, stop signal, context."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from infra_helpers import ROOT

from cdk.sender_service import BASE_IMAGE_FILE, PINNED_BASE, base_image

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


def test_the_base_is_only_ever_the_pinned_build_argument() -> None:
    """No FROM names an image itself (a tag would build on whatever it points at that
    day); the one FROM takes BASE_IMAGE, which has no default in the Dockerfile."""
    found = instructions()
    assert found[0] == ("ARG", "BASE_IMAGE")
    assert [args for keyword, args in found if keyword == "FROM"] == ["${BASE_IMAGE}"]


def test_the_recorded_base_is_python_311_slim_and_reaches_the_build(synth: Any) -> None:
    reference = (ROOT / BASE_IMAGE_FILE).read_text().strip()
    assert reference == "python:3.11-slim" or PINNED_BASE.match(reference)
    manifest = json.loads((synth.outdir / "QuiverService.assets.json").read_text())
    (image,) = manifest["dockerImages"].values()
    assert image["source"]["dockerBuildArgs"] == {"BASE_IMAGE": reference}


@pytest.mark.parametrize(("reference", "warned"), [
    ("python:3.11-slim", True),
    ("python:3.11-slim@sha256:" + "ab" * 32, False),
])
def test_an_unpinned_base_warns_at_synth(tmp_path: Path, reference: str, warned: bool) -> None:
    from aws_cdk import App, Stack
    from aws_cdk.assertions import Annotations, Match

    (tmp_path / "image").mkdir()
    (tmp_path / BASE_IMAGE_FILE).write_text(reference + "\n")
    stack = Stack(App(), "T")
    assert base_image(tmp_path, scope=stack) == reference
    warnings = Annotations.from_stack(stack).find_warning("*", Match.string_like_regexp(
        "without a digest"))
    assert bool(warnings) is warned


def test_a_base_other_than_python_311_slim_is_refused(tmp_path: Path) -> None:
    from aws_cdk import App, Stack

    (tmp_path / "image").mkdir()
    (tmp_path / BASE_IMAGE_FILE).write_text("python:3.12-slim\n")
    with pytest.raises(ValueError, match=r"expected python:3\.11-slim"):
        base_image(tmp_path, scope=Stack(App(), "T"))


def test_runtime_dependencies_install_from_the_hashed_lock() -> None:
    """Every runtime dependency (pyproject's, transitively, on linux x86_64 3.11) is in
    the lock at the version the tests ran against, each with its file hashes."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from lock_image import runtime_pins

    lock = (ROOT / "image" / "requirements.lock").read_text()
    entries = re.findall(r"^([a-z0-9-]+)==(\S+) \\\n((?:\s+--hash=sha256:[0-9a-f]{64}.*\n)+)",
                         lock, re.MULTILINE)
    locked = {name: version for name, version, _ in entries}
    assert locked == runtime_pins()
    assert all(hashes.count("--hash=sha256:") >= 1 for _, _, hashes in entries)
    run = [args for keyword, args in instructions() if keyword == "RUN"]
    assert any("--require-hashes" in args and "-r requirements.lock" in args
               and "--no-deps ." in args for args in run)


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
    assert "image/requirements.lock ./" in copies


def test_dockerignore_is_an_allow_list() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!quiver/", "!image/requirements.lock"} <= set(lines)
    # The dev stack stays out of the image, and nothing re-admits it after.
    assert "quiver/devstack/" in lines
    assert lines.index("quiver/devstack/") > lines.index("!quiver/")
    assert not [line for line in lines if line.startswith("!") and "devstack" in line]
    assert "!proxy_tier/" not in lines
