"""Where a recipient's mail goes: MX resolution, destination safety, egress choice."""
