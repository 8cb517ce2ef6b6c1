"""The HAProxy egress tier: config rendering from the policy, node bootstrap, health probes."""
