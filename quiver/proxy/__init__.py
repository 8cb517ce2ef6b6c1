"""Operating the HAProxy egress tier from outside the nodes: address blocks, failover."""
