"""The sender's live status: a snapshot of its scheduler (snapshot.py), the loop's
liveness (liveness.py), the HTTP endpoint serving both (server.py), the record
written with each heartbeat (record.py), and the fleet view that `quiver status`
and `quiver top` build from those records (fleet.py, render.py, top.py,
command.py)."""
