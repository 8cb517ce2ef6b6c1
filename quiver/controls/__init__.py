"""Operator controls: pause, admin bounce and the emergency stop, cluster-wide.

`model` (what a control is), `active` (a sender's in-memory set and how mail is
matched against it), `poller` (keeps that set current from the controls table),
`command` (`quiver ctl`). The store is quiver.storage's `ControlStore`.
"""

from quiver.controls.model import (
    FIELDS,
    KINDS,
    Control,
    ControlError,
    Kind,
    Selector,
)

__all__ = ["FIELDS", "KINDS", "Control", "ControlError", "Kind", "Selector"]
