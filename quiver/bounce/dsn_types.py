"""The typed outcome of parsing one inbound mail on the bounce domain."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from quiver.bounce.classify import Classification


class IgnoreReason(StrEnum):
    AUTO_REPLY = "auto_reply"
    OUT_OF_OFFICE = "out_of_office"
    CHALLENGE_RESPONSE = "challenge_response"
    # Every recipient is only delayed (Action: delayed, "has not yet been delivered"):
    # a failure, if any, comes in a later report.
    DELAY_ONLY = "delay_only"
    NOT_A_BOUNCE = "not_a_bounce"
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    TOO_COMPLEX = "too_complex"


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: IgnoreReason
    detail: str


@dataclass(frozen=True, slots=True)
class OriginalMessage:
    """Headers of the returned original message (message/rfc822 or text/rfc822-headers,
    or the copy a text bounce appends), as far as the report included them."""

    headers: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    @property
    def message_id(self) -> str | None:
        return self.get("Message-ID")

    @property
    def quiver_id(self) -> str | None:
        """The sender's own tracking header (`Quiver-Id`, `X-Quiver-Id`); its signature
        is the caller's to verify."""
        return self.get("Quiver-Id") or self.get("X-Quiver-Id")


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    recipient: str
    action: str
    # RFC 3463 enhanced status ("5.1.1"), from the Status field or the diagnostic.
    status: str | None
    # The remote reply or the MTA's own explanation, unfolded ("smtp; 550 5.1.1 ...").
    diagnostic: str | None
    remote_mta: str | None
    original_recipient: str | None
    classification: Classification


@dataclass(frozen=True, slots=True)
class BounceReport:
    # "rfc3464" or the name of the text format recognised ("exim", "qmail", ...).
    format: str
    recipients: tuple[FailedRecipient, ...]
    reporting_mta: str | None
    # RFC 3461 ENVID the original was sent with (Original-Envelope-Id).
    envelope_id: str | None
    # Where this bounce was delivered (X-Original-To, Delivered-To, Envelope-To, To):
    # the return path the original left with. Its local part carries the VERP token,
    # which this parser extracts and does not verify.
    addressed_to: str | None
    # The original's envelope sender as the reporting MTA recorded it (X-Postfix-Sender,
    # or the returned message's Return-Path).
    original_sender: str | None
    original: OriginalMessage | None

    @property
    def return_path_local(self) -> str | None:
        address = self.addressed_to or self.original_sender
        if not address or "@" not in address:
            return None
        return address.rpartition("@")[0]


ParseResult = BounceReport | Ignored
