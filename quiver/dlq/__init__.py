"""`quiver dlq show|redrive --queue outbound|events`: what is in a dead-letter queue,
and moving it back to the queue it came from.

`queues` finds a DLQ from its source queue's redrive policy; `describe` reads a
dead-lettered body (an outbound envelope or an event batch) and why it is there;
`show` samples without deleting; `redrive` sends each message back with its body
and attributes unchanged, then deletes it (never the other way round); `command`
is the CLI.
"""
