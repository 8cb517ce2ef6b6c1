"""The signal a proxy node's bootstrap sends its deploy's wait condition: the JSON
body CloudFormation reads, what a failure reports, and bounded retries. Bash runs the
rendered text; `curl` and `sleep` are shell functions standing in for the network and
the clock, so nothing leaves the process and nothing waits."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_tier.bootstrap import (
    SIGNAL_ATTEMPTS,
    SIGNAL_REASON_MAX,
    SIGNAL_URL_BUDGET,
    SIGNAL_URL_STAND_IN,
    USER_DATA_LIMIT,
    render_ready_check,
    render_user_data,
    signal_functions,
)
from proxy_tier.render import RenderError
from quiver.policy import Policy, load_policy

REPO = Path(__file__).resolve().parents[2]
URL = "https://cloudformation-waitcondition-us-east-1.s3.amazonaws.com/arn%3Aaws/x?X-Amz-Signature=ab"
# Stand-ins exported into the script's bash: the health check answers or not as
# HEALTH says, each PUT's body is appended to $OUT (and fails if PUT_FAILS is set),
# each pause is counted in $OUT.sleeps instead of taken.
FAKES = r"""
curl() {
  local arg
  for arg; do
    case "$arg" in
      */health) [ "$HEALTH" = up ]; return;;
    esac
  done
  printf '%s\n' "${@: -2:1}" >> "$OUT"
  [ -z "${PUT_FAILS:-}" ]
}
sleep() { echo "$1" >> "$OUT.sleeps"; }
export -f curl sleep
"""


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(REPO / "policy" / "quiver.toml")


def body_of(reason: str, *, locale: str = "C") -> dict[str, str]:
    script = signal_functions("egress-a") + 'signal_body SUCCESS "$1"\n'
    result = subprocess.run(["bash", "-c", script, "test", reason], capture_output=True,
                            text=True, timeout=30, check=True, env={"LC_ALL": locale})
    parsed: dict[str, str] = json.loads(result.stdout)
    return parsed


@settings(max_examples=60, deadline=None)
# Surrogates cannot be encoded, so no process argument can carry one.
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                      blacklist_characters="\x00"), max_size=300))
def test_any_reason_gives_a_json_body_with_its_printable_start(reason: str) -> None:
    body = body_of(reason)
    assert set(body) == {"Status", "Reason", "UniqueId", "Data"}
    assert body["Status"] == "SUCCESS" and body["UniqueId"] == "egress-a"
    # In the C locale bash cuts bytes; then all but printable ASCII is dropped.
    kept = bytes(b for b in reason.encode()[:SIGNAL_REASON_MAX] if 0x20 <= b <= 0x7E)
    assert body["Reason"] == body["Data"] == kept.decode()


def test_quotes_backslashes_and_control_characters_stay_inside_the_string() -> None:
    reason = 'exit 1 at: grep -F " $1/" \\ "\\\\" \t\r\n{"Status":"SUCCESS"}'
    assert body_of(reason)["Reason"] == 'exit 1 at: grep -F " $1/" \\ "\\\\" {"Status":"SUCCESS"}'
    # A UTF-8 locale counts characters, not bytes: still one valid document.
    assert body_of("ü" * 300, locale="C.UTF-8")["Reason"] == ""


def run_check(script: str, tmp_path: Path, **env: str) -> tuple[int, list[dict[str, str]], str]:
    path, out = tmp_path / "ready.sh", tmp_path / "signals"
    path.write_text(script)
    result = subprocess.run(
        ["bash", "-c", FAKES + f'bash "{path}"'], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "OUT": str(out), **env},
    )
    bodies = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return result.returncode, bodies, result.stdout + result.stderr


def test_a_healthy_node_signals_success_once(policy: Policy, tmp_path: Path) -> None:
    script = render_ready_check(policy, "egress-b", signal_url=URL, health_attempts=3)
    code, bodies, output = run_check(script, tmp_path, HEALTH="up")
    assert code == 0, output
    assert bodies == [{"Status": "SUCCESS", "UniqueId": "egress-b",
                       "Reason": "node egress-b: HAProxy answers http://10.60.1.10:8500/health",
                       "Data": "node egress-b: HAProxy answers http://10.60.1.10:8500/health"}]


def test_an_unhealthy_node_signals_failure_with_the_reason(
    policy: Policy, tmp_path: Path,
) -> None:
    script = render_ready_check(policy, "egress-b", signal_url=URL, health_attempts=3)
    code, bodies, _ = run_check(script, tmp_path, HEALTH="down")
    assert code == 1
    ((body),) = bodies
    assert body["Status"] == "FAILURE"
    assert body["Reason"] == "node egress-b: HAProxy does not answer http://10.60.1.10:8500/health"
    # Three checks, two pauses between them.
    assert (tmp_path / "signals.sleeps").read_text().split() == ["2", "2"]


def test_a_failing_step_signals_failure_naming_the_command(
    policy: Policy, tmp_path: Path,
) -> None:
    script = render_ready_check(policy, "egress-a", signal_url=URL)
    gate = "# Signal success only once"
    failing = script.replace(gate, 'haproxy-missing -c -q -f "$new"\n' + gate)
    code, bodies, _ = run_check(failing, tmp_path, HEALTH="up")
    assert code == 127
    assert [b["Status"] for b in bodies] == ["FAILURE"]
    assert bodies[0]["Reason"] == 'node egress-a: exit 127 at: haproxy-missing -c -q -f "$new"'


def test_a_put_that_keeps_failing_is_retried_a_bounded_number_of_times(
    policy: Policy, tmp_path: Path,
) -> None:
    script = render_ready_check(policy, "egress-a", signal_url=URL)
    code, bodies, output = run_check(script, tmp_path, HEALTH="up", PUT_FAILS="1")
    # A later boot finds no deploy waiting: the node still comes up.
    assert code == 0
    assert [b["Status"] for b in bodies] == ["SUCCESS"] * SIGNAL_ATTEMPTS
    assert len((tmp_path / "signals.sleeps").read_text().split()) == SIGNAL_ATTEMPTS - 1
    assert "could not signal SUCCESS" in output


def test_the_bootstrap_runs_the_ready_check_text_verbatim(policy: Policy) -> None:
    check = render_ready_check(policy, "egress-c", signal_url=URL)
    script = render_user_data(policy, "egress-c", signal_url=URL, log_group="/quiver/x")
    prologue, gate = check.split("# Signal success only once", 1)
    prologue = prologue.removeprefix("#!/bin/bash\n")
    assert prologue in script
    assert script.endswith("# Signal success only once" + gate
                           + 'echo "quiver: egress node egress-c ready"\n')
    assert script.index("systemctl start haproxy") < script.index("signal_ready SUCCESS")


@pytest.mark.parametrize("url", ["", "https://x/a b", "https://x/'; reboot; '", "https://x/\n"])
def test_a_url_the_script_cannot_quote_is_refused(policy: Policy, url: str) -> None:
    with pytest.raises(RenderError, match="signal URL"):
        render_user_data(policy, "egress-a", signal_url=url)


def test_user_data_is_sized_with_the_url_at_its_largest(policy: Policy) -> None:
    short = render_user_data(policy, "egress-a", signal_url=URL)
    longest = render_user_data(policy, "egress-a", signal_url=SIGNAL_URL_STAND_IN)
    assert len(SIGNAL_URL_STAND_IN) == SIGNAL_URL_BUDGET
    assert len(longest) - len(short) == SIGNAL_URL_BUDGET - len(URL)
    assert len(longest.encode()) <= USER_DATA_LIMIT
    with pytest.raises(RenderError, match="over the 2048"):
        render_user_data(policy, "egress-a", signal_url=SIGNAL_URL_STAND_IN + "x")


def test_the_deployed_bootstrap_is_valid_bash(policy: Policy, tmp_path: Path) -> None:
    for node in policy.proxy.nodes:
        path = tmp_path / f"{node}.sh"
        path.write_text(render_user_data(policy, node, signal_url=URL, log_group="/quiver/x"))
        subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)
