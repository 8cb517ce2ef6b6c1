"""Quiver's infrastructure: one CDK construct per unit, wired into stacks by `app.py`.

Stateful resources (queues, buckets, tables, the sending addresses)
live in `stacks.StatefulStack`, retained and with pinned logical IDs; everything
that can be rebuilt from the repo (network, senders, proxy tier, Lambdas, analytics,
dashboards) lives in `stacks.ServiceStack`. Constructs take keyword-only props and
never read the environment; `app.py` reads CDK context and passes values down.
"""
