"""Ingress: thin, stateless translators from other protocols onto the outbound queue.

Each answers "accepted" only once the queue client's SendMessage (or spill and
SendMessage) returned, and goes through the same validation as every other client.
"""
