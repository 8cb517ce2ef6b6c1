"""The one path every boto3 call of the stores takes: errors become StorageError.

boto3 is synchronous. The sender's stores run its calls on a small thread pool
(`call`), so the event loop keeps serving SMTP connections while a request is in
flight; a Lambda, which has no loop to keep, makes the same call in place
(`call_sync`). Either way a caller sees StorageError, never botocore's types.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from quiver.storage.base import StorageError

T = TypeVar("T")

_default_executor: ThreadPoolExecutor | None = None


def aws_executor() -> ThreadPoolExecutor:
    global _default_executor
    if _default_executor is None:
        _default_executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="aws")
    return _default_executor


def call_sync(fn: Callable[..., T], **kwargs: Any) -> T:
    """`fn(**kwargs)`, its botocore errors raised as StorageError (cause kept)."""
    try:
        return fn(**kwargs)
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(f"{getattr(fn, '__name__', 'call')}: {exc}") from exc


async def call(fn: Callable[..., T], **kwargs: Any) -> T:
    """`call_sync` on the AWS thread pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(aws_executor(), lambda: call_sync(fn, **kwargs))


def query_all_sync(client: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Every item a DynamoDB Query (`kwargs`) matches, page after page."""
    items: list[dict[str, Any]] = []
    while True:
        response = call_sync(client.query, **kwargs)
        items.extend(response.get("Items", []))
        if "LastEvaluatedKey" not in response:
            return items
        kwargs = {**kwargs, "ExclusiveStartKey": response["LastEvaluatedKey"]}


async def query_all(client: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """`query_all_sync` on the AWS thread pool, a page per call."""
    items: list[dict[str, Any]] = []
    while True:
        response = await call(client.query, **kwargs)
        items.extend(response.get("Items", []))
        if "LastEvaluatedKey" not in response:
            return items
        kwargs = {**kwargs, "ExclusiveStartKey": response["LastEvaluatedKey"]}


def error_code(exc: StorageError) -> str | None:
    """The AWS error code behind a translated error ("NoSuchKey", ...), if it had one."""
    cause = exc.__cause__
    if isinstance(cause, ClientError):
        code = cause.response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None
