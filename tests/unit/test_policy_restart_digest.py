"""restart_digest changes exactly when a new text has a change that waits for a
restart (merge_live's verdict), and not for comments, layout or live sections."""

from __future__ import annotations

import pytest

from quiver.policy import parse_policy
from quiver.policy.reload import merge_live, restart_digest

BASE = """
default_pool = "p"
[delivery]
ehlo = "mta.example.test"
pipeline_next = true
[sources.a]
ip = "192.0.2.10"
ehlo = "a.example.test"
[sources.b]
ip = "192.0.2.11"
ehlo = "b.example.test"
[pools.p]
sources = ["a", "b"]
[providers]
google = ["*.google.com"]
[retry]
first = "5m"
[tls]
default = "opportunistic"
[suppression]
on_error = "defer"
[[throttles]]
source = "*"
max_connections = 3
"""

EDITS = [
    # (old, new, needs a restart)
    ("max_connections = 3", "max_connections = 1", False),
    ('first = "5m"', 'first = "1m"', False),
    ('default = "opportunistic"', 'default = "verify"', False),
    ('on_error = "defer"', 'on_error = "send"', False),
    ("pipeline_next = true", "pipeline_next = false", False),
    ('ip = "192.0.2.11"', 'ip = "192.0.2.12"', True),
    ('sources = ["a", "b"]', 'sources = ["a"]', True),
    ('ehlo = "mta.example.test"', 'ehlo = "mta2.example.test"', True),
    ('google = ["*.google.com"]', 'google = ["*.google.com", "*.1e100.net"]', True),
    ("[[throttles]]", '[intake]\ndrain_deadline = "90s"\n[[throttles]]', True),
    ("[[throttles]]", '[[dkim]]\ndomain = "example.test"\nselector = "s1"\n'
     'key_file = "k.pem"\n[[throttles]]', True),
]


@pytest.mark.parametrize(("old", "new", "restart"), EDITS)
def test_the_digest_changes_exactly_when_merge_live_needs_a_restart(
    old: str, new: str, restart: bool,
) -> None:
    assert old in BASE
    text = BASE.replace(old, new, 1)
    _, change = merge_live(parse_policy(BASE), parse_policy(text))
    assert bool(change.restart) is restart
    assert (restart_digest(text) != restart_digest(BASE)) is restart


def test_comments_layout_and_key_order_do_not_change_it() -> None:
    moved = BASE.replace('[sources.a]\nip = "192.0.2.10"\nehlo = "a.example.test"\n', "")
    moved += '\n# the first source\n[sources.a]\nehlo   =   "a.example.test"\nip = "192.0.2.10"\n'
    assert parse_policy(moved).sources.keys() == parse_policy(BASE).sources.keys()
    assert restart_digest(moved) == restart_digest(BASE)
