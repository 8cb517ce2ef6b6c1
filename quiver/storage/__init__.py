"""Storage behind narrow interfaces: queues, event sinks, message bodies.

Each has an AWS implementation and an in-memory one beside it for unit tests.
"""

from quiver.storage.base import BodyStore, EventSink, Outgoing, Queue, Received, StorageError

__all__ = ["BodyStore", "EventSink", "Outgoing", "Queue", "Received", "StorageError"]
