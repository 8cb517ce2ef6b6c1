-- Messages refused before any delivery attempt, with the reason and the queue message they were.
SELECT "at", id, sqs_message_id, rcpt, tenant, campaign, pool, reason
FROM events
WHERE event = 'rejected'
ORDER BY "at" DESC
