"""The HTTP ingress on the local stack: a message posted over HTTP is delivered,
DKIM-signed, and its events carry the caller's id, the tenant and the campaign; and
schemathesis drives the OpenAPI document's operation against the stack's endpoint:
every answer is one the document lists, in the shape it gives, and no input gets a
5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import dkim
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import negative_data_rejection
from stackrig import Running, running_stack
from test_walking_skeleton import dkim_dns

from quiver.devstack.demo_tenant import DEMO_TENANT
from quiver.devstack.injectors import HttpInjector
from quiver.events import FINAL_EVENTS
from quiver.ingress_http.schema import document
from quiver.ingress_http.service import PATH

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_stack(tmp_path_factory.mktemp("ingress-stack"), max_age="10m",
                       http_ingress=True) as running:
        yield running


def test_a_message_posted_over_http_is_delivered_signed_and_its_events_name_the_caller(
        stack: Running) -> None:
    injector = HttpInjector(stack.stack)
    status, body = injector.post(json.dumps({"messages": [{
        "id": "http-e2e-1", "from": "bounces@news.quiver-demo.test",
        "to": ["user1@alpha.test", "permfail-2@alpha.test"],
        "subject": "Over HTTP", "text": "Hello from the HTTP API.\n",
        "headers": {"From": "Demo <hello@news.quiver-demo.test>"},
        "campaign": "http-launch", "meta": {"order": 42}}]}).encode())
    assert status == 200 and body["accepted"] == 1, body
    envelope_id = f"{DEMO_TENANT}:http-e2e-1"
    events = stack.events_for({envelope_id}, finals=2, timeout=120)
    finals = {e["rcpt"]: e for e in events if e["event"] in FINAL_EVENTS}
    assert finals["user1@alpha.test"]["event"] == "delivered", events
    assert finals["permfail-2@alpha.test"]["event"] == "bounced"
    for event in events:
        assert event["id"] == envelope_id and event["tenant"] == DEMO_TENANT
        # meta is map<string,string> in the events: a number is stored as its JSON text.
        assert event["campaign"] == "http-launch" and event["meta"] == {"order": "42"}
    assert stack.stack.mx is not None
    (delivered,) = [Path(r["file"]).read_bytes() for r in stack.stack.mx.received()
                    if "Over HTTP" in (message_from_bytes(Path(r["file"]).read_bytes())
                                       ["Subject"] or "")]
    assert delivered.startswith(b"DKIM-Signature:") or b"\r\nDKIM-Signature:" in delivered
    assert dkim.verify(delivered, dnsfunc=dkim_dns(stack))


def test_schemathesis_over_the_openapi_document(stack: Running) -> None:
    """Positive and negative cases of the Bearer operation, a bounded, derandomized
    number; each one a real request to the stack's loopback endpoint."""
    assert stack.stack.ingress_server is not None and stack.stack.demo_tenant_key
    base_url = stack.stack.ingress_server.base_url
    auth = {"Authorization": f"Bearer {stack.stack.demo_tenant_key}"}
    operation = schemathesis.openapi.from_dict(document())[PATH]["POST"]
    cases = st.one_of(operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
                      operation.as_strategy(schemathesis.GenerationMode.NEGATIVE))

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(cases)
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, headers=auth)
        assert response.status_code < 500, response.text
        # A message that breaks the schema is refused alone, in a 200 batch answer
        # with its field and rule: the batch is not rejected for it (ST201's rule).
        case.validate_response(response, excluded_checks=[negative_data_rejection])

    check()
