"""What the session's one `quiver demo --keep` run left (tests/integration/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DemoRun:
    root: Path
    kept: Path
    summary: dict[str, Any]
