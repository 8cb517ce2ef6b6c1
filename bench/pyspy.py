"""Sampling profile of the sender with py-spy, summarised per function and per activity.

py-spy runs the sender as its child (`py-spy record -- python -m quiver sender ...`)
and samples it from outside without pausing it (--nonblocking), so the sender's
own CPU figure stays honest; py-spy's CPU is its own process's. It samples only
the thread holding the GIL (--gil): on a busy two-core machine a thread that is
runnable but waiting for a core looks "active" to py-spy, so sampling every
non-idle thread would charge waiting time to the thread pool. GIL samples are
the Python side of the CPU; native code that releases the GIL (RSA signing,
hashing) is the measured CPU minus those. The raw output is one line per
distinct stack: `frame;frame;...;leaf count`, each frame `function (path)`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rig import binary

RATE_HZ = 200
_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^()]*)\)$")
_STDLIB = re.compile(r"/lib/python3\.\d+/(?P<rest>.*)$")


def available() -> str | None:
    """py-spy's path, or None (the benchmark then runs without a profile)."""
    import sys

    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else binary("py-spy")


def command(exe: str, *, out: Path) -> list[str]:
    """The prefix that runs a command under py-spy, writing raw stacks to `out`."""
    return [exe, "record", "--nonblocking", "--gil", "--format", "raw", "--nolineno",
            "--rate", str(RATE_HZ), "--output", str(out), "--"]


def short_path(path: str) -> str:
    """site-packages/botocore/client.py → botocore/client.py; stdlib → stdlib/x.py."""
    if "site-packages/" in path:
        return path.rsplit("site-packages/", 1)[1]
    if "/quiver/" in path:
        return "quiver/" + path.rsplit("/quiver/", 1)[1]
    if (m := _STDLIB.search(path)) is not None:
        return "stdlib/" + m["rest"]
    return path


def component(path: str) -> str:
    """The package a frame belongs to: `quiver.dkim`, `botocore`, `stdlib.asyncio`, ..."""
    short = short_path(path)
    parts = short.split("/")
    if parts[0] == "quiver" and len(parts) > 2:
        return f"quiver.{parts[1]}"
    if parts[0] == "quiver":
        return "quiver." + parts[1].removesuffix(".py")
    if parts[0] == "stdlib":
        return "stdlib." + parts[1].removesuffix(".py") if len(parts) > 1 else "stdlib"
    return parts[0].removesuffix(".py")


# What a sample was doing, decided by the frame nearest the leaf whose file matches
# one of these (first matching rule for that frame); samples matching none are the
# event loop's own work (uvloop is C: its socket I/O and callback dispatch show up
# as the frame that runs the loop).
ACTIVITIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("DKIM signing (quiver.dkim)", ("quiver/dkim/",)),
    ("AWS API calls (boto3/botocore/urllib3 on the thread pool)",
     ("botocore/", "boto3/", "urllib3/", "concurrent/futures/", "http/client.py",
      "stdlib/http/", "stdlib/concurrent/")),
    ("SMTP client (quiver.smtp, quiver.scheduler)",
     ("quiver/smtp/", "quiver/scheduler/")),
    ("envelope, events, completion, storage",
     ("quiver/envelope.py", "quiver/events.py", "quiver/sender/complete.py",
      "quiver/storage/", "quiver/message.py", "quiver/addresses.py")),
    ("message lifecycle, intake (quiver.sender)", ("quiver/sender/",)),
    ("DNS and routing", ("quiver/routing/", "dns/")),
    ("metrics (powertools)", ("aws_lambda_powertools/",)),
    ("start-up (imports)", ("<frozen importlib",)),
)
OTHER_ACTIVITY = "event loop (uvloop, asyncio) and other"
# Frames that enclose nearly every sample (process entry, thread and loop runners):
# left out of the inclusive ranking, where they would only crowd out the rest.
WRAPPERS = ("<frozen runpy>", "quiver/__main__.py", "quiver/cli.py", "uvloop/__init__.py",
            "asyncio/runners.py", "threading.py", "concurrent/futures/thread.py")


def activity(paths: list[str]) -> str:
    """The activity of one stack, given its frames' short paths from root to leaf."""
    for path in reversed(paths):
        for name, prefixes in ACTIVITIES:
            if path.startswith(prefixes):
                return name
    return OTHER_ACTIVITY


def _frame(text: str) -> tuple[str, str]:
    m = _FRAME.match(text)
    if m is None:
        return text, ""
    return m["func"], m["path"]


@dataclass
class Profile:
    samples: int = 0
    self_by_function: Counter[str] = field(default_factory=Counter)
    total_by_function: Counter[str] = field(default_factory=Counter)
    total_by_quiver_function: Counter[str] = field(default_factory=Counter)
    self_by_component: Counter[str] = field(default_factory=Counter)
    by_activity: Counter[str] = field(default_factory=Counter)

    def share(self, n: int) -> float:
        return n / self.samples if self.samples else 0.0


def summarise(raw: Path) -> Profile:
    """Self and inclusive sample counts per function, and self counts per component."""
    profile = Profile()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        # py-spy may put a process/thread pseudo-frame first; real frames have a path.
        frames = [f for f in frames if f[1]]
        if not frames:
            continue
        profile.samples += count
        func, path = frames[-1]
        profile.self_by_function[f"{func} ({short_path(path)})"] += count
        profile.self_by_component[component(path)] += count
        profile.by_activity[activity([short_path(p) for _, p in frames])] += count
        for name in {f"{fn} ({short_path(p)})" for fn, p in frames
                     if not short_path(p).endswith(WRAPPERS)}:
            profile.total_by_function[name] += count
            if name.endswith(".py)") and " (quiver/" in name:
                profile.total_by_quiver_function[name] += count
    return profile
