"""Which response rule a reply falls under: the rules of its provider in policy order,
then the rules for every destination (`*`); the first that matches wins.

Only refusals are matched (a rule's code is 4xx or 5xx): a positive reply returns at
its first test, which is what almost every reply is.
"""

from __future__ import annotations

from quiver.policy.adaptive import AdaptivePolicy, ResponseRule
from quiver.smtp.reply import Reply


def rule_for(policy: AdaptivePolicy, provider: str | None, reply: Reply) -> ResponseRule | None:
    if reply.code < 400:
        return None
    for rule in policy.rules_for(provider):
        if rule.matches(reply.code, reply.enhanced, reply.text):
            return rule
    return None
