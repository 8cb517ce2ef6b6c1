"""SMTP replies as events carry them: `{code, enhanced, text}`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypedDict

# Reply text from a remote server ends up in events and logs: bound it, and keep
# control characters out so a hostile server cannot forge log lines.
MAX_TEXT = 512
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class Response(TypedDict):
    """A reply as an event's `response` field carries it (quiver.events)."""

    code: int
    enhanced: str | None
    text: str


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str | None
    text: str

    @property
    def positive(self) -> bool:
        # 2xx only: a 3xx (354) asks for more and never means a message was taken.
        return 200 <= self.code < 300

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def as_event(self) -> Response:
        return {"code": self.code, "enhanced": self.enhanced, "text": self.text}

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced + ' ' if self.enhanced else ''}{self.text}"


def parse_reply(code: int, message: str) -> Reply:
    """Split an enhanced status code (RFC 3463) off the text; clean and bound the text."""
    text = _CONTROL.sub(" ", message).strip()
    enhanced = None
    if (m := _ENHANCED.match(text)) and m.group(1) == str(code)[0]:
        enhanced = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
        text = text[m.end():]
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 3] + "..."
    return Reply(code=code, enhanced=enhanced, text=text)


def local_reply(code: int, enhanced: str, text: str) -> Reply:
    """A reply made by quiver itself (connection failures, DNS, policy)."""
    return parse_reply(code, f"{enhanced} {text}")
