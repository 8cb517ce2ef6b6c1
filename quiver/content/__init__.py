"""Message content: what a message must be to be accepted, and rewriting it so it can travel.

    ready = prepare(raw, max_size=policy.content.max_message_size,
                    long_lines=policy.content.long_lines)   # raises ContentError
    ready.message     # CRLF line ends, no line over 998 octets (RFC 5322 2.1.1)
    ready.eight_bit   # BODY=8BITMIME, or seven_bit(ready.message) for servers without it

Pure functions over bytes; the client, the CLI and the sender share them.
"""

from quiver.content.check import (
    DEFAULT_MAX_MESSAGE_SIZE,
    LongLines,
    Ready,
    check_size,
    prepare,
    seven_bit,
)
from quiver.content.errors import ContentError
from quiver.content.lines import MAX_LINE

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE", "MAX_LINE", "ContentError", "LongLines", "Ready", "check_size",
    "prepare", "seven_bit",
]
