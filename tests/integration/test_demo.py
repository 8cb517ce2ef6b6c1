"""`quiver demo --json`, as the README's first command runs it (with fewer messages):
every outcome shows, the feedback loop closes, and mail to an address that bounced,
complained or unsubscribed comes back `suppressed` without reaching the MX again."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from quiver.devstack.servers.mx_store import read_rcpts

pytestmark = pytest.mark.integration

# 100 messages: two of each scripted mailbox (asyncbounce, complain, unsub, mailunsub,
# permfail).
MESSAGES = 100
TIMEOUT = 600


def test_the_demo_closes_the_feedback_loop(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "quiver", "demo", "--messages", str(MESSAGES), "--json",
         "--dir", str(root)],
        capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    summary = json.loads(done.stdout)
    assert summary["final"] == summary["recipients"]
    assert summary["invalid_event_objects"] == []
    for field in ("delivered", "bounced", "rejected", "async_bounced", "complaints",
                  "unsubscribed", "suppressed"):
        assert summary[field] > 0, (field, summary)
    assert summary["async_bounced"] == summary["complaints"] == 2
    # Two by one-click POST, two by mail to the List-Unsubscribe mailto address.
    assert summary["unsubscribed"] == 4
    assert summary["one_click_posts"] == {"200": 2}
    assert summary["mailto_requests"] == {"250": 2}
    # The second round: each address that bounced hard (2 at RCPT, 2 by DSN),
    # complained or unsubscribed, each `suppressed`.
    assert summary["second_round"] == 10
    assert summary["second_round_not_suppressed"] == []
    assert summary["suppressed"] == 10
    assert summary["intake"] == {"bounce/accepted/hard": 2, "complaint/accepted/trusted_dkim": 2,
                                 "unsubscribe/accepted/unsubscribed": 2}

    # Suppressed means no SMTP attempt: each of those addresses reached the MX's RCPT
    # once, in the first round, never in the second.
    tried = Counter(r["rcpt"].lower() for r in read_rcpts(root / "mx"))
    scripted = [a for a in tried
                if a.split("-")[0] in ("asyncbounce", "complain", "unsub", "mailunsub",
                                       "permfail")]
    assert len(scripted) == 10
    assert all(tried[a] == 1 for a in scripted), tried
