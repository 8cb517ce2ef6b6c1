"""End to end on the local stack: a message submitted to the SMTP listener (STARTTLS,
AUTH as the demo tenant) is delivered DKIM-signed, and its events carry the caller's
id, the tenant and the campaign."""

from __future__ import annotations

import smtplib
import ssl
from pathlib import Path

import dkim
import pytest
from test_walking_skeleton import dkim_dns

from quiver.events import FINAL_EVENTS

pytestmark = pytest.mark.integration

MESSAGE = (b"From: Demo <hello@news.quiver-demo.test>\r\n"
           b"To: carol@alpha.test\r\n"
           b"Subject: over SMTP\r\n"
           b"Message-ID: <smtp-e2e-1@news.quiver-demo.test>\r\n"
           b"X-Quiver-Campaign: smtp-launch\r\n"
           b"X-Quiver-Meta-Order: 7\r\n"
           b"\r\n"
           b"Submitted over SMTP.\r\n")


def test_smtp_submission_is_delivered_signed_with_its_tenant_and_campaign(local_stack) -> None:
    ingress = local_stack.stack.smtp_ingress
    assert ingress is not None
    env = local_stack.stack.env()
    assert env["QUIVER_SMTP_USER"] == "demo" and env["QUIVER_SMTP_PASSWORD"] == ingress.key
    host, port = ingress.address
    context = ssl.create_default_context(cafile=str(ingress.ca_file))
    with smtplib.SMTP(host, port, timeout=60) as smtp:
        smtp.starttls(context=context)
        smtp.login(env["QUIVER_SMTP_USER"], env["QUIVER_SMTP_PASSWORD"])
        smtp.sendmail("hello@news.quiver-demo.test", ["carol@alpha.test"], MESSAGE)
    caller_id = "smtp-e2e-1@news.quiver-demo.test"
    events = local_stack.events_for({caller_id}, finals=1, timeout=120)
    finals = [e for e in events if e["event"] in FINAL_EVENTS]
    assert [e["event"] for e in finals] == ["delivered"], events
    for event in events:
        assert (event["id"], event["tenant"], event["campaign"]) == (
            caller_id, "demo", "smtp-launch")
        assert event["meta"] == {"order": "7"}
    [copy] = [item for item in local_stack.stack.mx.received()
              if b"smtp-e2e-1@" in Path(item["file"]).read_bytes()]
    raw = Path(copy["file"]).read_bytes()
    assert raw.startswith(b"DKIM-Signature:")
    assert dkim.verify(raw, dnsfunc=dkim_dns(local_stack))
    assert b"X-Quiver-" not in raw
