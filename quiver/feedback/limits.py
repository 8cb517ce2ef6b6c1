"""How much work one inbound feedback report may cost, as named bounds.

A report arrives from the open Internet: anyone can mail the FBL address. Each
bound says why its value is generous for real reports yet keeps one hostile record
from holding a Lambda for long or exhausting its memory. A report over a bound is
ignored with a reason (`too_large`, `too_complex`); the caller keeps the raw object,
so nothing is lost.
"""

from __future__ import annotations

# Real reports carry one original message, and FBL mail is marketing mail: well
# under 1 MiB. 4 MiB leaves room for a large newsletter with images while a
# hostile 10 MB (or 40 MB, SES's cap) record is refused before any parsing.
MAX_REPORT_BYTES = 4 * 1024 * 1024

# An ARF report has three parts (RFC 5965 2); providers add at most a few (a
# JMRP copy wraps one message). Counting stops here, so 10,000 parts cost a scan
# for the first 64 boundaries, not 10,000 part objects.
MAX_PARTS = 64

# Containers nested in containers. An ARF report is flat (depth 1); a forwarded
# or legacy JMRP copy adds one or two levels. The original message's own
# structure is never walked: only its header block is read.
MAX_DEPTH = 4

# Header fields in any one header block (the report's, a part's, the original's).
# Mail that crossed many hops carries a few dozen Received fields; a flood of
# 100,000 one-byte fields is refused before it becomes 100,000 tuples.
MAX_HEADER_FIELDS = 1000

# Bytes of one header block: the same flood written as a few huge fields.
MAX_HEADER_BYTES = 256 * 1024

# Occurrences kept of a repeatable feedback field (Original-Rcpt-To, Reported-URI,
# ...): RFC 5965 3.2 allows many, a report about one message names a handful.
MAX_REPEATED_FIELD = 100

# Characters kept of one field value, and of the human-readable part: enough to
# read them, small enough that an event carrying them stays small.
MAX_VALUE_CHARS = 2048
MAX_HUMAN_TEXT_CHARS = 4096

# DKIM-Signature fields tried on one report: reporters sign once (sometimes twice
# while rotating keys); each try may cost a DNS lookup and an RSA verification.
MAX_DKIM_SIGNATURES = 3
