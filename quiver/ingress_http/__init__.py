"""The HTTP injection API (`POST /v1/messages`): a thin, stateless translator of JSON
batches onto the outbound queue, behind the same contract as `quiver.client`.

`quiver/data/ingress_openapi.json` is the source of truth: `schema.py` compiles its
components into the validators the service runs; `mime.py` renders composed
messages; `idempotency.py` makes a replayed (tenant, id) enqueue once; `service.py`
ties them to auth and the queue. The Lambda (functions/ingress_http) and the local
stack's loopback server (quiver/devstack/servers/ingress_http.py) both call
`IngressService.handle`.
"""
