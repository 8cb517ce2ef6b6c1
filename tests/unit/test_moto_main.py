"""The local moto server's clock swap reads the same time as moto's own clock."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from moto.sqs import models

from quiver.devstack.moto_main import patch_clock


def test_patched_clock_agrees_with_moto_and_keeps_explicit_datetimes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "unix_time", models.unix_time)  # restored after the test
    monkeypatch.setattr(models, "unix_time_millis", models.unix_time_millis)
    original_millis = models.unix_time_millis
    before = original_millis()
    assert patch_clock()
    patched = models.unix_time_millis()
    after = original_millis()
    assert before - 1 <= patched <= after + 1  # milliseconds since the epoch, like moto's
    earlier = time.time()
    now = models.unix_time()
    assert earlier - 0.001 <= now <= time.time() + 0.001  # read between two reads of ours
    moment = datetime(2026, 12, 1, 12, 0, 0)
    assert models.unix_time(moment) == 1796126400.0  # an explicit datetime still converts
    assert models.unix_time_millis(moment) == 1796126400000.0


def test_without_the_clock_functions_it_reports_and_changes_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(models, "unix_time_millis")
    untouched = models.unix_time
    assert not patch_clock()
    assert models.unix_time is untouched
