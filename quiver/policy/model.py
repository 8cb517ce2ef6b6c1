"""The typed, validated policy the engine runs on. Built only by `quiver.policy.load`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from quiver.content import DEFAULT_MAX_MESSAGE_SIZE, LongLines
from quiver.policy.adaptive import AdaptivePolicy
from quiver.policy.controls import ControlsPolicy
from quiver.policy.data import DataPolicy
from quiver.policy.feedback import FeedbackPolicy
from quiver.policy.guards import GuardsPolicy
from quiver.policy.return_path import ReturnPathPolicy
from quiver.policy.suppression import SuppressionPolicy
from quiver.policy.tenants import TenantsPolicy
from quiver.policy.unsubscribe import UnsubscribePolicy
from quiver.policy.warmup import WarmupPolicy
from quiver.units import Rate

DkimAlgorithm = Literal["rsa-sha256", "ed25519-sha256"]
ThrottleScope = Literal["provider", "domain", "mx", "any"]
EightBit = Literal["declare", "downgrade"]
TlsMode = Literal["opportunistic", "required", "verify"]
TLS_MODES: tuple[TlsMode, ...] = ("opportunistic", "required", "verify")

# SQS keeps a message at most 14 days; a retry horizon beyond that would lose mail.
SQS_MAX_RETENTION_S = 14 * 86400.0


@dataclass(frozen=True, slots=True)
class ProxyNode:
    """An HAProxy egress node. It owns the local addresses of the sources placed on it."""

    name: str
    az: str
    # Primary address of the node: health endpoint and stats live here.
    address: str


@dataclass(frozen=True, slots=True)
class ProxyTier:
    nodes: dict[str, ProxyNode] = field(default_factory=dict)
    protocol: Literal[1, 2] = 2
    # Each source's frontend listens on (source.local_ip, frontend_port) on its node.
    frontend_port: int = 2500
    health_port: int = 8500
    # Destination ports the proxies forward to. Anything else is an open relay.
    allowed_ports: tuple[int, ...] = (25,)
    # Destination networks allowed although private/loopback: empty in production
    # (a PROXY header naming 10.0.0.1 would reach the VPC); tests allow loopback.
    allow_networks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Source:
    """One egress identity: the public IP a receiving MX sees, and how to leave from it."""

    name: str
    ip: str
    ehlo: str
    az: str
    # The address connections leave from: on a proxy node, the secondary private IP
    # that the Elastic IP `ip` maps to; for direct egress, the local address to bind.
    local_ip: str | None = None
    # The proxy node that owns local_ip; None means connect directly from this host.
    node: str | None = None


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    # (source name, weight) in declaration order; weights are positive integers.
    sources: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class DkimKey:
    domain: str
    selector: str
    algorithm: DkimAlgorithm
    key_file: str | None = None
    key_secret: str | None = None
    headers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Throttle:
    """A limit for traffic from sources matching `source` to destinations matching `match`.

    Precedence (most specific wins, per limit): an exact source beats a source
    pattern beats "*"; then scope mx > domain > provider > any; then a literal
    pattern beats a wildcard, longer beats shorter; then file order.
    """

    source: str
    scope: ThrottleScope
    pattern: str
    max_connections: int | None = None
    max_messages_per_connection: int | None = None
    max_rate: Rate | None = None
    index: int = 0
    # Connections to one MX site from every source of this task together (scaled by
    # the task's cluster share); only in rules whose source is "*".
    max_mx_connections: int | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    first: float = 300.0
    factor: float = 2.0
    cap: float = 4 * 3600.0
    # Fraction of each delay drawn at random, so a burst deferred together does not
    # come back together and hit the same destination as one wave.
    jitter: float = 0.2
    max_age: float = 3 * 86400.0
    # A (source, site) whose connection failed or said 421 is left alone this long.
    site_backoff: float = 60.0

    def delay(self, attempt: int) -> float:
        """Delay before attempt `attempt + 1`, unjittered (attempt is 1-based)."""
        return float(min(self.cap, self.first * self.factor ** max(0, attempt - 1)))


@dataclass(frozen=True, slots=True)
class Delivery:
    ehlo: str = "localhost"
    # SMTP port of receiving MXes. 25 in production; test rigs point it elsewhere.
    port: int = 25
    # The older spelling of `tls.default` (true: "verify", false: "opportunistic"),
    # as written; None when the file does not set it. `tls.default` wins if both are set.
    verify_tls: bool | None = None
    # CA bundle for "verify" connections (local stacks and private test MXes); the
    # system's CAs when unset.
    tls_ca_file: str | None = None
    # Networks a resolved MX address may be in although they are private/loopback.
    # Empty in production: connecting to 10.x or 169.254.169.254 would let a hostile
    # MX record aim the sender at internal services.
    allow_networks: tuple[str, ...] = ()
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    # Static routes: domain → "host[:port]", skipping MX lookup (smarthosts, test rigs).
    routes: tuple[tuple[str, str], ...] = ()
    # Worker processes for DKIM private-key operations, beside the event loop: one
    # lets a 2-vCPU task sign on its second core; more help only with more vCPUs.
    signing_processes: int = 1
    # Threads instead (the RSA code releases the GIL), when signing_processes is 0:
    # each signature then takes the GIL back from the busy loop, which costs more
    # CPU than a process does. Both 0: signing on the event loop, stalling its I/O.
    signing_threads: int = 0
    # Over PIPELINING, write the next queued message's MAIL, RCPT and DATA behind the
    # current body (RFC 2920 3.1): one round trip per message instead of two. Off is
    # for receivers that mishandle commands arriving right behind the end of data.
    pipeline_next: bool = True


@dataclass(frozen=True, slots=True)
class TlsRule:
    """The TLS mode for destinations matching `scope`/`pattern` (precedence as throttles:
    mx beats domain beats provider; a literal pattern beats a wildcard, longer beats
    shorter; earlier in the file wins)."""

    scope: Literal["provider", "domain", "mx"]
    pattern: str
    mode: TlsMode
    index: int = 0


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """STARTTLS per destination.

    "opportunistic" (as Postfix's `may`): STARTTLS when offered, certificate not
    verified; after a failed handshake the same attempt reconnects in plaintext and
    that MX is sent plaintext for a while. Anyone on the path can strip it, so it
    protects against passive reading only. "required": encrypted or not sent, the
    certificate not verified. "verify": encrypted and the certificate must match
    the MX host name (and chain to `delivery.tls_ca_file` or the system's CAs).
    """

    default: TlsMode = "opportunistic"
    rules: tuple[TlsRule, ...] = ()


@dataclass(frozen=True, slots=True)
class Intake:
    receivers: int = 4
    max_inflight_messages: int = 2000
    max_inflight_bytes: int = 256 * 1024**2
    # How long a received message stays invisible; extended while it is worked on.
    visibility_timeout: float = 300.0
    # Time allowed, after SIGTERM, to finish open transactions. RFC 5321 lets a
    # receiver take minutes after the final dot, and an abandoned transaction may be
    # delivered twice; Fargate stops a task after at most 120 s, and the last 20 s
    # are for making messages visible and flushing events (cdk/deploy_checks.py).
    drain_deadline: float = 100.0
    # Bodies above this go to S3 as raw_s3 when a client enqueues (SQS caps at 256 KiB).
    spill_threshold: int = 200 * 1024
    # Membership heartbeat: how soon other tasks learn that one joined, which bounds
    # how long a cluster-wide limit can be exceeded by one task's share.
    heartbeat: float = 10.0


@dataclass(frozen=True, slots=True)
class Content:
    """What a message must be, checked by the client before enqueueing and by the sender."""

    # Larger messages are refused (a `rejected` event), never retried. Clients check
    # it before uploading; a service's client must be given the same number.
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    # A line over 998 octets (RFC 5322 2.1.1; receivers fold or refuse it, breaking
    # DKIM): "reencode" writes its MIME part as quoted-printable or base64 before
    # signing; "refuse" rejects the message instead.
    long_lines: LongLines = "reencode"
    # 8-bit data: "declare" signs the message as it is and sends it with BODY=8BITMIME,
    # converting and re-signing it only for a server without 8BITMIME; "downgrade"
    # always signs and sends the 7-bit form (one conversion per 8-bit message).
    eight_bit: EightBit = "declare"


@dataclass(frozen=True, slots=True)
class Policy:
    default_pool: str
    sources: dict[str, Source]
    pools: dict[str, Pool]
    proxy: ProxyTier = field(default_factory=ProxyTier)
    providers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    throttles: tuple[Throttle, ...] = ()
    dkim: tuple[DkimKey, ...] = ()
    retry: Retry = field(default_factory=Retry)
    delivery: Delivery = field(default_factory=Delivery)
    intake: Intake = field(default_factory=Intake)
    content: Content = field(default_factory=Content)
    suppression: SuppressionPolicy = field(default_factory=SuppressionPolicy)
    # How senders follow operator controls (quiver/policy/controls.py).
    controls: ControlsPolicy = field(default_factory=ControlsPolicy)
    warnings: tuple[str, ...] = ()
    tls: TlsPolicy = field(default_factory=TlsPolicy)
    # Signed VERP envelope senders per sending domain (quiver/policy/return_path.py).
    return_path: ReturnPathPolicy = field(default_factory=ReturnPathPolicy)
    # A policy for a stack on one machine (`quiver local`, test rigs): only such a
    # policy may list private, loopback or metadata ranges in `delivery.allow_networks`
    # or `proxy.allow_networks`, and the CDK app refuses to deploy it. It is a top-level
    # key because it speaks for the whole file (both allow-lists and the deploy
    # refusal), not for one section.
    local_only: bool = False
    # Which inbound feedback reports may suppress recipients (quiver.policy.feedback).
    feedback: FeedbackPolicy = field(default_factory=FeedbackPolicy)
    # One-click unsubscribe headers per sending domain (quiver/policy/unsubscribe.py).
    unsubscribe: UnsubscribePolicy = field(default_factory=UnsubscribePolicy)
    # How long recorded data is kept; applied at deploy (quiver/policy/data.py).
    data: DataPolicy = field(default_factory=DataPolicy)
    # Warming sources and their daily caps per provider (quiver/policy/warmup.py).
    warmup: WarmupPolicy = field(default_factory=WarmupPolicy)
    # When a tenant's or campaign's complaint or bounce rate pauses it (policy/guards.py).
    guards: GuardsPolicy = field(default_factory=GuardsPolicy)
    # Response rules and AIMD send rates (quiver/policy/adaptive.py, quiver/adaptive).
    adaptive: AdaptivePolicy = field(default_factory=AdaptivePolicy)
    # Who may inject through the HTTP API and the SMTP listener, from which domains
    # (quiver/policy/tenants.py); senders ignore it.
    tenants: TenantsPolicy = field(default_factory=TenantsPolicy)

    def frontend(self, source: Source) -> tuple[str, int] | None:
        """Where a sender connects to leave from `source`; None for direct egress."""
        if source.node is None or source.local_ip is None:
            return None
        return source.local_ip, self.proxy.frontend_port
