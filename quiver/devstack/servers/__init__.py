"""Local servers on loopback for the embedded stack and the integration tests.

A DNS server answering for the demo zones (dnsmasq when installed, a builtin
responder otherwise), a receiving MX that keeps what it receives and scripts
faults by recipient local part, and a local CA issuing certificates for it.
"""
