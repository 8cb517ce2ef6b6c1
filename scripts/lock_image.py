"""Write image/requirements.in: the sender image's runtime dependencies pinned at the
versions installed in this virtualenv (the ones the tests ran against), with every
transitive dependency that applies on the image's platform (linux x86_64, CPython 3.11).

    .venv/bin/python scripts/lock_image.py
    pip-compile --generate-hashes --allow-unsafe --no-emit-index-url \
        --no-emit-find-links -o image/requirements.lock image/requirements.in

(pip-compile comes from pip-tools, installed in a throwaway virtualenv.)
"""

from __future__ import annotations

import importlib.metadata as md
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
# The image: python:3.11-slim on linux/amd64 (cdk/sender_service.py builds it so).
IMAGE_MARKERS = {
    "python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
    "implementation_name": "cpython", "platform_python_implementation": "CPython",
    "extra": "",
}


def runtime_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    pins: dict[str, str] = {}
    while wanted:
        req = wanted.pop()
        if req.marker is not None and not req.marker.evaluate(IMAGE_MARKERS):
            continue
        name = req.name.lower().replace("_", "-")
        if name in pins:
            continue
        dist = md.distribution(req.name)
        pins[name] = dist.version
        wanted += [Requirement(r) for r in dist.requires or ()]
    return dict(sorted(pins.items()))


def main() -> None:
    lines = [f"{name}=={version}" for name, version in runtime_pins().items()]
    header = ("# The sender image's runtime dependencies at the versions in the dev virtualenv;\n"
              "# written by scripts/lock_image.py, hashed into requirements.lock by pip-compile.\n")
    (ROOT / "image" / "requirements.in").write_text(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
