-- Every event of one recipient (any letter case), in order, from the raw table (last 7 days, up to the minute).
-- param: rcpt
SELECT "at", event, id, rcpt, attempt, source_ip, mx, provider,
       response.code AS code, response.enhanced AS enhanced,
       coalesce(bounce.reason, reason, response.text) AS why,
       next_attempt_at, queued_ms, tenant, campaign
FROM events
WHERE "date" >= date_format(current_date - INTERVAL '7' DAY, '%Y-%m-%d')
  AND lower(rcpt) = lower(?)
ORDER BY "at", id
