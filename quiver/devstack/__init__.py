"""The dev stack: production code paths on loopback, for `quiver local`, `quiver demo`
and the integration tests. Not part of the sender image.

moto's server (AWS over real HTTP), HAProxy egress nodes rendered by the proxy tier's
own renderer, a DNS server answering for the demo domains, a receiving MX that keeps
what it receives (`servers/`), and the event exporter run in-process on SQS-shaped
events. `processes` holds the one way its server processes start, stop and find ports.
"""
