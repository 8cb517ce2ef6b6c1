"""moto's server for the end-to-end benchmark: SQS calls counted, its hot spots optionally cut.

moto stands in for SQS, whose CPU in production is not on the sender's machine.
On this benchmark's two cores, plain moto spends several milliseconds of CPU per
message, mostly in work that grows with the number of messages in a queue (in
flight included), or that it repeats on every request:

- every "now" goes through `datetime.utcnow() - datetime(1970)`, and a scan of
  the queue takes two per message;
- each returned message first checks the retention period by computing *all*
  the queue's attributes (three full scans), and each sent one computes them
  too, to read an attribute standard queues do not have;
- a delete or visibility change finds its receipt handle by scanning the queue;
- each returned message is deep-copied; each body is hashed again per read;
- per request, the dispatcher looks the backend up among every service's URL
  patterns (listing moto's directory), and werkzeug logs a line.

`lean` removes these without changing any answer moto gives: each patch in
`make_lean` says why. Standard queues take the lean paths; FIFO queues keep
moto's own send and receive. Either way every SQS call is appended to a log as
`Action queue-name entries`, so the benchmark can say how many calls of each
kind a message costs.

Run as a script it applies the patches and starts moto's server with the same
arguments as `python -m moto.server`; `start()` does that as a child process.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from quiver.devstack.moto_main import patch_clock
from quiver.devstack.moto_server import FAKE_CREDENTIALS, MotoServer, wait_for_moto
from quiver.devstack.processes import free_port

ENV_CALLS = "QUIVER_BENCH_MOTO_CALLS"
ENV_LEAN = "QUIVER_BENCH_MOTO_LEAN"
# A JSON line per request of any service, with what it bills (bench/cost.py).
ENV_REQUESTS = "QUIVER_BENCH_MOTO_REQUESTS"


def make_lean() -> None:
    """Every patch below gives the same answers as moto as shipped (see each comment);
    standard queues take the lean paths, FIFO queues moto's own code where it differs."""
    import moto.sqs.models as models

    _lean_clock(models)
    _lean_queue_scans(models)
    _lean_body_md5(models)
    _lean_send(models)
    _lean_receive(models)
    _lean_receipts(models)
    _lean_receipt_handles(models)
    _lean_server()
    _lean_json_results()
    _keep_alive()


def _lean_clock(models: Any) -> None:
    # The same instant as moto's `datetime.utcnow() - datetime(1970)`, without the
    # datetimes (the local stack's moto has this one too).
    if not patch_clock():
        raise RuntimeError("this moto has no moto.sqs.models.unix_time_millis to patch")

    # moto reads MessageRetentionPeriod through get_queue_attributes, which computes every
    # attribute (three scans of the queue); the queue holds the same integer.
    def retained(self: Any, queue_name: str, message: Any) -> bool:
        queue = self.get_queue(queue_name)
        return bool(int(queue.message_retention_period) + message.sent_timestamp / 1000
                    > time.time())

    models.SQSBackend.is_message_valid_based_on_retention_period = retained


def _lean_queue_scans(models: Any) -> None:
    # `Message.visible` and `.delayed` each take "now"; a scan of the queue took two per
    # message. One instant per scan: the list moto would have built had the scan been
    # instantaneous (a visibility or delay that ends mid-scan is a µs race either way).
    def messages(self: Any) -> list[Any]:
        now = models.unix_time_millis()
        return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]

    # Long polls wait for "is any message receivable"; moto built the whole list to
    # test it for emptiness. any() gives the same truth value and stops at the first.
    def wait_for_messages(self: Any, timeout: int) -> None:
        def ready() -> bool:
            now = models.unix_time_millis()
            return any(now > m.visible_at and not now < m.delayed_until
                       for m in self._messages)

        with self._messages_lock:
            self._messages_lock.wait_for(ready, timeout=timeout)

    models.Queue.messages = property(messages)
    models.Queue.wait_for_messages = wait_for_messages


def _lean_body_md5(models: Any) -> None:
    # moto hashes the body again on every read of MD5OfBody. The digest is kept beside
    # the very body object it was computed from, and recomputed if the body is replaced.
    # (Attributes starting with "_" are hidden from moto's /moto-api/data.json.)
    original_md5 = models.Message.body_md5.fget

    def body_md5(self: Any) -> str:
        cached = self.__dict__.get("_lean_body_md5")
        if cached is not None and cached[0] is self.body:
            return str(cached[1])
        digest = original_md5(self)
        self._lean_body_md5 = (self.body, digest)
        return str(digest)

    models.Message.body_md5 = property(body_md5)


def _lean_send(models: Any) -> None:
    original = models.SQSBackend.send_message

    # moto's send_message computes `queue.attributes` (three scans of the queue) only
    # to read ContentBasedDeduplication, which a standard queue's attributes do not even
    # contain (it is a FIFO attribute), so the test is always false there. Standard
    # queues run moto's steps minus that test; FIFO queues run moto's own code.
    def send_message(self: Any, queue_name: str, message_body: str,
                     message_attributes: dict[str, Any] | None = None,
                     delay_seconds: int | None = None, deduplication_id: str | None = None,
                     group_id: str | None = None,
                     system_attributes: dict[str, Any] | None = None,
                     validate_group_id: bool = True) -> Any:
        queue = self.get_queue(queue_name)
        if queue.fifo_queue:
            return original(self, queue_name, message_body, message_attributes,
                            delay_seconds, deduplication_id, group_id, system_attributes,
                            validate_group_id)
        self._validate_message(queue, message_body=message_body,
                               delay_seconds=int(delay_seconds or 0),
                               deduplication_id=deduplication_id, group_id=group_id,
                               validate_group_id=validate_group_id)
        delay = int(delay_seconds) if delay_seconds is not None else queue.delay_seconds
        message = models.Message(str(models.random.uuid4()), message_body, system_attributes)
        if deduplication_id is not None:
            message.deduplication_id = deduplication_id
            message.sequence_number = "".join(
                models.random.choice(models.string.digits) for _ in range(20))
        if group_id is not None:
            message.group_id = group_id
        if message_attributes:
            message.message_attributes = message_attributes
        if delay > models.MAXIMUM_MESSAGE_DELAY:
            raise models.InvalidParameterValue(
                f"Value {delay} for parameter DelaySeconds is invalid. "
                "Reason: DelaySeconds must be >= 0 and <= 900.")
        message.mark_sent(delay_seconds=delay)
        queue.add_message(message)
        return message

    models.SQSBackend.send_message = send_message


def _lean_receive(models: Any) -> None:
    original = models.SQSBackend.receive_message

    # What moto's deepcopy gave the response: a Message of its own, fields as they are now,
    # so later receives (or attribute filtering) cannot change what this one answers. The
    # scalar fields are copied by a shallow copy; the containers are copied explicitly.
    def snapshot(message: Any) -> Any:
        clone = copy.copy(message)
        clone.message_attributes = copy.deepcopy(message.message_attributes)
        clone.system_attributes = copy.deepcopy(message.system_attributes)
        clone._old_receipt_handles = list(message._old_receipt_handles)
        return clone

    # moto's receive_message, step for step, for standard queues, minus what only FIFO
    # queues read (the pending message groups, rebuilt with a deepcopy on every call and
    # every timed-out message), with `snapshot` for deepcopy and the one-instant scan.
    def receive_message(self: Any, queue_name: str, count: int, wait_seconds_timeout: int,
                        visibility_timeout: int,
                        message_attribute_names: list[str] | None = None) -> list[Any]:
        queue = self.get_queue(queue_name)
        if queue.fifo_queue:
            return original(self, queue_name, count, wait_seconds_timeout,
                            visibility_timeout, message_attribute_names)
        if message_attribute_names is None:
            message_attribute_names = []
        result: list[Any] = []
        previous_result_count = 0
        polling_end = models.unix_time() + wait_seconds_timeout
        while True:
            if result or (wait_seconds_timeout and models.unix_time() > polling_end):
                break
            messages_to_dlq = []
            for message in queue.messages:
                if not message.visible:
                    continue
                if message in queue.pending_messages:
                    # Visible again while pending: the consumer timed out.
                    queue.pending_messages.remove(message)
                if (queue.dead_letter_queue is not None and queue.redrive_policy
                        and message.approximate_receive_count
                        >= queue.redrive_policy["maxReceiveCount"]):
                    messages_to_dlq.append(message)
                    continue
                queue.pending_messages.add(message)
                message.mark_received(visibility_timeout=visibility_timeout)
                message_copy = snapshot(message)
                models._filter_message_attributes(message_copy, message_attribute_names)
                if not self.is_message_valid_based_on_retention_period(queue_name, message):
                    break
                result.append(message_copy)
                if len(result) >= count:
                    break
            for message in messages_to_dlq:
                queue._messages.remove(message)
                queue.dead_letter_queue.add_message(message)
            if previous_result_count == len(result):
                if wait_seconds_timeout == 0:
                    break
                queue.wait_for_messages(1)
                continue
            previous_result_count = len(result)
        return result

    models.SQSBackend.receive_message = receive_message


def _lean_receipt_handles(models: Any) -> None:
    """A receipt handle is 185 random lowercase letters; moto draws them with 185
    calls to random.choice (about a tenth of its CPU per received message). One call
    of random.choices draws the same kind of string from the same generator: handles
    stay uniformly random and as long, only the order of draws differs."""
    import string

    from moto.moto_api._internal import mock_random

    letters = string.ascii_lowercase

    def generate_receipt_handle() -> str:
        return "".join(mock_random.choices(letters, k=185))

    models.generate_receipt_handle = generate_receipt_handle


def _lean_receipts(models: Any) -> None:
    # moto finds the message a receipt handle names by scanning the queue and building
    # each message's list of handles (twice per delete). Every handle a message ever has
    # is made by mark_received, so an index of them finds the same message; the message
    # still has to be in *this* queue's list, exactly as moto's scan requires (a message
    # moved to the DLQ answers to its old handles there, and only there).
    by_handle: dict[str, Any] = {}
    original_mark_received = models.Message.mark_received
    original_delete = models.Queue.delete_message
    original_visibility = models.SQSBackend.change_message_visibility

    def mark_received(self: Any, visibility_timeout: int | None = None) -> None:
        original_mark_received(self, visibility_timeout)
        by_handle[self.receipt_handle] = self

    def delete_message(self: Any, receipt_handle: str) -> None:
        if not isinstance(receipt_handle, str):
            return original_delete(self, receipt_handle)  # never from a client; moto's way
        if receipt_handle in self.deleted_messages:
            return  # deleted already: succeeds again, as in moto
        message = by_handle.get(receipt_handle)
        # moto rebuilds the list without the message; a copy minus it is the same list
        # (no other message has this handle). Under the queue's lock, so a message
        # appended meanwhile is not lost (moto's unlocked rebuild could lose it).
        with self._messages_lock:
            remaining = list(self._messages)
            try:
                remaining.remove(message)  # by identity: Message has no __eq__
            except ValueError:
                raise models.ReceiptHandleIsInvalid() from None
            self._messages = remaining
        self.pending_messages.discard(message)
        handles = message.all_receipt_handles
        self.deleted_messages.update(handles)
        # Its handles now answer from deleted_messages; the index need not keep them.
        for handle in handles:
            by_handle.pop(handle, None)

    def change_message_visibility(self: Any, queue_name: str, receipt_handle: str,
                                  visibility_timeout: int) -> None:
        if not isinstance(receipt_handle, str):
            return original_visibility(self, queue_name, receipt_handle, visibility_timeout)
        queue = self.get_queue(queue_name)
        message = by_handle.get(receipt_handle)
        if message is None or message not in queue._messages:
            raise models.ReceiptHandleIsInvalid
        # From here on moto's code, unchanged.
        visibility_timeout_msec = int(visibility_timeout) * 1000
        given_visibility_timeout = models.unix_time_millis() + visibility_timeout_msec
        if given_visibility_timeout - message.sent_timestamp > 43200 * 1000:
            raise models.InvalidParameterValue(
                f"Value {visibility_timeout} for parameter VisibilityTimeout is invalid. "
                "Reason: Total VisibilityTimeout for the message is beyond the limit "
                "[43200 seconds]")
        message.change_visibility(visibility_timeout)
        if message.visible and message in queue.pending_messages:
            queue.pending_messages.remove(message)
        return None

    models.Message.mark_received = mark_received
    models.Queue.delete_message = delete_message
    models.SQSBackend.change_message_visibility = change_message_visibility


def _lean_server() -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler

    original = DomainDispatcherApplication.get_backend_for_host

    # Which backend serves a host: moto lists its package directory (an isdir per
    # module) and tries every service's URL patterns, per request. Both are fixed for
    # the life of the server, so the answer for a host is too. A miss (None) is not
    # kept: moto prints a hint for it each time.
    def get_backend_for_host(self: Any, host: str | None) -> Any:
        cache = self.__dict__.setdefault("_lean_backends", {})
        backend = cache.get(host)
        if backend is None:
            backend = original(self, host)
            if backend is not None:
                cache[host] = backend
        return backend

    # werkzeug writes a line to stderr per request; nothing reads it in lean mode.
    def log_request(self: Any, code: Any = "-", size: Any = "-") -> None:
        return None

    DomainDispatcherApplication.get_backend_for_host = get_backend_for_host
    MotoRequestHandler.log_request = log_request

    import moto.core.responses as responses

    # Per request moto lists the response class's functions (inspect.getmembers) to see
    # whether the action is one. No class gains or loses functions while the server
    # runs (the patches here are made before it starts), so the list is kept per class.
    original_names = responses.method_names_from_class
    names: dict[Any, list[str]] = {}

    def method_names_from_class(clazz: Any) -> list[str]:
        found = names.get(clazz)
        if found is None:
            found = names[clazz] = original_names(clazz)
        return found

    responses.method_names_from_class = method_names_from_class

    # Per response moto runs a regex over the whole body (50 KB for ten messages) to put
    # the request id into an XML <RequestId> element. The lookbehind can only match after
    # that literal tag, so a body without it comes back unchanged; moto's own code still
    # does the rest (the status and request id headers).
    original_enrich = responses.BaseResponse._enrich_response

    def enrich_response(headers: dict[str, str], body: Any) -> tuple[dict[str, str], Any]:
        if isinstance(body, str) and "<RequestId>" not in body:
            return original_enrich(headers, "")[0], body
        return original_enrich(headers, body)  # type: ignore[no-any-return]

    responses.BaseResponse._enrich_response = staticmethod(enrich_response)


# The calls the sender and the feeder make per message. Their results are built by
# moto's SQS responses as plain dicts of strings, booleans and lists of those.
_JSON_FAST_ACTIONS = frozenset(
    {"ReceiveMessage", "DeleteMessageBatch", "SendMessageBatch", "ChangeMessageVisibilityBatch"})


def _plain_json(value: Any) -> bool:
    """Strings, booleans, non-empty lists and dicts of them: values the JSON protocol's
    serializer writes as json.dumps would (no timestamps, blobs, numbers or empties,
    which it may format or drop)."""
    if isinstance(value, str | bool):
        return True
    if isinstance(value, dict):
        return bool(value) and all(_plain_json(v) for v in value.values())
    if isinstance(value, list):
        return bool(value) and all(_plain_json(v) for v in value)
    return False


def _lean_json_results() -> None:
    """moto serializes every answer through botocore's output shapes, a fifth of its
    CPU per message. For the four calls above, over the JSON protocol, with a result
    made only of strings, booleans and non-empty containers (MessageAttributes, whose
    binary values the serializer base64-encodes, are not), that serializer's output is
    json.dumps of the result: the body is written that way. Status and headers still
    come from moto's serializer (run on an empty result). Anything else, moto's path.
    """
    import json

    from moto.core import responses
    from moto.sqs.responses import SQSResponse

    original = responses.BaseResponse.serialized

    def plain(result: Any) -> bool:
        if not isinstance(result, dict):
            return False
        for key, value in result.items():
            if key == "Failed" and value == []:
                continue  # written as an empty list by both
            if not _plain_json(value):
                return False
            if isinstance(value, list) and any(
                    isinstance(m, dict) and "MessageAttributes" in m for m in value):
                return False
        return True

    def serialized(self: Any, action_result: Any) -> Any:
        if (isinstance(self, SQSResponse) and type(action_result) is responses.ActionResult
                and self._get_action() in _JSON_FAST_ACTIONS
                and self.headers.get("Content-Type", "") == "application/x-amz-json-1.0"
                and plain(action_result.result)):
            status, headers, _ = original(self, responses.ActionResult({}))
            return status, headers, json.dumps(action_result.result)
        return original(self, action_result)

    responses.BaseResponse.serialized = serialized


def _keep_alive() -> None:
    """HTTP/1.1 keep-alive, which werkzeug's development server turns off.

    werkzeug sends `Connection: close` on every response because http.server cannot
    tell where an unread request body ends. Without keep-alive every SQS call costs a
    TCP connection on both sides and a new server thread, a cost real SQS does not
    impose (it keeps connections open). Here the body is read in full (by its
    Content-Length) before the application sees it, so the next request line is
    always where the server looks for it; only then is the connection kept. Requests
    without a Content-Length (chunked) keep the close. Answers are unchanged.
    """
    import io
    import selectors
    import types

    import werkzeug.serving
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    original_run = MotoRequestHandler.run_wsgi
    original_header = MotoRequestHandler.send_header
    read_ahead = threading.local()

    class NothingToDrain:
        """After answering, werkzeug drains what is left of the request from the socket:
        an epoll set made, waited on for 10 ms and closed, per request. A request read
        in full beforehand has nothing left, and on a kept connection what the socket
        holds is the next request: for those this stands in, and finds nothing."""

        def register(self, *args: Any) -> None:
            return None

        def select(self, timeout: float | None = None) -> list[Any]:
            return []

        def close(self) -> None:
            return None

    def default_selector() -> Any:
        if getattr(read_ahead, "active", False):
            return NothingToDrain()
        return selectors.DefaultSelector()

    werkzeug.serving.selectors = types.SimpleNamespace(  # type: ignore[assignment]
        DefaultSelector=default_selector, EVENT_READ=selectors.EVENT_READ)

    def run_wsgi(self: Any) -> None:
        length = self.headers.get("Content-Length", "")
        self._lean_keep = (length.isascii() and length.isdigit()
                           and "Transfer-Encoding" not in self.headers)
        if not self._lean_keep:
            original_run(self)
            return
        real = self.rfile
        self.rfile = io.BufferedReader(io.BytesIO(real.read(int(length))))  # type: ignore[arg-type]
        read_ahead.active = True
        try:
            original_run(self)
        finally:
            read_ahead.active = False
            self.rfile = real

    def send_header(self: Any, keyword: str, value: str) -> None:
        if (getattr(self, "_lean_keep", False) and keyword.lower() == "connection"
                and value.lower() == "close"):
            return
        original_header(self, keyword, value)

    MotoRequestHandler.run_wsgi = run_wsgi
    MotoRequestHandler.send_header = send_header
    # The head and the body of a response are separate writes: on a kept connection,
    # Nagle would hold the body until the client's delayed ACK (40 ms) of the head.
    MotoRequestHandler.disable_nagle_algorithm = True


def count_calls(path: Path) -> None:
    from moto.sqs.responses import SQSResponse

    log = path.open("a", buffering=1)
    lock = threading.Lock()
    call_action = SQSResponse.call_action

    def counted(self: Any) -> Any:
        try:
            entries = self._get_param("Entries")
            line = f"{self._get_action()} {self._get_queue_name()} {len(entries or ())}\n"
        except Exception:  # counting must never change an answer
            line = "unknown - 0\n"
        with lock:
            log.write(line)
        return call_action(self)

    SQSResponse.call_action = counted


def log_requests(path: Path) -> None:
    """Append a JSON line per request moto serves: service, operation, target (queue,
    table or bucket), payload bytes in and out, and what it bills (bench/cost_model)."""
    import io
    import json
    import re

    import cost_model
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    log = path.open("a", buffering=1)
    lock = threading.Lock()
    call = DomainDispatcherApplication.__call__
    scope = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/aws4_request")

    def logged(self: Any, environ: dict[str, Any], start_response: Any) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        chunks = list(call(self, environ, start_response))
        try:
            line = _describe(environ, body, b"".join(chunks), scope, cost_model, json)
        except Exception as exc:  # counting must never change an answer
            line = {"svc": "unknown", "op": "unknown", "error": repr(exc)}
        with lock:
            log.write(json.dumps(line) + "\n")
        return chunks

    DomainDispatcherApplication.__call__ = logged


def _describe(environ: dict[str, Any], body: bytes, answer: bytes, scope: Any,
              cost_model: Any, json: Any) -> dict[str, Any]:
    found = scope.search(environ.get("HTTP_AUTHORIZATION", ""))
    svc = found.group(1) if found else "unknown"
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    op = target.rsplit(".", 1)[-1] if target else environ.get("REQUEST_METHOD", "")
    out: dict[str, Any] = {"svc": svc, "op": op, "req": len(body), "resp": len(answer)}
    if svc == "sqs":
        request = json.loads(body or b"{}")
        out["target"] = str(request.get("QueueUrl", "")).rsplit("/", 1)[-1]
        payload = len(answer) if op == "ReceiveMessage" else len(body)
        out["billed"] = (cost_model.sqs_billed_requests(payload)
                         if op in cost_model.SQS_PAYLOAD_ACTIONS else 1)
    elif svc == "dynamodb":
        request = json.loads(body or b"{}")
        response = json.loads(answer or b"{}")
        out["target"] = request.get("TableName") or ",".join(
            sorted(request.get("RequestItems", {})))
        out["wru"], out["rru"] = cost_model.dynamodb_units(op, request, response)
    elif svc == "s3":
        path = environ.get("PATH_INFO", "")
        out["target"] = path.strip("/").split("/", 1)[0]
        out["op"] = cost_model.s3_request_class(environ.get("REQUEST_METHOD", ""), path)
    return out


class CallLog:
    """The SQS calls moto has served, read back by the benchmark between phases."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def since(self, mark: int) -> Counter[str]:
        """Calls since `mark`, keyed `Action queue`; entries of batch calls as `... entries`."""
        counts: Counter[str] = Counter()
        if not self.path.exists():
            return counts
        with self.path.open("rb") as f:
            f.seek(mark)
            for line in f.read().decode(errors="replace").splitlines():
                parts = line.split()
                if len(parts) != 3:
                    continue
                action, queue, entries = parts
                counts[f"{action} {queue}"] += 1
                if entries != "0":
                    counts[f"{action} {queue} entries"] += int(entries)
        return counts


def start(*, log_dir: Path, lean: bool, host: str = "127.0.0.1",
          requests: Path | None = None) -> tuple[MotoServer, CallLog]:
    """Like quiver.devstack.moto_server.start_moto, with the call log, optionally lean."""
    port = free_port(host)
    log_path = log_dir / "moto.log"
    calls = CallLog(log_dir / "moto-calls.log")
    log = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, __file__, "-H", host, "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, **FAKE_CREDENTIALS, ENV_CALLS: str(calls.path),
             ENV_LEAN: "1" if lean else "", ENV_REQUESTS: str(requests or "")},
    )
    log.close()
    endpoint = f"http://{host}:{port}"
    wait_for_moto(process, endpoint=endpoint, log_path=log_path)
    return MotoServer(process=process, endpoint=endpoint, log_path=log_path), calls


if __name__ == "__main__":
    if os.environ.get(ENV_LEAN):
        make_lean()
    if os.environ.get(ENV_CALLS):
        count_calls(Path(os.environ[ENV_CALLS]))
    if os.environ.get(ENV_REQUESTS):
        log_requests(Path(os.environ[ENV_REQUESTS]))
    from moto.server import main

    main(sys.argv[1:])
