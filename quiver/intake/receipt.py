"""The SES receipt rules a policy calls for, in order: which recipient's mail is stored
under which prefix of the inbound bucket.

CDK turns these into the receipt rule set (cdk/inbound_mail.py); the local stack's
inbound SMTP server (quiver/devstack/servers/inbound.py) applies the same list, so
mail takes the same path on loopback as in AWS.
"""

from __future__ import annotations

from dataclasses import dataclass

from quiver.names import INBOUND_BOUNCE_PREFIX, INBOUND_FBL_PREFIX
from quiver.policy import Policy


@dataclass(frozen=True, slots=True)
class ReceiptRule:
    # An address (`fbl@fbl.example.com`) or a domain (`bounces.example.com`), as an
    # SES rule's recipient: a domain matches every address in it, not its subdomains.
    recipient: str
    prefix: str
    # Stop evaluating later rules once this one matched.
    stop: bool
    # What the rule is for (its CDK logical id starts with it): Fbl, Unsubscribe, Bounce.
    kind: str

    def matches(self, address: str) -> bool:
        address = address.lower()
        if "@" in self.recipient:
            return address == self.recipient.lower()
        return address.rpartition("@")[2] == self.recipient.lower()


def receipt_rules(policy: Policy) -> tuple[ReceiptRule, ...]:
    """FBL addresses first, then unsubscribe mailto addresses (stored for the bounce
    intake, which routes them by recipient), each stopping the set so mail to such an
    address on a bounce domain is not stored twice; then each bounce domain once."""
    rules = [ReceiptRule(a, INBOUND_FBL_PREFIX, True, "Fbl")
             for a in policy.feedback.addresses]
    rules += [ReceiptRule(a, INBOUND_BOUNCE_PREFIX, True, "Unsubscribe")
              for a in policy.unsubscribe.mailto_addresses()]
    bounce = dict.fromkeys(d.bounce_domain for d in policy.return_path.domains)
    rules += [ReceiptRule(d, INBOUND_BOUNCE_PREFIX, False, "Bounce") for d in bounce]
    return tuple(rules)


def prefixes_for(rules: tuple[ReceiptRule, ...], address: str) -> list[str]:
    """The prefixes SES would store mail for `address` under, in rule order."""
    found: list[str] = []
    for rule in rules:
        if rule.matches(address):
            if rule.prefix not in found:
                found.append(rule.prefix)
            if rule.stop:
                break
    return found
