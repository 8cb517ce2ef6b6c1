-- Every event of one recipient (any letter case), in order: attempts, final outcome, what came back later.
-- athena-table: events
-- param: rcpt
SELECT "at", event, id, rcpt, attempt, source_ip, mx, provider,
       response.code AS code, response.enhanced AS enhanced,
       coalesce(bounce.reason, reason, response.text) AS why,
       next_attempt_at, queued_ms, tenant, campaign
FROM events
WHERE lower(rcpt) = lower($rcpt)
ORDER BY "at", id
