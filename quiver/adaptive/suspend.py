"""An adaptive suspension: a pause control, written to the controls table exactly as
an operator's `quiver ctl pause` writes one, by `adaptive`.

Its selector is the source and provider the block came from (`suspend`), or the
tenant or campaign whose mail drew it (`suspend_tenant`, `suspend_campaign`); it lasts
the rule's duration. The sender that saw the block applies it at once
(ActiveControls.add); the others at their next controls poll. Mail it holds waits
in the queue, unattempted, as under any pause: nothing bounces.
"""

from __future__ import annotations

import hashlib

from quiver.adaptive.change import ACTOR
from quiver.controls.model import MAX_REASON, Control, Selector
from quiver.policy.adaptive import ResponseRule


def suspension(rule: ResponseRule, selector: dict[str, str], *, reason: str,
               now: float) -> Control:
    """The pause `rule` puts in force for `selector` from `now`. Its id is derived from
    the rule, the selector and the second: two senders that see the same block in the
    same second write one control. ControlError when the selector's values cannot be
    a control's (a tenant label outside the selector's characters)."""
    assert rule.duration is not None, "a suspend rule has a duration (policy checks it)"
    key = "\x1f".join([rule.name, f"{int(now)}", *(f"{k}={v}" for k, v in sorted(
        selector.items()))])
    # A control's reason is one line of at most MAX_REASON characters; a reply's text
    # is cleaned by the wire parser, a local one may not be.
    line = " ".join(reason.replace("\0", " ").split())[:MAX_REASON]
    return Control(
        id="adaptive-" + hashlib.sha256(key.encode()).hexdigest()[:20], kind="pause",
        selector=Selector.of(dict(selector)), reason=line, who=ACTOR,
        created_at=now, expires_at=now + rule.duration)


def selector_for(rule: ResponseRule, *, source: str, provider: str | None,
                 tenant: str | None, campaign: str | None) -> dict[str, str] | None:
    """What a rule's action is about; None when the attempt lacks it (a tenant rule on
    mail of no tenant, a provider rule at a destination of no provider)."""
    if rule.action == "suspend_tenant":
        return {"tenant": tenant} if tenant else None
    if rule.action == "suspend_campaign":
        return {"campaign": campaign} if campaign else None
    if provider is None:
        return None
    return {"source": source, "provider": provider}
