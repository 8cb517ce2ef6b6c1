"""Inbound mail intake: bounces (DSNs), complaints (ARF reports) and mailed unsubscribe
requests that SES stored in the inbound bucket, turned into post-delivery events and
suppression entries.

`mail` reads one stored object (`InboundMail`) and where SES delivered it; `recover`
verifies a signed return path among the addresses a report offers; `bounce`,
`complaint` and `unsubscribe` (mail to a List-Unsubscribe mailto address) are the
intakes, `by_recipient` sends the bounce prefix's mail to the first or the last,
`records` and `suppress` what the first two write;
`counts` tallies what was dropped and why;
`s3_event` reads the S3 notifications the intake queues carry; `build` makes an
intake from a Deployment, as the Lambdas (functions/bounce_intake, fbl_intake) and
the local stack do. No intake ever sends mail.

Idempotency: an intake publishes each object's events as one batch whose id derives
from the object (`InboundMail.identity`), with the time SES stored it as `at`, so the
same object processed twice (a duplicate S3 notification, an SQS redelivery, a retry
after a partial failure, a replay from the DLQ) publishes the same records under the
same batch id, and the export rewrites the same S3 objects: one set of events.
Suppression entries are keyed by (tenant, address) and written with the same
values, so writing one again changes nothing; an unsubscribe's entry is written only
when the address has no unsubscribe entry yet or the one there names the same object
(quiver.unsubscribe.apply).
"""
