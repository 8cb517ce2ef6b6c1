"""`quiver demo --json`, as the README's first command runs it (with fewer messages):
every outcome shows, the feedback loop closes, and mail to an address that bounced,
complained or unsubscribed comes back `suppressed` without reaching the MX again."""

from __future__ import annotations

from collections import Counter

import pytest
from demo_run import DemoRun

from quiver.devstack.servers.mx_store import read_rcpts

pytestmark = pytest.mark.integration


def test_the_demo_closes_the_feedback_loop(demo: DemoRun) -> None:
    root, summary = demo.root, demo.summary
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


def test_the_demo_keeps_its_events(demo: DemoRun) -> None:
    kept = sorted(demo.kept.rglob("*.jsonl.gz"))
    assert demo.summary["kept"] == {"dir": str(demo.kept), "objects": len(kept),
                                    "bytes": sum(p.stat().st_size for p in kept)}
    assert len(kept) == demo.summary["event_objects"]
    # As the export wrote them: gzip, under the bucket's key layout.
    assert all(p.read_bytes()[:2] == b"\x1f\x8b" for p in kept)
    assert all(p.relative_to(demo.kept).parts[0] == "events" for p in kept)
