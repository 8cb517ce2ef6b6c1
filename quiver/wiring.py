"""The composition root: build the sender from a policy, deployment settings and AWS
clients. It sits above the sender and the scheduler, which never import each other."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from quiver.adaptive.change import ChangeRecorder
from quiver.adaptive.engine import AdaptiveEngine
from quiver.bounce import default_classifier
from quiver.controls.active import ActiveControls, hold_reason
from quiver.controls.poller import ControlPoller
from quiver.dkim import signers_from_policy
from quiver.dkim.pool import signing_for
from quiver.policy import Policy
from quiver.policy.handle import PolicyHandle
from quiver.policy.reload import PolicySource, PolicyWatcher
from quiver.returnpath import KeyRing, KeyRingError, ReturnPaths, load_key_ring
from quiver.returnpath.refresh import KeyRingRefresher
from quiver.routing.mx import MxResolver
from quiver.routing.providers import ProviderMatcher
from quiver.routing.sources import SourcePicker
from quiver.scheduler.health import ProxyHealth
from quiver.scheduler.scheduler import Scheduler
from quiver.scheduler.throttle import Destination
from quiver.sender.complete import Completer
from quiver.sender.engine import Sender
from quiver.sender.gauges import TaskGauges
from quiver.sender.lifecycle import MessageHandler
from quiver.sender.metrics import OutcomeMetrics
from quiver.sender.source_metrics import SourceMetrics
from quiver.settings import ENV_OUTBOUND_MAX_RECEIVES, Deployment
from quiver.status import record
from quiver.status.liveness import DEFAULT_STALL, LoopBeat
from quiver.status.server import StatusServer
from quiver.status.snapshot import Controls, Paused, StatusBoard
from quiver.storage.aws import S3BodyStore, SqsEventSink, secret_reader
from quiver.storage.base import Membership
from quiver.storage.dynamo import (
    DynamoControls,
    DynamoFinals,
    DynamoMembership,
    DynamoReturnPaths,
    DynamoSuppression,
)
from quiver.storage.dynamo_lean import LeanDynamoClient
from quiver.storage.dynamo_rates import DynamoRates
from quiver.storage.dynamo_warmup import DynamoWarmup
from quiver.storage.membership import FixedShare
from quiver.storage.sqs_lean import LeanSqsClient
from quiver.storage.warmup import MemoryWarmup, WarmupStore
from quiver.suppression import SuppressionCheck, SuppressionWriter
from quiver.unsubscribe.headers import UnsubscribeHeaders
from quiver.warmup.days import DayKeeper
from quiver.warmup.gate import WarmupGate

log = logging.getLogger("quiver.sender")


def build_sender(
    *,
    policy: Policy,
    policy_dir: Path,
    deployment: Deployment,
    session: Any,
    nameservers: list[tuple[str, int]] | None,
    policy_source: PolicySource | None = None,
    status_address: tuple[str, int] | None = None,
    loop_stall: float = DEFAULT_STALL,
) -> Sender:
    """The sender, with its status endpoint on `status_address` when given (bound
    here: a port in use is an OSError now, not a failure later)."""
    from botocore.config import Config

    board: StatusBoard | None = None
    server: StatusServer | None = None
    if status_address is not None:
        beat = LoopBeat(stall=loop_stall)
        # The board is built below; the server only calls this once the sender runs.
        server = StatusServer(host=status_address[0], port=status_address[1], beat=beat,
                              snapshot=lambda: _board(board).snapshot())

    # One connection per concurrent AWS call; the default pool of 10 would queue them.
    config = Config(max_pool_connections=32, retries={"mode": "standard", "max_attempts": 5})
    s3 = session.client("s3", config=config)
    # SQS is on the hot path (about 0.2 calls per message): the lean client costs a
    # quarter of boto3's CPU per call. Long polls hold a connection for their wait.
    sqs = LeanSqsClient(
        region=deployment.region, credentials=session.get_credentials(), max_connections=32
    )
    outbound = sqs.queue(deployment.outbound_queue_url)
    metrics = OutcomeMetrics()
    events = SqsEventSink(sqs.queue(deployment.events_queue_url))
    finals = (DynamoFinals(session.client("dynamodb", config=config), deployment.finals_table)
              if deployment.finals_table else None)
    completer = Completer(
        on_durable=metrics.count,
        queue=outbound,
        dlq=sqs.queue(deployment.outbound_dlq_url),
        sink=events,
        confirm=finals.confirm if finals is not None else None,
    )
    resolver = MxResolver(
        nameservers=nameservers,
        providers=ProviderMatcher(policy.providers),
        routes=dict(policy.delivery.routes),
    )
    membership: Membership = FixedShare()
    me = task_id()
    if deployment.senders_table:
        membership = DynamoMembership(
            client=session.client("dynamodb", config=config), table=deployment.senders_table,
            task_id=me, interval=policy.intake.heartbeat, stale=3 * policy.intake.heartbeat,
            # Each heartbeat carries the status record: fleet-wide status from the table.
            status=lambda: record.encode(_board(board).snapshot()),
        )
    # One recorder for every adaptive change this sender makes (rates, suspensions,
    # warm-up days): their events on the events queue, their EMF on stdout.
    changes = ChangeRecorder(events, metrics_out=sys.stdout)
    warmup = _warmup(policy, deployment, session, config, changes)
    picker = SourcePicker(policy, warmup=warmup)
    health = ProxyHealth(policy=policy, picker=picker)
    # The live sections' one holder: the scheduler and the handler read it, a reload
    # updates it (the other readers above are restart-only).
    live = PolicyHandle(policy)
    control_store, rate_store = _control_tables(deployment, session, config)
    controls = ActiveControls() if control_store is not None else None
    transport = Scheduler(
        policy=live, resolver=resolver, picker=picker, seat=membership.position, health=health,
        controls=controls,
    )
    engine = AdaptiveEngine(
        policy=live, recorder=changes,
        static_max=transport.static_rate, apply_rate=transport.adapt, controls=controls,
        control_store=control_store, rate_store=rate_store)
    transport.observe = engine.observe
    transport.paces = engine.paces
    poller = ControlPoller(control_store, controls, rates=rate_store, on_rates=engine.shared,
                           interval=lambda: live.current.controls.poll) \
        if control_store is not None and controls is not None else None
    # Sources, providers and nodes are restart-only: the metrics' bounds are fixed here.
    metrics.sources = SourceMetrics(sources=policy.sources, providers=policy.providers,
                                    connections=transport.connections)
    metrics.gauges = TaskGauges(held=lambda: sender.in_hand,
                                waiting=transport.waiting_on_limits,
                                nodes=sorted(policy.proxy.nodes), down=lambda: health.down)
    board = StatusBoard(task_id=me, policy=live, scheduler=transport, health=health,
                        share=membership.share, adaptive=engine.status,
                        controls=_control_rows(controls) if controls is not None else None,
                        paused=_paused(controls) if controls is not None else None)
    if server is not None:
        board.loop_age = server.beat.age
    signers = signers_from_policy(
        policy.dkim,
        load_secret=secret_reader(session) if any(k.key_secret for k in policy.dkim) else None,
        base_dir=policy_dir,
    )
    return_paths, unsubscribe, refresher = _return_paths(policy, policy_dir, deployment,
                                                         session, config)
    # Without a table (a tool's sender) nothing is checked; deployed, the CDK app sets it.
    check: SuppressionCheck | None = None
    writer: SuppressionWriter | None = None
    lean_dynamo: LeanDynamoClient | None = None
    if deployment.suppression_table:
        dynamodb = session.client("dynamodb", config=config)
        # Every message is checked: its batch calls skip boto3 (see dynamo_lean).
        lean_dynamo = LeanDynamoClient(endpoint_url=dynamodb.meta.endpoint_url,
                                       region=deployment.region,
                                       credentials=session.get_credentials())
        store = DynamoSuppression(dynamodb, deployment.suppression_table, lean=lean_dynamo)
        check = SuppressionCheck(store, policy=live)
        writer = SuppressionWriter(store, check=check)
    else:
        log.warning("no suppression table (QUIVER_SUPPRESSION_TABLE): recipients are not "
                    "checked against the suppression list")
    signing = signing_for(processes=policy.delivery.signing_processes,
                          threads=policy.delivery.signing_threads)
    if policy.delivery.signing_threads:
        # Policies written before signing_processes said signing_threads = 1.
        log.warning("delivery.signing_threads = %d: signing on threads costs more CPU per "
                    "message than signing_processes = %d (and signing_threads = 0)",
                    policy.delivery.signing_threads, policy.delivery.signing_threads)
    handler = MessageHandler(
        signing=signing,
        finalized=finals.finalized if finals is not None else None,
        policy=live,
        transport=transport,
        signers=signers,
        bodies=S3BodyStore(s3, deployment.spill_bucket),
        completer=completer,
        classifier=default_classifier(),
        max_receives=deployment.outbound_max_receives,
        return_paths=return_paths[0] if return_paths else None,
        return_path_store=return_paths[1] if return_paths else None,
        suppression=check,
        suppression_writer=writer,
        unsubscribe=unsubscribe,
        controls=controls,
    )
    if not deployment.outbound_max_receives:
        log.warning("the outbound queue's maxReceiveCount is not set (%s): a message that "
                    "keeps failing reaches the DLQ without `failed` events",
                    ENV_OUTBOUND_MAX_RECEIVES)
    services = [membership.run, metrics.run, health.run, engine.run,
                *([refresher.run] if refresher is not None else []),
                *([writer.run] if writer else []),
                *([poller.run] if poller is not None else []),
                *([warmup.run] if warmup is not None else [])]
    if policy_source is not None and policy_source.interval > 0:
        watcher = PolicyWatcher(policy_source, current=live, apply=lambda _: transport.rebind())
        board.policy_digest = lambda: watcher.digest
        services.append(watcher.run)
    if server is not None:
        services.append(server.run)
    sender = Sender(
        intake=policy.intake, queue=outbound, handler=handler, completer=completer,
        services=services,
        # The controls first: a task started during an emergency stop sends nothing.
        on_start=[*([poller.load] if poller is not None else []), membership.join],
        gate=controls.wait_running if controls is not None else None,
        on_close=[*([writer.close] if writer else []), transport.close,
                  *([warmup.close] if warmup is not None else []), sqs.close,
                  *([lean_dynamo.close] if lean_dynamo else []),
                  *([signing.aclose] if signing else [])],
    )
    board.inflight = lambda: sender.inflight
    return sender


def _board(board: StatusBoard | None) -> StatusBoard:
    assert board is not None, "the status board is built before the sender runs"
    return board


def _control_rows(controls: ActiveControls) -> Controls:
    """The status's list of controls in force."""
    return lambda: [c.as_dict() for c in controls.controls()]


def _paused(controls: ActiveControls) -> Paused:
    """Why the status shows a ready queue paused: a control that would hold its next
    delivery. A queue serves every pool, so a pause by pool alone is not shown here
    (it holds mail on receipt)."""

    def paused(destination: Destination) -> str | None:
        control = controls.before_attempt(pool="", domain=destination.domain,
                                          source=destination.source,
                                          provider=destination.provider)
        return hold_reason(control) if control is not None else None

    return paused


def _control_tables(deployment: Deployment, session: Any,
                    config: Any) -> tuple[DynamoControls | None, DynamoRates | None]:
    """Operator controls (`quiver ctl`) and the adaptive rates, both in the controls
    table, polled every `[controls] poll`; none without a table (a tool's sender: its
    adaptive rates stay its own)."""
    if not deployment.controls_table:
        log.warning("no controls table (QUIVER_CONTROLS_TABLE): operator controls "
                    "(pause, admin bounce, stop) are not followed")
        return None, None
    client = session.client("dynamodb", config=config)
    return (DynamoControls(client, deployment.controls_table),
            DynamoRates(client, deployment.controls_table))


def _warmup(policy: Policy, deployment: Deployment, session: Any, config: Any,
            changes: ChangeRecorder) -> WarmupGate | None:
    """The warm-up caps of the policy's warming sources, shared through the controls
    table; each day's advance or hold is recorded as an adaptive change. None when no
    source is warming."""
    if not policy.warmup.enabled:
        return None
    store: WarmupStore
    if deployment.controls_table:
        store = DynamoWarmup(session.client("dynamodb", config=config),
                             deployment.controls_table)
    else:
        log.warning("no controls table (QUIVER_CONTROLS_TABLE): warm-up caps are kept by "
                    "this task alone, so a fleet gives a warming source its cap once per task")
        store = MemoryWarmup()
    days = DayKeeper(policy=policy.warmup, store=store, recorder=changes)
    return WarmupGate(policy=policy.warmup, store=store, days=days)


def _return_paths(
    policy: Policy, policy_dir: Path, deployment: Deployment, session: Any, config: Any,
) -> tuple[tuple[ReturnPaths, DynamoReturnPaths] | None, UnsubscribeHeaders | None,
           KeyRingRefresher | None]:
    """Signed return paths when the policy names bounce domains, and one-click
    unsubscribe headers when it has unsubscribe rules: the key ring both sign with
    (read now, so a bad one stops the start), where the return-path tokens'
    references are kept, and the refresher that keeps the ring current."""
    section = policy.return_path
    if not section.enabled and not policy.unsubscribe.enabled:
        return None, None, None
    if section.enabled and not deployment.finals_table:
        raise KeyRingError("policy return_path needs the finals table (QUIVER_FINALS_TABLE), "
                           "where each token's message and recipient are kept")
    reader = secret_reader(session) if section.key_secret else None

    def load() -> KeyRing:
        return load_key_ring(key_secret=section.key_secret, key_file=section.key_file,
                             read_secret=reader, base_dir=policy_dir)

    ring = load()
    paths = ReturnPaths(ring) if section.enabled else None
    unsubscribe = UnsubscribeHeaders(ring) if policy.unsubscribe.enabled else None

    def apply(ring: KeyRing) -> None:
        if paths is not None:
            paths.ring = ring
        if unsubscribe is not None:
            unsubscribe.ring = ring

    signed = None
    if paths is not None:
        signed = paths, DynamoReturnPaths(session.client("dynamodb", config=config),
                                          deployment.finals_table)
    return signed, unsubscribe, KeyRingRefresher(load, apply)


def task_id() -> str:
    """This task's identity: the ECS task ARN's id when on ECS, else host and pid."""
    metadata = os.environ.get("ECS_CONTAINER_METADATA_URI_V4", "")
    if metadata:
        return metadata.rstrip("/").rsplit("/", 1)[-1]
    return f"{socket.gethostname()}-{os.getpid()}"


async def serve(sender: Sender) -> None:
    """Run until SIGTERM or SIGINT, then drain (policy.intake.drain_deadline)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("sender running")
    await sender.run(stop)
