-- Messages refused before any delivery attempt, with the reason and the queue message they were.
-- athena-table: events
SELECT "at", id, sqs_message_id, rcpt, tenant, campaign, pool, reason
FROM events
WHERE event = 'rejected'
ORDER BY "at" DESC
