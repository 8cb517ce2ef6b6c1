"""Tenant guards: each tenant's and campaign's complaint and hard bounce rates over
sliding windows, counted from the events as the export path passes them, and a pause
(an operator control, by `adaptive`) when one crosses its threshold.

`counts` folds a batch of events into per-bucket counts, `store` keeps the windows'
counters in the controls table (a re-delivered batch counts once), `rates` sums a
window and judges it against the `[guards]` limits (quiver.policy.guards), `guard`
runs it all for one batch and pauses once per crossing.
"""
