"""Every starter rule against the reply its provider sends, and the order rules are
tried in (a provider's block rules before its throttle rules, first match wins)."""

from __future__ import annotations

import pytest

from quiver.adaptive.rules import rule_for
from quiver.policy.adaptive import adaptive_section, starter_rules
from quiver.smtp.reply import Reply, parse_reply

PROVIDERS = ("google", "yahoo", "microsoft", "apple", "comcast", "gmx", "orange")
POLICY, _ = adaptive_section({}, providers=PROVIDERS)

# (provider, reply as received, rule that must take it)
SAMPLES = [
    ("google", "421 4.7.28 [192.0.2.1] Our system has detected an unusual rate of unsolicited "
     "mail originating from your IP address. To protect our users from spam, mail sent from "
     "your IP address has been temporarily rate limited.", "gmail-rate-limited"),
    ("google", "550 5.7.1 [192.0.2.1] The IP you're using to send mail is not authorized to "
     "send email directly to our servers. Please use the SMTP relay at your service provider "
     "instead.", "gmail-ip-not-authorized"),
    ("google", "421 4.7.0 [192.0.2.1] Our system has detected that this message is suspicious "
     "due to the nature of the content and/or the links within.", "gmail-unsolicited"),
    ("google", "421 4.7.0 Try again later, closing connection.", "gmail-try-later"),
    ("yahoo", "421 4.7.0 [TS03] All messages from 192.0.2.1 will be permanently deferred; "
     "Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes",
     "yahoo-ts03-blocked"),
    ("yahoo", "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because the "
     "ip is in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes",
     "yahoo-blocklisted"),
    ("yahoo", "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to "
     "unexpected volume or user complaints - 4.16.55.1; see "
     "https://postmaster.yahooinc.com/error-codes", "yahoo-deferred"),
    ("yahoo", "421 4.7.0 [TS01] Messages from 192.0.2.1 temporarily deferred due to user "
     "complaints - 4.16.55.1", "yahoo-deferred"),
    ("microsoft", "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please "
     "contact your Internet service provider since part of their network is on our block "
     "list (S3150).", "outlook-blocklisted"),
    ("microsoft", "451 4.7.500 Access denied, banned sending IP [192.0.2.1] (S3140) "
     "blocklisted", "outlook-blocklisted"),
    ("microsoft", "550 SC-001 (BAY004-MC1F43) Unfortunately, messages from 192.0.2.1 weren't "
     "sent. Please contact your Internet service provider. You can tell them that Hotmail "
     "does not relay dial-up traffic.", "outlook-sc-blocked"),
    ("microsoft", "451 4.7.500 Server busy. Please try again later from [192.0.2.1]. "
     "(S77714) [Name=Protocol Filter Agent]", "outlook-server-busy"),
    ("microsoft", "421 RP-001 (BAY004-MC1F43) Unfortunately, some messages from 192.0.2.1 "
     "weren't sent. Please try again. We have limits for how many messages can be sent per "
     "hour and per day.", "outlook-rate-limits"),
    ("microsoft", "451 4.7.652 The mail server [192.0.2.1] has exceeded the maximum number "
     "of connections.", "outlook-rate-limits"),
    ("apple", "554 5.7.1 [HM08] Message rejected: 192.0.2.1 is on our block list",
     "icloud-blocklisted"),
    ("apple", "450 4.2.1 Too many messages from this sender, try again later", "icloud-rate"),
    ("comcast", "554 resimta-po-20v.sys.comcast.net resimta-po-20v.sys.comcast.net "
     "[192.0.2.1] Comcast block for spam. Please see "
     "http://postmaster.comcast.net/smtp-error-codes.php#BL000000", "comcast-blocked"),
    ("comcast", "421 resimta-po-05v.sys.comcast.net [192.0.2.1] Too many sessions are open "
     "from your IP. Please see http://postmaster.comcast.net/smtp-error-codes.php#RL000001",
     "comcast-rate-limited"),
    ("gmx", "554 gmx.net (mxgmx016) Nemesis ESMTP Service not available No SMTP service "
     "IP address is black listed.", "gmx-ip-blocked"),
    ("gmx", "421 gmx.net (mxgmx109) Nemesis ESMTP Service not available Service unavailable "
     "Too many connections", "gmx-too-many"),
    ("orange", "550 mwinf5c10 ME Adresse IP source bloquee pour incident de spam. Client host "
     "blocked for spamming issues. OFR006_102", "orange-blocked"),
    ("orange", "421 mwinf5c08 ME Service refuse. Veuillez essayer plus tard. Service refused, "
     "please try later. OFR004_104 [104]", "orange-service-refused"),
    ("orange", "421 mwinf5c76 ME Trop de connexions, veuillez verifier votre configuration. "
     "Too many connections, slow down. OFR005_105 [105]", "orange-service-refused"),
]


def reply(line: str) -> Reply:
    code, _, text = line.partition(" ")
    return parse_reply(int(code), text)


@pytest.mark.parametrize(("provider", "line", "name"), SAMPLES,
                         ids=[f"{s[2]}-{i}" for i, s in enumerate(SAMPLES)])
def test_each_sample_reply_falls_under_its_rule(provider: str, line: str, name: str) -> None:
    rule = rule_for(POLICY, provider, reply(line))
    assert rule is not None and rule.name == name


def test_every_starter_rule_has_a_sample() -> None:
    assert {r.name for r in starter_rules()} == {name for _, _, name in SAMPLES}


@pytest.mark.parametrize("line", [
    "250 2.0.0 OK 1712345678 a1b2c3 - gsmtp",
    "550 5.1.1 The email account that you tried to reach does not exist.",
    "452 4.2.2 The email account that you tried to reach is over quota.",
])
def test_ordinary_replies_fall_under_no_rule(line: str) -> None:
    for provider in PROVIDERS:
        assert rule_for(POLICY, provider, reply(line)) is None


def test_a_rule_applies_to_its_provider_only() -> None:
    gmail = reply(SAMPLES[0][1])
    assert rule_for(POLICY, "microsoft", gmail) is None
    assert rule_for(POLICY, None, gmail) is None
