"""`quiver suppression ...` as a user runs it: a child process, the suppression table on
moto's server over HTTP, endpoint and table from the environment `quiver local` prints.
Exit codes: check 0 when suppressed and 1 when not; import 1 with nothing written
when a row is bad; 2 for usage errors."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiver.devstack.moto_server import MotoServer, aws_env, create_resources, start_moto
from quiver.settings import Deployment, deployment_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MotoServer, Deployment]]:
    server = start_moto(log_dir=tmp_path_factory.mktemp("suppression-cli"))
    try:
        yield server, create_resources(server.endpoint)
    finally:
        server.stop()


@pytest.fixture
def quiver(moto: tuple[MotoServer, Deployment], tmp_path: Path):
    server, deployment = moto
    env = {**os.environ, **aws_env(server.endpoint), **deployment_env(deployment)}

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "quiver", "suppression", *args],
                              env=env, cwd=tmp_path, input=stdin, capture_output=True,
                              text=True, timeout=120)
    return run


def test_add_check_remove_with_exit_codes(quiver) -> None:
    added = quiver("add", "Ann@Example.TEST", "--scope", "tenant:acme", "--reason",
                   "unsubscribe", "--source", "ticket 42", "--expires", "30d")
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("added ann@example.test: unsubscribe in scope tenant:acme")
    hit = quiver("check", "ann@example.test", "--tenant", "acme")
    assert hit.returncode == 0, hit.stderr
    assert hit.stdout.startswith("ann@example.test: suppressed: unsubscribe in scope "
                                 "tenant:acme since 20")
    assert " until 20" in hit.stdout and hit.stdout.rstrip().endswith("; source: ticket 42")
    miss = quiver("check", "ann@example.test")  # no tenant: the global scope only
    assert miss.returncode == 1
    assert miss.stdout == "ann@example.test: not suppressed (scopes checked: global)\n"
    assert quiver("remove", "ANN@example.test", "--scope", "tenant:acme").returncode == 0
    assert quiver("check", "ann@example.test", "--tenant", "acme").returncode == 1


def test_usage_errors_exit_2_and_say_what_is_wrong(quiver) -> None:
    bad = quiver("add", "not-an-address")
    assert bad.returncode == 2 and "quiver suppression add: missing '@'" in bad.stderr
    scope = quiver("add", "a@x.test", "--scope", "acme")
    assert scope.returncode == 2 and "expected 'global' or 'tenant:<name>'" in scope.stderr
    expires = quiver("add", "a@x.test", "--expires", "2020-01-01T00:00:00Z")
    assert expires.returncode == 2 and "is in the past" in expires.stderr
    no_table = subprocess.run(
        [sys.executable, "-m", "quiver", "suppression", "check", "a@x.test"],
        env={k: v for k, v in os.environ.items() if k != "QUIVER_SUPPRESSION_TABLE"},
        capture_output=True, text=True, timeout=120)
    assert no_table.returncode == 2 and "no table: pass --table" in no_table.stderr


def test_import_validates_everything_first_then_export_gives_it_back(
        quiver, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("address,scope,reason\nok1@import.test,global,complaint\n"
                   "broken,global,manual\n")
    refused = quiver("import", str(bad))
    assert refused.returncode == 1
    assert "error: line 3: address 'broken': missing '@'" in refused.stderr
    assert "nothing written: 1 invalid rows, 1 valid" in refused.stderr
    assert quiver("check", "ok1@import.test").returncode == 1  # nothing was written

    skipped = quiver("import", str(bad), "--skip-invalid")
    assert skipped.returncode == 0, skipped.stderr
    assert skipped.stdout == "imported 1 entries, 1 invalid rows skipped (listed above)\n"
    assert quiver("check", "ok1@import.test").returncode == 0

    good = ("address,scope,reason,created,expires,source\n"
            + "".join(f"user{i}@IMPORT.test,tenant:team,manual,2026-11-01T00:00:00Z,,crm\n"
                      for i in range(40)))
    piped = quiver("import", "-", stdin=good)
    assert piped.returncode == 0 and piped.stdout == "imported 40 entries\n", piped.stderr
    out = tmp_path / "team.csv"
    exported = quiver("export", "--scope", "tenant:team", "-o", str(out))
    assert exported.returncode == 0 and exported.stderr == "exported 40 entries\n"
    lines = out.read_text().splitlines()
    assert lines[0] == "address,scope,reason,created,expires,source"
    assert sorted(lines[1:]) == sorted(
        f"user{i}@import.test,tenant:team,manual,2026-11-01T00:00:00.000Z,,crm"
        for i in range(40))
    listed = quiver("list", "--scope", "tenant:team")
    assert listed.returncode == 0 and listed.stdout.splitlines()[-1] == "40 entries"
