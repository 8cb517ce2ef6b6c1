-- Delivery, deferral and bounce rate of delivery attempts per hour, by pool, provider and source IP.
SELECT "date", hour, pool, coalesce(provider, 'other') AS provider, source_ip,
       count(*) AS attempts,
       count(*) FILTER (WHERE event = 'delivered') AS delivered,
       count(*) FILTER (WHERE event = 'deferred') AS deferred,
       count(*) FILTER (WHERE event = 'bounced') AS bounced,
       round(100.0 * count(*) FILTER (WHERE event = 'delivered') / count(*), 2) AS delivered_pct,
       round(100.0 * count(*) FILTER (WHERE event = 'deferred') / count(*), 2) AS deferred_pct,
       round(100.0 * count(*) FILTER (WHERE event = 'bounced') / count(*), 2) AS bounced_pct
FROM events
WHERE event IN ('delivered', 'deferred', 'bounced')
GROUP BY "date", hour, pool, coalesce(provider, 'other'), source_ip
ORDER BY "date", hour, pool, provider, source_ip
