"""The embedded local stack: production code paths, loopback endpoints.

moto's server (AWS over real HTTP), a DNS server answering for the demo domains,
a receiving MX that keeps what it receives, and the event-export handler run
in-process on SQS-shaped events.
"""
