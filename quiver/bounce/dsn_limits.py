"""Hard limits on what the bounce parser will read, checked before and while parsing.

The stdlib email package has no limits of its own: it parses whatever it is given,
as deep and as wide as the input goes. Inbound bounce mail is written by anyone who
can reach the bounce domain's MX, so every cost is bounded here and a message over
a bound is answered with a typed "too_large" / "too_complex", never parsed further.
"""

from __future__ import annotations

# SES receiving accepts up to 40 MB; no real DSN comes near 10 MB (the report part is
# a few KB, the returned message is usually truncated or headers-only). Above this the
# message is refused before the email package sees a byte, so parser memory stays a
# small multiple of this figure.
MAX_INPUT_BYTES = 10 * 1024 * 1024

# Lines in the whole message. The email package's cost is per line (several µs each,
# header and continuation lines the most); 10 MB of short lines takes it over 20 s and
# hundreds of MB. 10 MB of 76-column base64 is 135,000 lines, so a real bounce of a
# large original fits.
MAX_LINES = 150_000

# Counted on the raw bytes before parsing (lines starting "Content-Type:"). Every
# nesting level and every MIME part needs one, so this bounds both the parser's work
# and its recursion depth. A bounce of a rich newsletter has a few dozen parts.
MAX_MIME_PARTS = 200

# Per-recipient blocks in one delivery-status part, and recipients reported from one
# message: a list-expansion bounce may name hundreds; more is a flood.
MAX_RECIPIENTS = 1000

# Message objects the email package may create while parsing: one per MIME part, and
# one per field block of a delivery-status part (one per recipient). Enforced as they
# are created, so a flood of parts is refused after this many, not after parsing all.
MAX_PARSED_MESSAGES = MAX_MIME_PARTS + MAX_RECIPIENTS + 2

# The report and the returned message sit at depth 1-5; deeper nesting is built to
# exhaust a recursive walker, not to report a delivery.
MAX_NESTING_DEPTH = 16

# Top-level header block: a bounce carries a dozen fields and a Received chain. A
# header flood is refused before parsing rather than indexed by the email package.
MAX_TOP_HEADER_LINES = 1000
MAX_TOP_HEADER_BYTES = 512 * 1024

# Fields in any one MIME part's header block (the returned original included): the
# same bound as the top-level block, so whatever passes the pre-parse check passes here.
MAX_PART_FIELDS = MAX_TOP_HEADER_LINES

# Text decoded for analysis: per part and in total. Diagnostics are at the top of a
# report; past these budgets the rest is not decoded (the report is still parsed from
# what was read).
MAX_TEXT_PER_PART = 256 * 1024
MAX_DECODED_TOTAL = 2 * 1024 * 1024

# Lines longer than this are cut before line-oriented matching, so no pattern ever
# scans a megabyte-long line.
MAX_LINE_CHARS = 2000

# Headers kept from the returned original message (its Received chain can be long;
# the identifiers the caller needs are among the first fields).
MAX_ORIGINAL_FIELDS = 200
MAX_FIELD_CHARS = 2000
