"""Shared fixtures: one embedded local stack (moto server, DNS, MX, sender) per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from stackrig import Running, running_stack


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_stack(tmp_path_factory.mktemp("quiver-local")) as running:
        yield running
