-- Queued to delivered latency (queued_ms: from the first enqueue, across retries) percentiles by provider and attempt (last 7 days, compacted hours).
SELECT coalesce(provider, 'other') AS provider, attempt, count(*) AS delivered,
       approx_percentile(queued_ms, 0.5) AS p50_ms,
       approx_percentile(queued_ms, 0.9) AS p90_ms,
       approx_percentile(queued_ms, 0.99) AS p99_ms,
       max(queued_ms) AS max_ms
FROM events_compacted
WHERE "date" >= date_format(current_date - INTERVAL '7' DAY, '%Y-%m-%d')
  AND event = 'delivered'
GROUP BY coalesce(provider, 'other'), attempt
ORDER BY provider, attempt
