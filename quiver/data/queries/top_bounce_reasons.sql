-- The most frequent bounce reasons, with their classification and the remote's reply code.
SELECT bounce.kind AS kind, bounce.category AS category, bounce.reason AS reason,
       response.code AS code, response.enhanced AS enhanced, count(*) AS bounced
FROM events
WHERE event = 'bounced'
GROUP BY bounce.kind, bounce.category, bounce.reason, response.code, response.enhanced
ORDER BY bounced DESC, reason
LIMIT 50
