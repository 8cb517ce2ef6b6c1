"""The end-to-end benchmark runs, prints one JSON line with sane figures, and cleans up.

Asserts nothing about speed: the figures only have to be present and plausible.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench" / "e2e.py"
KEYS = ("sender_cpu_us_per_msg", "quiver_msgs_per_s", "postfix_msgs_per_s", "ratio_vs_postfix",
        "latency_p50_ms", "latency_p99_ms", "peak_rss_mb", "moto_cpu_share",
        "postfix_cpu_us_per_msg", "per_run", "runs", "cpu_ratio_vs_postfix",
        "overhead_per_rsa_sign", "per_run_ratios", "per_run_rsa_sign_us", "rsa_path",
        "sender_without_rsa_budget_us")
MESSAGES = 200
LATENCY_MESSAGES = 10


def installed(name: str) -> bool:
    return bool(shutil.which(name) or shutil.which(name, path="/usr/sbin"))


def bench_json(script: str, *args: str, timeout: float) -> dict[str, Any]:
    """Run bench/<script> with `args`; it must succeed and end with one JSON line."""
    done = subprocess.run([sys.executable, str(BENCH.parent / script), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


def shm_is_tmpfs() -> bool:
    mounts = Path("/proc/mounts").read_text().splitlines()
    return any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in mounts)


def mentions(pid: str, text: bytes) -> bool:
    """Whether a live process's command line or environment names `text`."""
    for part in ("cmdline", "environ"):
        try:
            if text in Path(f"/proc/{pid}/{part}").read_bytes():
                return True
        except OSError:
            continue
    return False


@pytest.mark.skipif(not installed("smtp-sink"), reason="smtp-sink is not installed (postfix)")
def test_e2e_bench_prints_one_json_line_of_sane_figures_and_cleans_up() -> None:
    queues_before = set(Path("/dev/shm").glob("quiver-bench-postfix-*"))
    done = subprocess.run(
        [sys.executable, str(BENCH), "--messages", str(MESSAGES), "--runs", "1",
         "--latency-messages", str(LATENCY_MESSAGES), "--latency-rate", "20", "--json"],
        capture_output=True, text=True, timeout=280, check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout[-2000:]
    data = json.loads(lines[0])
    for key in KEYS:
        assert key in data, key

    # Every message reached the sink, and the sender accounted for each of them.
    assert data["runs"] == 1 and data["complete_runs"]["quiver"] == 1
    stats = data["sender_stats"]
    assert stats["completed"] >= MESSAGES + LATENCY_MESSAGES
    assert stats["returned"] == 0
    assert data["sender_exit"] == 0
    assert data["latency_delivered"] == LATENCY_MESSAGES

    assert data["sender_cpu_us_per_msg"] > 0
    assert data["rsa_sign_us"] > 0 and data["sender_cpu_us_per_msg_without_rsa"] is not None
    assert data["rsa_path"] in ("avx512ifma", "generic")
    # One run: the median of the per-run ratio is that run's, from its own figures.
    run = data["per_run"]["quiver"][0]
    (rsa,) = data["per_run_rsa_sign_us"]
    sender_us = run["sender_cpu_s"] / run["messages"] * 1e6
    assert data["overhead_per_rsa_sign"] == pytest.approx((sender_us - rsa) / rsa, abs=0.01)
    assert data["quiver_msgs_per_s"] > 0
    assert 0 < data["moto_cpu_share"] < 1
    assert 0 < data["latency_p50_ms"] <= data["latency_p99_ms"]
    assert 10 < data["peak_rss_mb"] < 4096
    assert data["settings"]["verify_tls"] is False

    if data["postfix_skipped"] is None:
        assert data["complete_runs"]["postfix"] == 1
        assert data["postfix_msgs_per_s"] > 0 and data["postfix_cpu_us_per_msg"] > 0
        assert data["ratio_vs_postfix"] == pytest.approx(
            data["quiver_msgs_per_s"] / data["postfix_msgs_per_s"], rel=0.01)
        # Postfix's queue is on tmpfs (its fastest setting) wherever /dev/shm is one.
        assert data["postfix_queue"] == ("tmpfs" if shm_is_tmpfs() else "disk")
        postfix = data["per_run"]["postfix"][0]
        postfix_us = postfix["postfix_cpu_s"] / postfix["messages"] * 1e6
        assert data["cpu_ratio_vs_postfix"] == pytest.approx(sender_us / postfix_us, abs=0.01)
        # Both targets' room for the sender besides its signature, from the same figures
        # (per_run rounds CPU seconds to the millisecond: 2.5 µs a message at 200).
        assert data["sender_without_rsa_budget_us"] == pytest.approx(
            min(0.6 * rsa, 0.5 * postfix_us - rsa), abs=2)
    else:
        assert os.geteuid() != 0 or not installed("postfix"), data["postfix_skipped"]
        assert data["ratio_vs_postfix"] is None
        assert data["cpu_ratio_vs_postfix"] is None
        assert data["sender_without_rsa_budget_us"] is None

    # Nothing left behind: the work directory is gone and no process still uses it.
    work = data["work_dir"]
    assert work and not Path(work).exists()
    leftovers = [pid for pid in os.listdir("/proc")
                 if pid.isdigit() and mentions(pid, work.encode())]
    assert leftovers == []
    # Postfix's queue on tmpfs is removed too.
    assert set(Path("/dev/shm").glob("quiver-bench-postfix-*")) <= queues_before


@pytest.mark.skipif(not installed("smtp-sink"), reason="smtp-sink is not installed (postfix)")
@pytest.mark.parametrize(("threads", "adaptive"), [(0, "off"), (1, "on")])
def test_sender_cpu_bench_prints_its_figures(threads: int, adaptive: str) -> None:
    data = bench_json("sender_cpu.py", "--messages", "300", "--runs", "1", "--signing-threads",
                      str(threads), "--adaptive", adaptive, "--json", timeout=200)
    assert data["signing_threads"] == threads and data["runs"] == 1
    assert data["adaptive"] == adaptive
    assert data["sender_cpu_us_per_msg"] > 0 and data["rsa_sign_us"] > 0
    assert data["msgs_per_s"] > 0 and data["event_batches_sent"] > 0
    assert data["rsa_path"] in ("avx512ifma", "generic")
    # The event loop's process alone: part of the sender's CPU, never more (inline or
    # threaded signing, the two are the same process's clock read a moment apart).
    assert 0 < data["main_process_cpu_us_per_msg"] <= data["sender_cpu_us_per_msg"] + 5


def python_headers() -> bool:
    return (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()


@pytest.mark.skipif(not installed("smtp-sink"), reason="smtp-sink is not installed (postfix)")
@pytest.mark.skipif(not (installed("gcc") and python_headers()),
                    reason="no C compiler or Python headers for mypyc (scripts/setup.sh)")
@pytest.mark.timeout(660)  # a cold mypy check and a C build first: beyond the suite's 300 s
def test_compiled_bench_runs_the_sender_on_the_compiled_copy() -> None:
    data = bench_json("compiled.py", "--modules", "quiver/dkim/canon.py", "--messages", "200",
                      "--runs", "1", "--rounds", "1", "--json", timeout=600)
    assert data["modules"] == 1 and data["rounds"] == 1 and len(data["per_round"]) == 1
    one = data["per_round"][0]
    assert one["interpreted_main_us_per_msg"] > 0 and one["compiled_main_us_per_msg"] > 0
    assert data["compiled_per_interpreted"] == pytest.approx(
        one["compiled_main_us_per_msg"] / one["interpreted_main_us_per_msg"], abs=0.01)
    assert data["rsa_path"] in ("avx512ifma", "generic")


def test_round_trips_bench_counts_one_round_trip_per_message_with_pipeline_next() -> None:
    data = bench_json("round_trips.py", "--rtt", "5", "--messages", "30", "--connections", "1",
                      "--runs", "1", "--json", timeout=120)
    # Counted by the MX, not timed: the first envelope goes alone, every later one
    # behind the body before it; one at a time, each message takes two.
    assert data["round_trips_per_msg_pipeline_next_off"] == 2.0
    assert data["round_trips_per_msg_pipeline_next_on"] <= 1.1
    assert data["msgs_per_s_pipeline_next_on"] > 0 and data["ratio_on_vs_off"] > 0


@pytest.mark.skipif(not installed("smtp-sink"), reason="smtp-sink is not installed (postfix)")
def test_python_floor_bench_sets_the_floor_beside_the_sender() -> None:
    data = bench_json("python_floor.py", "--messages", "200", "--rounds", "1", "--connections",
                      "2", "--signing-threads", "0", "--json", timeout=200)
    assert data["rounds"] == 1 and len(data["per_round"]) == 1
    assert data["signing_threads"] == 0  # as the sender reported it ran
    # Both sides delivered all 200 (each raises otherwise) and were measured.
    assert data["floor_us_per_msg"] > 0 and data["sender_us_per_msg"] > 0
    assert data["rsa_sign_us"] > 0 and data["floor_msgs_per_s"] > 0
    assert data["rsa_path"] in ("avx512ifma", "generic")
    # A ratio is its round's two figures (printed rounded to 0.1 µs) divided.
    one = data["per_round"][0]
    assert data["floor_per_rsa_sign"] == pytest.approx(
        one["floor_us_per_msg"] / one["rsa_sign_us"], abs=0.01)
    assert data["sender_without_rsa_per_floor"] == pytest.approx(
        one["sender_us_without_rsa"] / one["floor_us_per_msg"], abs=0.01)


def test_rsa_beside_bench_measures_each_setting_against_alone() -> None:
    data = bench_json("rsa_beside.py", "--signatures", "10", "--rounds", "1", "--json",
                      timeout=200)
    assert data["alone_vs_alone"] == 1.0 and data["rounds"] == 1
    for key in ("python_thread", "C_thread_without_the_GIL", "python_process"):
        # One round: its ratio is its figure over that round's "alone" (both rounded).
        assert data[f"{key}_us"] > 0
        assert data[f"{key}_vs_alone"] == pytest.approx(
            data[f"{key}_us"] / data["alone_us"], rel=0.01)
