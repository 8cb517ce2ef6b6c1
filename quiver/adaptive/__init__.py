"""Adaptive deliverability: limits that follow what receivers say (response rules,
AIMD send rates), IP warm-up schedules and tenant guards. Every change it makes is
an `AdaptiveChange`, recorded as a `control` event whose actor is `adaptive`."""
