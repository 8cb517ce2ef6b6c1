"""The status options of `quiver sender`, `quiver status` and `quiver top`: defaults,
the environment, and clear usage errors for bad values."""

from __future__ import annotations

import pytest

from quiver.cli import main, parser


def sender_args(*extra: str) -> object:
    return parser().parse_args(["sender", "--config", "p.toml", *extra])


def test_the_sender_serves_status_on_8080_on_loopback_by_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUIVER_STATUS_PORT", raising=False)
    monkeypatch.delenv("QUIVER_STATUS_BIND", raising=False)
    args = sender_args()
    assert (args.status_port, args.status_bind, args.loop_stall) == (8080, "127.0.0.1", 30.0)


def test_the_environment_and_the_flags_choose_the_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUIVER_STATUS_PORT", "9090")
    monkeypatch.setenv("QUIVER_STATUS_BIND", "0.0.0.0")
    args = sender_args()
    assert (args.status_port, args.status_bind) == (9090, "0.0.0.0")
    assert sender_args("--status-port", "off").status_port is None
    assert sender_args("--status-port", "0").status_port == 0
    assert sender_args("--loop-stall", "2m").loop_stall == 120.0


@pytest.mark.parametrize(("flags", "message"), [
    (["--status-port", "http"], "--status-port: expected a port 0-65535"),
    (["--status-port", "70000"], "--status-port: expected a port 0-65535"),
    (["--loop-stall", "2s"], "--loop-stall: expected at least 5s"),
    (["--loop-stall", "soon"], "--loop-stall:"),
])
def test_bad_values_are_usage_errors(flags: list[str], message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        sender_args(*flags)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_port_in_the_environment_is_a_usage_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("QUIVER_STATUS_PORT", "eighty")
    with pytest.raises(SystemExit):
        sender_args()
    assert "expected a port 0-65535 (0: any free one) or 'off', got 'eighty'" in \
        capsys.readouterr().err


@pytest.mark.parametrize("command", [["status"], ["top", "--iterations", "1"]])
def test_status_and_top_need_the_senders_table(
        command: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("QUIVER_SENDERS_TABLE", raising=False)
    assert main(command) == 2
    assert "no table: pass --table or set QUIVER_SENDERS_TABLE" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--iterations", "0"], "--iterations must be at least 1"),
    (["--interval", "0"], "--interval must be above 0 and below an hour"),
    (["--interval", "inf"], "--interval must be above 0 and below an hour"),
    (["--interval", "nan"], "--interval must be above 0 and below an hour"),
])
def test_top_refuses_bounds_that_make_no_sense(
        flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", "--table", "t", *flags]) == 2
    assert message in capsys.readouterr().err


def test_status_refuses_a_limit_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--table", "t", "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err
