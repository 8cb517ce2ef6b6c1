-- Complaint rate (ARF complaints per delivered message) by tenant and campaign.
SELECT coalesce(tenant, '(none)') AS tenant, coalesce(campaign, '(none)') AS campaign,
       count(*) FILTER (WHERE event = 'delivered') AS delivered,
       count(*) FILTER (WHERE event = 'complaint') AS complaints,
       round(100.0 * count(*) FILTER (WHERE event = 'complaint')
             / nullif(count(*) FILTER (WHERE event = 'delivered'), 0), 3) AS complaint_pct
FROM events
WHERE event IN ('delivered', 'complaint')
GROUP BY coalesce(tenant, '(none)'), coalesce(campaign, '(none)')
ORDER BY complaint_pct DESC NULLS LAST, tenant, campaign
