"""How the local stack starts its server processes.

Each runs in a session of its own, so a Ctrl-C in the terminal reaches only the
command that started them, which then stops them in order (the export pump
before moto, the sender before the MX). And each is asked to terminate if its
parent dies, so a killed `quiver local` leaves no servers behind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys
from typing import Any

_PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    # Runs in the child between fork and exec: only async-signal-safe work here.
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def child_process_options() -> dict[str, Any]:
    """Keyword arguments for subprocess.Popen for a local server process."""
    options: dict[str, Any] = {"start_new_session": True}
    if sys.platform.startswith("linux"):
        options["preexec_fn"] = _terminate_with_parent
    return options
