-- Every event of one message (the caller's id), for each of its recipients, in order.
-- athena-table: events
-- param: id
SELECT "at", event, id, rcpt, attempt, source_ip, mx, provider,
       response.code AS code, response.enhanced AS enhanced,
       coalesce(bounce.reason, reason, response.text) AS why,
       next_attempt_at, queued_ms, tenant, campaign
FROM events
WHERE id = $id
ORDER BY "at", rcpt
