-- Queued to delivered latency (queued_ms: from the first enqueue, across retries) percentiles by provider and attempt.
SELECT coalesce(provider, 'other') AS provider, attempt, count(*) AS delivered,
       quantile_cont(queued_ms, 0.5) AS p50_ms,
       quantile_cont(queued_ms, 0.9) AS p90_ms,
       quantile_cont(queued_ms, 0.99) AS p99_ms,
       max(queued_ms) AS max_ms
FROM events
WHERE event = 'delivered'
GROUP BY coalesce(provider, 'other'), attempt
ORDER BY provider, attempt
