"""Bounce classification: SMTP replies and DSN statuses → {kind, category, reason}.

The parser of inbound bounce mail is quiver.bounce.dsn (parse_bounce); it is not
imported here, so the sender, which needs only the classifier, does not load it."""

from quiver.bounce.classify import Classification, Classifier, RulesError, default_classifier

__all__ = ["Classification", "Classifier", "RulesError", "default_classifier"]
