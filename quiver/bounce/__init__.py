"""Bounce classification: SMTP replies and DSN statuses → {kind, category, reason}."""

from quiver.bounce.classify import Classification, Classifier, RulesError, default_classifier

__all__ = ["Classification", "Classifier", "RulesError", "default_classifier"]
