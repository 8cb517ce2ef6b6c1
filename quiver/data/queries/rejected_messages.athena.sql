-- Messages refused before any delivery attempt, with the reason and the queue message they were (last 7 days, raw table).
SELECT "at", id, sqs_message_id, rcpt, tenant, campaign, pool, reason
FROM events
WHERE "date" >= date_format(current_date - INTERVAL '7' DAY, '%Y-%m-%d')
  AND event = 'rejected'
ORDER BY "at" DESC
