"""The SMTP listener's counts, written as EMF lines (quiver.emf) once a minute.

The alarms (cdk/smtp_ingress.py) watch `smtp_auth_refused` and the reply classes;
the scaling policy tracks `smtp_connections` per task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TextIO

from quiver import emf

DIMENSIONS: Final = {"Service": "smtp-ingress"}
AUTH_REFUSED: Final = "smtp_auth_refused"
REPLIES_4XX: Final = "smtp_replies_4xx"
REPLIES_5XX: Final = "smtp_replies_5xx"
ACCEPTED: Final = "smtp_accepted"
CONNECTIONS: Final = "smtp_connections"


@dataclass(slots=True)
class SmtpCounts:
    auth_refused: int = 0
    replies_4xx: int = 0
    replies_5xx: int = 0
    accepted: int = 0
    connections: int = 0  # open now (a gauge)

    def reply(self, line: str) -> None:
        """Count one reply by its class (the first line of a multi-line reply counts)."""
        first = line[:1]
        if first == "4":
            self.replies_4xx += 1
        elif first == "5":
            self.replies_5xx += 1

    def flush(self, out: TextIO, *, at_ms: int) -> None:
        """Write this interval's counts and the connection gauge; counts start again."""
        emf.write(out, [emf.document(at_ms=at_ms, dimensions=DIMENSIONS, values={
            AUTH_REFUSED: (self.auth_refused, emf.COUNT),
            REPLIES_4XX: (self.replies_4xx, emf.COUNT),
            REPLIES_5XX: (self.replies_5xx, emf.COUNT),
            ACCEPTED: (self.accepted, emf.COUNT),
            CONNECTIONS: (self.connections, emf.NONE),
        })])
        out.flush()
        self.auth_refused = self.replies_4xx = self.replies_5xx = self.accepted = 0
