"""Bounces: classification of SMTP replies and DSN statuses → {kind, category, reason},
and parsing of inbound bounce mail into failed-recipient reports."""

from quiver.bounce.classify import Classification, Classifier, RulesError, default_classifier
from quiver.bounce.dsn import parse_bounce
from quiver.bounce.dsn_types import (
    BounceReport,
    FailedRecipient,
    Ignored,
    IgnoreReason,
    OriginalMessage,
    ParseResult,
)

__all__ = [
    "BounceReport",
    "Classification",
    "Classifier",
    "FailedRecipient",
    "IgnoreReason",
    "Ignored",
    "OriginalMessage",
    "ParseResult",
    "RulesError",
    "default_classifier",
    "parse_bounce",
]
