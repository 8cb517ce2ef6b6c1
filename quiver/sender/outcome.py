"""What happened to one recipient in one attempt, as the lifecycle needs it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quiver.smtp.reply import Reply


@dataclass(frozen=True, slots=True)
class Attempt:
    rcpt: str
    reply: Reply
    source: str | None = None
    source_ip: str | None = None
    proxy: str | None = None
    mx: str | None = None
    mx_ip: str | None = None
    site: str | None = None
    provider: str | None = None
    tls: str | None = None
    # False when the failure was not the recipient's (connection-level): the
    # attempt is not counted against the message.
    counts: bool = True

    def delivery_fields(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "source_ip": self.source_ip,
            "proxy": self.proxy,
            "mx": self.mx,
            "mx_ip": self.mx_ip,
            "site": self.site,
            "provider": self.provider,
            "response": self.reply.as_event(),
            "tls": self.tls,
        }
