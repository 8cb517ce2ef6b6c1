"""The delivery scheduler: ready queues per (egress source, site), connection reuse,
throttles, backoff. It implements the sender's `Transport` seam."""
