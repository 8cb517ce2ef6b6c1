"""A lean asyncio SQS client for the sender's hot path.

boto3 costs ~1 ms of CPU per SQS call (request model, event hooks, urllib3,
response model) plus a thread-pool hop each way; at ten messages a call that
was the sender's biggest cost after RSA. This client speaks the same wire
protocol boto3 ≥ 1.34 uses (the SQS JSON protocol: `POST /`, an
`X-Amz-Target` naming the action, JSON in and out) over a few kept-alive
HTTP/1.1 connections on the event loop, signs with its own SigV4
(`quiver.storage.sigv4`) and implements the same `Queue` contract as
the boto3 queue it replaced (now bench/boto3_queue.py, the baseline of
bench/sqs_calls.py): the same batching (`quiver.storage.sqs`), the same retry of failed
entries, the same StorageError semantics.

Everything is bounded: response size, header size, connect and read time,
attempts. A call either returns or raises StorageError within
~ATTEMPTS * (connect + read) seconds; it never hangs on a silent server.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from quiver.speedups import loads
from quiver.storage.base import (
    COPY_ATTRIBUTE,
    DEAD_LETTER_ATTRIBUTE,
    Outgoing,
    Received,
    StorageError,
)
from quiver.storage.sigv4 import SigV4Signer, amz_date
from quiver.storage.sqs import SQS_BATCH, chunk_messages, receive_count

# A ReceiveMessage answer is at most 10 * 256 KiB (1 MiB bodies since 2025) plus
# attributes and JSON escaping; anything near this is not SQS talking.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# Status line plus headers; SQS sends well under 1 KiB.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_INTERIM = 5  # 1xx answers tolerated before the real one
CONNECT_TIMEOUT = 5.0
# Read timeout = the call's long-poll wait + this margin, so a ReceiveMessage
# that waits 20 s is not cut off, and a dead server is noticed soon after.
READ_MARGIN = 10.0
# SQS (and any load balancer in between) closes idle connections after some
# tens of seconds; reusing one that old risks a reset, so it is closed instead.
IDLE_LIMIT = 20.0
# Concurrent requests per endpoint (long polls included); more wait for a slot.
MAX_CONNECTIONS = 16
# Tries per call for faults that may heal (network, 5xx, throttling): the same
# count the boto3 baseline used for failed batch entries.
ATTEMPTS = 3
BACKOFF = 0.1
JSON_CONTENT_TYPE = "application/x-amz-json-1.0"
USER_AGENT = "quiver-sqs-lean/1"
SYSTEM_ATTRIBUTES = ("ApproximateReceiveCount", "SentTimestamp")
# DelaySeconds is capped by SQS at 15 minutes.
MAX_DELAY = 900

# Error codes worth another try (botocore's standard retry mode treats the same
# ones as throttling or transient).
RETRYABLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded",
    "LimitExceededException", "SlowDown", "PriorRequestNotComplete", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "InternalFailure", "ServiceUnavailable",
    "KmsThrottled",
})


class SqsError(StorageError):
    """An error answer from SQS (or from something in front of it)."""

    def __init__(self, *, action: str, code: str, message: str, status: int) -> None:
        super().__init__(f"{action}: {code}: {message}")
        self.action = action
        self.code = code
        self.detail = message
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.status >= 500 or self.status == 429 or self.code in RETRYABLE_CODES


class _TransportError(StorageError):
    """The exchange failed (connect, reset, timeout, malformed HTTP): worth a retry."""


class _StaleConnection(Exception):
    """A reused connection was closed by the server before it answered."""


@dataclass(frozen=True, slots=True)
class BatchFailure:
    id: str
    code: str
    message: str
    sender_fault: bool


# ---------------------------------------------------------------------------
# Response parsing: garbage in → StorageError, never another exception.


def _load_json(action: str, body: bytes) -> dict[str, Any]:
    try:
        data = loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise StorageError(f"{action}: unreadable response: {exc}") from None
    if not isinstance(data, dict):
        raise StorageError(f"{action}: response is not a JSON object")
    return data


def _text(action: str, value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise StorageError(f"{action}: {what} is not a string")
    return value


def _count(action: str, value: Any, what: str) -> int:
    # ASCII digits only: int() would also take other scripts' digits and spaces.
    if not (isinstance(value, str) and 0 < len(value) <= 20 and value.isascii()
            and value.isdigit()):
        raise StorageError(f"{action}: {what} is not a number: {str(value)[:40]!r}")
    return int(value)


def _is_copy(attributes: Any) -> bool:
    """Whether a message's attributes mark it as sent by quiver; anything unreadable
    counts as marked (its finals are then claimed: the safe side)."""
    if attributes is None:
        return False
    if not isinstance(attributes, dict):
        return True
    return COPY_ATTRIBUTE in attributes or DEAD_LETTER_ATTRIBUTE in attributes


def parse_received(body: bytes) -> list[Received]:
    """A ReceiveMessage answer's messages."""
    action = "ReceiveMessage"
    messages = _load_json(action, body).get("Messages", [])
    if not isinstance(messages, list):
        raise StorageError(f"{action}: Messages is not a list")
    out = []
    for m in messages:
        if not isinstance(m, dict):
            raise StorageError(f"{action}: a message is not an object")
        attrs = m.get("Attributes", {})
        if not isinstance(attrs, dict):
            raise StorageError(f"{action}: Attributes is not an object")
        count = attrs.get("ApproximateReceiveCount")
        sent = attrs.get("SentTimestamp")
        out.append(Received(
            body=_text(action, m.get("Body"), "Body"),
            receipt=_text(action, m.get("ReceiptHandle"), "ReceiptHandle"),
            message_id=_text(action, m.get("MessageId"), "MessageId"),
            receive_count=1 if count is None else _count(action, count, "ApproximateReceiveCount"),
            sent_at=0.0 if sent is None else _count(action, sent, "SentTimestamp") / 1000.0,
            copy=_is_copy(m.get("MessageAttributes")),
        ))
    return out


def parse_batch_failures(action: str, body: bytes) -> list[BatchFailure]:
    """The `Failed` entries of a *Batch answer."""
    failed = _load_json(action, body).get("Failed", [])
    if not isinstance(failed, list):
        raise StorageError(f"{action}: Failed is not a list")
    out = []
    for f in failed:
        if not isinstance(f, dict):
            raise StorageError(f"{action}: a Failed entry is not an object")
        fault = f.get("SenderFault", False)
        if not isinstance(fault, bool):
            raise StorageError(f"{action}: SenderFault is not a boolean")
        message = f.get("Message", "")
        out.append(BatchFailure(
            id=_text(action, f.get("Id"), "Failed Id"),
            code=_text(action, f.get("Code"), "Failed Code"),
            message=message if isinstance(message, str) else "",
            sender_fault=fault,
        ))
    return out


def _printable(text: str, limit: int = 300) -> str:
    """Error text from the wire, safe for a log line."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def parse_error(*, action: str, status: int, body: bytes) -> SqsError:
    """An error answer as SqsError: `__type` (short form) and `message`.

    Never raises: a body that is not the JSON error shape (an HTML page from a
    proxy, say) still yields an error naming the HTTP status.
    """
    code, message = f"HTTP{status}", ""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        message = body[:300].decode("utf-8", "replace")
    else:
        if isinstance(data, dict):
            raw_type = data.get("__type")
            if isinstance(raw_type, str) and raw_type:
                # "com.amazonaws.sqs#QueueDoesNotExist" or "QueueDoesNotExist:http://..."
                code = raw_type.split(":", 1)[0].rsplit("#", 1)[-1] or code
            text = data.get("message", data.get("Message"))
            if isinstance(text, str):
                message = text
    return SqsError(
        action=action, code=_printable(code, 100), message=_printable(message), status=status
    )


# ---------------------------------------------------------------------------
# Request bodies (the JSON boto3 sends for the same calls).


def receive_payload(
    url: str, *, max_messages: int, wait_seconds: int, visibility: int
) -> dict[str, Any]:
    return {
        "QueueUrl": url,
        "MaxNumberOfMessages": max(1, min(SQS_BATCH, max_messages)),
        "WaitTimeSeconds": wait_seconds,
        "VisibilityTimeout": visibility,
        "MessageSystemAttributeNames": list(SYSTEM_ATTRIBUTES),
        "MessageAttributeNames": [COPY_ATTRIBUTE, DEAD_LETTER_ATTRIBUTE],
    }


def delete_entries(receipts: Sequence[str]) -> list[dict[str, Any]]:
    return [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)]


def visibility_entries(receipts: Sequence[str], *, seconds: int) -> list[dict[str, Any]]:
    return [{"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": seconds}
            for i, r in enumerate(receipts)]


def send_entries(chunk: Sequence[Outgoing]) -> list[dict[str, Any]]:
    entries = []
    for i, m in enumerate(chunk):
        entry: dict[str, Any] = {"Id": str(i), "MessageBody": m.body}
        if m.delay_seconds:
            entry["DelaySeconds"] = min(MAX_DELAY, m.delay_seconds)
        if m.attributes:
            entry["MessageAttributes"] = {
                k: {"DataType": "String", "StringValue": v} for k, v in m.attributes.items()
            }
        entries.append(entry)
    return entries


# ---------------------------------------------------------------------------
# HTTP/1.1 over asyncio streams.


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class _Connection:
    __slots__ = ("generation", "idle_since", "reader", "writer")

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, generation: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.generation = generation
        self.idle_since = 0.0

    def usable(self, now: float) -> bool:
        return (not self.writer.is_closing() and not self.reader.at_eof()
                and now - self.idle_since < IDLE_LIMIT)

    def close(self) -> None:
        # abort, not close: nothing is left to flush, and an unanswered TLS
        # close_notify must not keep the socket around.
        self.writer.transport.abort()


def _parse_head(head: bytes) -> tuple[int, bool, dict[str, str]]:
    """(status, HTTP/1.1?, headers) from the bytes before the blank line."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not (
        len(parts[1]) == 3 and parts[1].isdigit()
    ):
        raise _TransportError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    fields = [line for line in lines[1:] if line]
    if len(fields) > MAX_HEADERS:
        raise _TransportError(f"more than {MAX_HEADERS} response headers")
    for line in fields:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise _TransportError(f"malformed response header: {line[:80]!r}")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return status, parts[0] == b"HTTP/1.1", headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _TransportError(f"bad chunk size {size_text[:20]!r}") from None
        if size < 0 or total + size > MAX_RESPONSE_BYTES:
            raise _TransportError(f"response larger than {MAX_RESPONSE_BYTES} bytes")
        if size == 0:
            # Trailers, up to the blank line; they carry nothing we use.
            for _ in range(MAX_HEADERS + 1):
                if await reader.readuntil(b"\r\n") == b"\r\n":
                    return b"".join(parts)
            raise _TransportError("too many trailer lines")
        parts.append(await reader.readexactly(size))
        total += size
        if await reader.readexactly(2) != b"\r\n":
            raise _TransportError("chunk not followed by CRLF")


async def _read_response(conn: _Connection, *, reused: bool) -> tuple[HttpResponse, bool]:
    """One response; (response, whether the connection may carry another request)."""
    reader = conn.reader
    for _ in range(MAX_INTERIM + 1):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if reused and not exc.partial:
                raise _StaleConnection from None
            raise _TransportError("connection closed before the response") from None
        except asyncio.LimitOverrunError:
            raise _TransportError(f"response head over {MAX_HEAD_BYTES} bytes") from None
        status, http11, headers = _parse_head(head[:-4])
        if status >= 200:
            break
        # 1xx interim answers (never asked for) precede the real one.
        reused = False
    else:
        raise _TransportError(f"more than {MAX_INTERIM} interim (1xx) answers")
    connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep = "close" not in connection if http11 else "keep-alive" in connection
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        text = headers["content-length"]
        if not (text.isascii() and text.isdigit() and len(text) <= 12):
            raise _TransportError(f"bad Content-Length {text[:20]!r}")
        length = int(text)
        if length > MAX_RESPONSE_BYTES:
            raise _TransportError(f"response of {length} bytes is over {MAX_RESPONSE_BYTES}")
        body = await reader.readexactly(length)
    elif status in (204, 304):
        body = b""
    else:
        # Delimited by the close: read to EOF, bounded.
        buffer = bytearray()
        while more := await reader.read(MAX_RESPONSE_BYTES + 1 - len(buffer)):
            buffer += more
            if len(buffer) > MAX_RESPONSE_BYTES:
                raise _TransportError(f"response larger than {MAX_RESPONSE_BYTES} bytes")
        body = bytes(buffer)
        keep = False
    return HttpResponse(status=status, headers=headers, body=body), keep


class HttpPool:
    """Kept-alive HTTP/1.1 connections to one endpoint, one request at a time each."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        max_connections: int = MAX_CONNECTIONS,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._generation = 0
        self.opened = 0  # connections opened so far (a metric; tests count reuse with it)

    async def _open(self) -> _Connection:
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None,
                    limit=MAX_HEAD_BYTES,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise _TransportError(
                f"cannot connect to {self.host}:{self.port}: {exc or type(exc).__name__}"
            ) from None
        self.opened += 1
        return _Connection(reader, writer, self._generation)

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # most recently used: least likely to be closed
            if conn.usable(now):
                return conn
            conn.close()
        return None

    async def request(self, data: bytes, *, timeout: float) -> HttpResponse:
        """Send one complete request (head and body) and read its response.

        A reused connection that turns out to be closed before answering is
        replaced by a fresh one once; every other fault raises.
        """
        async with self._slots:
            conn = self._take_idle()
            reused = conn is not None
            if conn is None:
                conn = await self._open()
            try:
                try:
                    async with asyncio.timeout(timeout):
                        response, keep = await self._exchange(conn, data, reused=reused)
                except _StaleConnection:
                    conn.close()
                    conn = await self._open()
                    async with asyncio.timeout(timeout):
                        response, keep = await self._exchange(conn, data, reused=False)
            except BaseException:
                # Cancelled, timed out or broken mid-exchange: the connection's
                # state is unknown, so it is never reused.
                conn.close()
                raise
            if keep and conn.generation == self._generation:
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            else:
                conn.close()
            return response

    @staticmethod
    async def _exchange(
        conn: _Connection, data: bytes, *, reused: bool
    ) -> tuple[HttpResponse, bool]:
        try:
            conn.writer.write(data)
            await conn.writer.drain()
        except (ConnectionError, OSError) as exc:
            if reused:
                raise _StaleConnection from None
            raise _TransportError(f"send failed: {exc}") from None
        try:
            return await _read_response(conn, reused=reused)
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            if reused and isinstance(exc, ConnectionResetError):
                raise _StaleConnection from None
            raise _TransportError(f"receive failed: {exc}") from None
        except asyncio.IncompleteReadError:
            raise _TransportError("connection closed mid-response") from None
        except asyncio.LimitOverrunError:
            raise _TransportError(f"a chunk-size line over {MAX_HEAD_BYTES} bytes") from None

    async def close(self) -> None:
        """Close idle connections; busy ones close when their request ends.

        The pool stays usable: a later request opens a fresh connection.
        """
        self._generation += 1
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        await asyncio.sleep(0)  # let the transports run their close callbacks


# ---------------------------------------------------------------------------
# The client and the queue.


def _endpoint(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, Host header) of the endpoint a queue URL names."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"queue URL must be http(s)://host/...: {url!r}")
    host = parts.hostname
    if any(c in host for c in "\r\n \t@/") or any(c in url for c in "\r\n"):
        raise ValueError(f"queue URL has characters not allowed in a host: {url!r}")
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    return parts.scheme, host, port, host_header


def _header_safe(value: str, what: str) -> str:
    if "\r" in value or "\n" in value:
        raise StorageError(f"{what} contains a line break; refusing to send it as a header")
    return value


class LeanSqsClient:
    """Signs and sends SQS JSON-protocol calls; one connection pool per endpoint.

    `credentials` is a botocore credentials object (`Session().get_credentials()`):
    env vars, profiles and the ECS task role all work, and rotating credentials
    are read on every call. A refresh that is due runs on a worker thread, since
    it may fetch from the container credentials endpoint.
    """

    def __init__(
        self,
        *,
        region: str,
        credentials: Any,
        max_connections: int = MAX_CONNECTIONS,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_margin: float = READ_MARGIN,
    ) -> None:
        if credentials is None:
            raise ValueError(
                "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, "
                "or run with a task role"
            )
        self._credentials = credentials
        self._signer = SigV4Signer(region=region, service="sqs")
        self._max_connections = max_connections
        self._ssl_context = ssl_context
        self._connect_timeout = connect_timeout
        self._read_margin = read_margin
        self._pools: dict[tuple[str, str, int], HttpPool] = {}
        # Queue URL -> (its endpoint's pool, Host header): parsed once, not per call.
        self._routes: dict[str, tuple[HttpPool, str]] = {}
        self._checked_token: str | None = None

    def queue(self, url: str) -> LeanSqsQueue:
        return LeanSqsQueue(self, url)

    def _route(self, url: str) -> tuple[HttpPool, str]:
        route = self._routes.get(url)
        if route is None:
            route = self._routes[url] = (self.pool(url), _endpoint(url)[3])
        return route

    def pool(self, url: str) -> HttpPool:
        """The connection pool for the endpoint a queue URL names."""
        scheme, host, port, _ = _endpoint(url)
        key = (scheme, host, port)
        pool = self._pools.get(key)
        if pool is None:
            context = None
            if scheme == "https":
                context = self._ssl_context or ssl.create_default_context()
            pool = HttpPool(
                host=host, port=port, ssl_context=context,
                max_connections=self._max_connections, connect_timeout=self._connect_timeout,
            )
            self._pools[key] = pool
        return pool

    async def _frozen(self) -> Any:
        creds = self._credentials
        try:
            refresh_needed = getattr(creds, "refresh_needed", None)
            if refresh_needed is not None and refresh_needed():
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(None, creds.get_frozen_credentials)
            return creds.get_frozen_credentials()
        except Exception as exc:  # botocore raises several unrelated types here
            raise _TransportError(f"cannot read AWS credentials: {exc}") from exc

    async def request_bytes(
        self, *, url: str, host_header: str, action: str, body: bytes
    ) -> bytes:
        """The complete signed HTTP request for `action` with this JSON body."""
        frozen = await self._frozen()
        date = amz_date()
        target = f"AmazonSQS.{action}"
        signed = {
            "content-type": JSON_CONTENT_TYPE,
            "host": host_header,
            "x-amz-date": date,
            "x-amz-target": target,
            # Ask for query-compatible error codes, as boto3 does.
            "x-amzn-query-mode": "true",
        }
        token = frozen.token
        if token:
            if token != self._checked_token:
                self._checked_token = _header_safe(token, "the session token")
            signed["x-amz-security-token"] = token
        authorization = self._signer.authorization(
            access_key=_header_safe(frozen.access_key, "the access key id"),
            secret_key=frozen.secret_key, headers=signed, body=body, date=date,
        )
        token_line = f"X-Amz-Security-Token: {token}\r\n" if token else ""
        head = (
            f"POST / HTTP/1.1\r\nHost: {host_header}\r\n"
            f"Content-Type: {JSON_CONTENT_TYPE}\r\nX-Amz-Target: {target}\r\n"
            f"x-amzn-query-mode: true\r\nX-Amz-Date: {date}\r\n{token_line}"
            f"Authorization: {authorization}\r\nUser-Agent: {USER_AGENT}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def call(
        self, *, url: str, action: str, payload: Mapping[str, Any], wait_seconds: int = 0
    ) -> bytes:
        """Call `action`; the raw JSON answer body, or StorageError after ATTEMPTS tries."""
        pool, host_header = self._route(url)
        # ensure_ascii (the default) keeps any lone surrogate escaped, so encoding
        # cannot fail; SQS then judges the content, as it does for boto3.
        body = json.dumps(payload, separators=(",", ":")).encode()
        timeout = wait_seconds + self._read_margin
        last: StorageError = StorageError(f"{action}: not tried")
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(random.uniform(0.5, 1.0) * BACKOFF * 2**attempt)
            try:
                data = await self.request_bytes(
                    url=url, host_header=host_header, action=action, body=body)
                response = await pool.request(data, timeout=timeout)
            except TimeoutError:
                last = _TransportError(f"{action}: no answer within {timeout:g} s")
                continue
            except _TransportError as exc:
                last = _TransportError(f"{action}: {exc}")
                continue
            if response.status == 200:
                return response.body
            error = parse_error(action=action, status=response.status, body=response.body)
            if not error.retryable:
                raise error
            last = error
        if isinstance(last, SqsError):
            raise SqsError(action=action, code=last.code, status=last.status,
                           message=f"{last.detail} (after {ATTEMPTS} tries)") from last
        raise StorageError(f"{last} (after {ATTEMPTS} tries)") from last

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()

    @property
    def connections_opened(self) -> int:
        return sum(pool.opened for pool in self._pools.values())


# Weight of the latest answer in the running bytes-per-message figure: a change in
# the queue's message sizes shows within a few receives.
SIZE_WEIGHT = 0.2


class LeanSqsQueue:
    """The `Queue` protocol over LeanSqsClient.

    A receive asks for as many messages as fill whole 64 KB billing chunks of the
    answer (`quiver.storage.sqs.receive_count`), from the bytes per message of the
    answers so far: ten 7 KB messages bill two requests, eight bill one."""

    def __init__(self, client: LeanSqsClient, url: str) -> None:
        _endpoint(url)  # refuse a bad URL now, not on the first call
        self.client = client
        self.url = url
        self.bytes_per_message: float | None = None
        # receive_size's answers for the bytes per message they were worked out for.
        self._planned_for: float | None = None
        self._plan: dict[int, int] = {}

    async def receive(
        self, *, max_messages: int, wait_seconds: int, visibility: int
    ) -> list[Received]:
        payload = receive_payload(
            self.url, max_messages=self.receive_size(max_messages),
            wait_seconds=wait_seconds, visibility=visibility,
        )
        body = await self.client.call(
            url=self.url, action="ReceiveMessage", payload=payload, wait_seconds=wait_seconds
        )
        received = parse_received(body)
        if received:
            seen = len(body) / len(received)
            last = self.bytes_per_message
            self.bytes_per_message = seen if last is None else last + SIZE_WEIGHT * (seen - last)
        return received

    def receive_size(self, limit: int) -> int:
        # Asked on every completion (the sender's room for a whole receive), while the
        # answer changes only when a receive moves the bytes per message: worked out
        # once per receive, not ten prefixes per message.
        per = self.bytes_per_message
        if per != self._planned_for:
            self._planned_for, self._plan = per, {}
        size = self._plan.get(limit)
        if size is None:
            size = self._plan[limit] = receive_count(limit, per)
        return size

    async def delete(self, receipts: Sequence[str]) -> None:
        await self._every_chunk("DeleteMessageBatch", delete_entries, receipts)

    async def change_visibility(self, receipts: Sequence[str], *, seconds: int) -> None:
        await self._every_chunk(
            "ChangeMessageVisibilityBatch",
            lambda chunk: visibility_entries(chunk, seconds=seconds), receipts,
        )

    async def _every_chunk(
        self,
        action: str,
        entries: Callable[[Sequence[str]], list[dict[str, Any]]],
        receipts: Sequence[str],
    ) -> None:
        # Every chunk is tried: one stale receipt handle must not leave the messages
        # of the next chunks undeleted or invisible.
        errors = []
        for start in range(0, len(receipts), SQS_BATCH):
            try:
                await self._retrying(action, entries(receipts[start:start + SQS_BATCH]))
            except StorageError as exc:
                errors.append(str(exc))
        if errors:
            raise StorageError("; ".join(errors))

    async def send(self, messages: Sequence[Outgoing]) -> None:
        for chunk in chunk_messages(messages):
            await self._retrying("SendMessageBatch", send_entries(chunk))

    async def _retrying(self, action: str, entries: list[dict[str, Any]]) -> None:
        pending = entries
        for attempt in range(ATTEMPTS):
            body = await self.client.call(
                url=self.url, action=action, payload={"QueueUrl": self.url, "Entries": pending}
            )
            failures = parse_batch_failures(action, body)
            if not failures:
                return
            # Sender faults (bad receipt handle, invalid body) will not heal on retry.
            fatal = [f for f in failures if f.sender_fault]
            if fatal:
                raise StorageError(f"{action}: {fatal[0].code}: {_printable(fatal[0].message)}")
            failed_ids = {f.id for f in failures}
            pending = [e for e in pending if e["Id"] in failed_ids]
            if not pending:
                raise StorageError(f"{action}: failures name entries that were not sent")
            await asyncio.sleep(BACKOFF * 2**attempt)
        raise StorageError(f"{action}: {len(pending)} entries failed after {ATTEMPTS} tries")

    async def close(self) -> None:
        """Close the client's idle connections (it stays usable; see HttpPool.close)."""
        await self.client.close()


def lean_queue(
    *, url: str, region: str, credentials: Any, max_connections: int = MAX_CONNECTIONS
) -> LeanSqsQueue:
    """A queue on its own client. Queues on one endpoint should rather share one
    `LeanSqsClient` (`client.queue(url)`), and with it a connection pool."""
    client = LeanSqsClient(region=region, credentials=credentials, max_connections=max_connections)
    return client.queue(url)

