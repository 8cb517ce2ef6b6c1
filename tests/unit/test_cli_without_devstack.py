"""In the sender image the dev stack is left out: `quiver demo` and `quiver local` say so."""

from __future__ import annotations

import sys

import pytest

from quiver import cli


@pytest.mark.parametrize("command", [["demo"], ["local"]])
def test_a_missing_dev_stack_is_a_clear_error_not_a_traceback(
        command: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # None in sys.modules makes every import of the package fail as if it were absent.
    for name in [m for m in sys.modules if m.startswith("quiver.devstack")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "quiver.devstack", None)
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert f"`quiver {command[0]}` needs the dev stack" in err
    assert "scripts/setup.sh" in err
