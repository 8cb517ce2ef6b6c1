"""Policy changes while mail is in flight: poll the policy's source, apply what can change live.

Live: `throttles`, `retry`, `tls`, `suppression`, `controls`, `guards` and
`delivery.pipeline_next`. Ready queues rebind to their new limits (open connections
above a lowered `max_connections` finish their current message and close as they
go idle; a new `max_rate` paces the next send), new TLS modes apply to each
queue's next connection, and new retry rules apply to every outcome from then on.
Everything else (sources, pools, DKIM keys, intake, the rest of `delivery`,
providers, the proxy tier) shapes objects built at start, so a change there is reported as needing a
restart and not applied; a rolling deploy does that without losing mail.
`restart_digest` names that part of a text, so a deploy can put it in the task
definition and roll the senders exactly when it changes.

A policy that fails validation changes nothing: every problem is logged with its
path, once per distinct text, and the running policy stays in force. A source that
cannot be read (SSM throttling, a file being replaced) is retried at the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

from quiver.policy.handle import PolicyHandle, handle_of
from quiver.policy.load import PolicyError, parse_policy
from quiver.policy.model import Policy

log = logging.getLogger("quiver.policy")

DEFAULT_INTERVAL = 30.0
# `guards` is read by the export path, never by a sender: a change to it rolls nothing.
_LIVE = frozenset({"throttles", "retry", "tls", "suppression", "controls", "guards"})
# What throttle and TLS rules are matched against: while these differ, they wait too.
_MATCHED = ("sources", "providers")
_RULES = frozenset({"throttles", "tls"})
_IGNORED = frozenset({"warnings"})


@dataclass(frozen=True, slots=True)
class PolicySource:
    """Where the running policy came from, to poll for changes (`interval` 0: never)."""

    origin: str
    read: Callable[[], str]
    text: str
    interval: float = DEFAULT_INTERVAL


@dataclass(frozen=True, slots=True)
class Change:
    """What a new policy text did: `applied` live, `restart` left for a restart."""

    applied: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


def merge_live(current: Policy, new: Policy) -> tuple[Policy, Change]:
    """`current` with the live parts of `new`; and which parts differed, by kind."""
    # Throttles name sources and providers: new rules over the running ones could
    # match nothing (a renamed source left unthrottled), so they wait with them.
    matched_changed = any(getattr(current, n) != getattr(new, n) for n in _MATCHED)
    applied: list[str] = []
    restart: list[str] = []
    for f in fields(Policy):
        name = f.name
        if name in _IGNORED or getattr(current, name) == getattr(new, name):
            continue
        if name == "delivery":
            if current.delivery.pipeline_next != new.delivery.pipeline_next:
                applied.append("delivery.pipeline_next")
            if replace(current.delivery, pipeline_next=new.delivery.pipeline_next) != new.delivery:
                restart.append("delivery")
        elif name in _LIVE and not (name in _RULES and matched_changed):
            applied.append(name)
        else:
            restart.append(name)
    merged = replace(
        current, retry=new.retry, suppression=new.suppression, controls=new.controls,
        guards=new.guards,
        tls=new.tls if "tls" in applied else current.tls,
        throttles=new.throttles if "throttles" in applied else current.throttles,
        delivery=replace(current.delivery, pipeline_next=new.delivery.pipeline_next),
    )
    return merged, Change(applied=tuple(applied), restart=tuple(restart))


class PolicyWatcher:
    """Reads `source` every `source.interval` s; puts live changes in the handle
    (`current`, shared with the components that read them), then calls `apply`, the
    one rebind hook."""

    def __init__(
        self, source: PolicySource, *, current: Policy | PolicyHandle,
        apply: Callable[[Policy], None],
    ) -> None:
        self.origin = source.origin
        self.handle = handle_of(current)
        self.interval = source.interval
        self._read = source.read
        self._apply = apply
        # Digests of the last text seen and of the last text refused: an unchanged
        # source is not parsed again, and a refused one is not logged at every poll.
        self._seen: str | None = _digest(source.text)
        self._refused: str | None = None
        # The digest of the text whose live sections are in force (the live status
        # shows it beside the handle's version).
        self.digest: str = _digest(source.text)
        self.reloads = 0
        self.failures = 0

    @property
    def current(self) -> Policy:
        return self.handle.current

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await stop.wait()
            if not stop.is_set():
                try:
                    await self.check()
                except Exception as exc:  # a reload must never end the watching
                    log.error("policy %s: reload failed, the running policy stays: %s",
                              self.origin, _one_line(repr(exc)))

    async def check(self) -> Change | None:
        """Read once and apply what changed; None if the text is as before (or unreadable)."""
        try:
            # Reading may be a blocking SSM call: off the event loop.
            text = await asyncio.to_thread(self._read)
        except PolicyError as exc:
            log.warning("policy %s not re-read (kept as it is): %s", self.origin,
                        _one_line("; ".join(exc.problems)))
            return None
        digest = _digest(text)
        if digest == self._seen:
            return None
        try:
            new = parse_policy(text, origin=self.origin)
        except PolicyError as exc:
            if digest != self._refused:
                self._refused = digest
                self.failures += 1
                log.error("policy %s refused, the running policy stays in force: %s",
                          self.origin, _one_line("; ".join(exc.problems)))
            return Change(errors=tuple(exc.problems))
        merged, change = merge_live(self.current, new)
        if change.applied:
            previous = self.handle.current
            self.handle.update(merged)
            try:
                self._apply(merged)
            except BaseException:
                self.handle.update(previous)  # not marked seen: the next poll tries again
                raise
            self.reloads += 1
            self.digest = digest
            log.info("policy %s reloaded: %s applied", self.origin, ", ".join(change.applied))
        self._seen, self._refused = digest, None
        if change.restart:
            log.warning("policy %s: %s changed; takes effect at the next restart",
                        self.origin, ", ".join(change.restart))
        for warning in new.warnings:
            log.warning("policy: %s", _one_line(warning))
        return change


def restart_digest(text: str) -> str:
    """A SHA-256 of the sections a running sender cannot take live (everything but
    `throttles`, `retry`, `tls`, `suppression`, `controls`, `guards` and
    `delivery.pipeline_next`), over the parsed TOML: comments, layout and key order
    do not change it. `throttles` and `tls` wait for a restart only when `sources` or
    `providers` change too, and those are in the digest."""
    data = tomllib.loads(text)
    for name in _LIVE:
        data.pop(name, None)
    delivery = data.get("delivery")
    if isinstance(delivery, dict):
        delivery.pop("pipeline_next", None)
    # default=str: TOML dates and times have no JSON form; their text is stable.
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _one_line(text: str) -> str:
    # The sender logs one JSON object per line with the message unescaped: no line
    # breaks, and no double quotes, which would end its string early.
    return " ".join(text.split()).replace('"', "'")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
