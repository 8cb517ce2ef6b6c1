-- The most frequent bounce reasons, with their classification and the remote's reply code (last 7 days, compacted hours).
SELECT bounce.kind AS kind, bounce.category AS category, bounce.reason AS reason,
       response.code AS code, response.enhanced AS enhanced, count(*) AS bounced
FROM events_compacted
WHERE "date" >= date_format(current_date - INTERVAL '7' DAY, '%Y-%m-%d')
  AND event = 'bounced'
GROUP BY bounce.kind, bounce.category, bounce.reason, response.code, response.enhanced
ORDER BY bounced DESC, reason
LIMIT 50
