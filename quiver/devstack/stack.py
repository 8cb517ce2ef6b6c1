"""Start and stop the embedded local stack; write its policy, keys and zone."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from quiver.client import QuiverClient
from quiver.devstack import moto_server
from quiver.devstack.demo_tenant import (
    DEMO_KEY_VARIABLE,
    DEMO_TENANT,
    INGRESS_URL_VARIABLE,
    demo_tenant_toml,
)
from quiver.devstack.haproxy import EgressNode, choose_haproxy, start_nodes, stop_nodes
from quiver.devstack.intake_pump import IntakePumps
from quiver.devstack.policy_fragment import merged_policy_text
from quiver.devstack.processes import free_port, free_port_on
from quiver.devstack.servers.dns import DnsServer, Zone, start_dns
from quiver.devstack.servers.dns_records import ExtraRecord, add_records, host_names
from quiver.devstack.servers.inbound import InboundSmtp
from quiver.devstack.servers.ingress_http import IngressHttp, local_ingress
from quiver.devstack.servers.mx import MxProcess, spawn_mx
from quiver.devstack.servers.tls import issue_cert, make_local_ca
from quiver.devstack.servers.unsubscribe import UnsubscribeHttp, local_unsubscriber
from quiver.devstack.smtp_ingress import LocalSmtpIngress, start_smtp_ingress
from quiver.dkim import dns_txt_value, generate_private_key
from quiver.intake.receipt import receipt_rules
from quiver.policy import parse_policy
from quiver.returnpath.admin import rotate_file
from quiver.settings import Deployment, deployment_env

MX_HOSTS = ("mx1.quiver.local.test", "mx2.quiver.local.test")
# Demo destinations: three domains sharing one MX (one site), one with its own MX
# set, one with no MX (A fallback) and one with a null MX (bounces with 5.1.10).
MX_DOMAINS = {
    "alpha.test": ((10, "mx1.quiver.local.test"),),
    "bravo.test": ((10, "mx1.quiver.local.test"),),
    "charlie.test": ((10, "mx1.quiver.local.test"),),
    "delta.test": ((10, "mx2.quiver.local.test"), (20, "mx1.quiver.local.test")),
}
A_ONLY_DOMAINS = ("nomx.test",)
NULL_MX_DOMAINS = ("nullmx.test",)
# From domains and their DKIM keys: one RSA-2048, one ed25519.
DKIM_DOMAINS = (
    ("news.quiver-demo.test", "q1", "rsa-sha256"),
    ("alerts.quiver-demo.test", "e1", "ed25519-sha256"),
)
EGRESS_IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
# The key ring that signs return paths and unsubscribe tokens, under keys/.
UNSUBSCRIBE_KEY_FILE = "return-path-keys.json"
# The feedback loop (LocalStack.feedback): each From domain's bounce domain, the FBL
# address, and the domain whose DKIM key signs the local MX's complaint reports (a
# trusted reporter, as Yahoo is in production). Their MX is the local inbound server.
INBOUND_HOST = "inbound.quiver.local.test"
FBL_ADDRESS = "fbl@fbl.quiver-demo.test"
REPORTER_DOMAIN = "feedback.quiver.local.test"
REPORTER_SELECTOR = "arf1"
# How long the sender may answer from its cache of the suppression list (60 s in
# production): what the demo waits, after the feedback events, before mailing again.
SUPPRESSION_CACHE_TTL = "1s"


def bounce_domain(from_domain: str) -> str:
    return f"bounces.{from_domain}"
EGRESS_SOURCES = ("local1", "local2", "local3")
# HAProxy mode: two egress nodes stand for two AZs. Their primary addresses carry
# only the health endpoint, apart from the sources' addresses, as on a real node.
PROXY_NODES = (("n1", "local-a", "127.0.0.10"), ("n2", "local-b", "127.0.0.11"))
# Pool `shared` (local1, local2) spans both nodes, as a production pool must to
# keep sending when one AZ goes away; `bulk` (local3) lives on n1 alone.
SOURCE_NODES = {"local1": "n1", "local2": "n2", "local3": "n1"}
# The policy's egress part (proxy, sources, pools) sits between these lines, so a
# policy variant can swap it whole (`with_egress`).
EGRESS_BEGIN = "# egress: begin"
EGRESS_END = "# egress: end"

POLICY_TEMPLATE = """\
# Written by the local stack; regenerated on every start.
version = 1
# Everything here runs on this machine: the MX and the egress nodes listen on
# loopback, which only a local_only policy may allow (and `cdk synth` refuses one).
local_only = true
default_pool = "shared"

[delivery]
ehlo = "quiver.local.test"
port = {mx_port}
verify_tls = true
tls_ca_file = "{ca_file}"
# The local MX lives on loopback; production allows no private networks.
allow_networks = ["127.0.0.0/8"]
connect_timeout = "5s"
command_timeout = "30s"

[retry]
# Compressed so the demo sees retries, successes after greylisting and expiry.
first = "1s"
factor = 2
cap = "4s"
jitter = 0.2
max_age = "{max_age}"
site_backoff = "2s"

[intake]
receivers = 2
max_inflight_messages = 1000
visibility_timeout = "60s"
drain_deadline = "10s"

[guards]
# The sample traffic scripts 2 % complaints and 2 % hard bounces so that every outcome
# shows, far over any real threshold: the guards are off here unless a policy
# fragment (`quiver local --policy`) sets `enabled = true` and its own limits.
enabled = false

{egress}
[providers]
quiver-local = ["*.quiver.local.test"]

[[throttles]]
source = "*"
max_connections = 20
{dkim}
"""


@dataclass(frozen=True)
class ProxyPorts:
    """Where the local egress nodes listen and what they may connect to."""

    frontend: int
    health: int
    allowed: tuple[int, ...]


def egress_toml(proxy: ProxyPorts | None) -> str:
    """The policy's egress part: sources and pools, and with `proxy` the HAProxy tier.

    Without `proxy` each source binds its address directly. With it, each source
    lives on a node (its frontend is (local_ip, proxy.frontend)); `ip` stays equal
    to `local_ip`, because on loopback the address the MX sees is the one the node
    leaves from, as a public Elastic IP maps to its private address in production.
    """
    lines = [EGRESS_BEGIN]
    if proxy is not None:
        ports = ", ".join(str(p) for p in proxy.allowed)
        lines += [
            "[proxy]",
            "# Real HAProxy on loopback, one process per node, configs rendered by",
            "# proxy_tier.render as in production. Only the local stack may allow",
            "# loopback destinations: the MX listens on 127.0.0.1.",
            "protocol = 2",
            f"frontend_port = {proxy.frontend}",
            f"health_port = {proxy.health}",
            f"allowed_ports = [{ports}]",
            'allow_networks = ["127.0.0.0/8"]',
            "",
        ]
        for node, az, address in PROXY_NODES:
            lines += [f"[proxy.nodes.{node}]", f'az = "{az}"', f'address = "{address}"', ""]
    for n, (name, ip) in enumerate(zip(EGRESS_SOURCES, EGRESS_IPS, strict=True), start=1):
        lines += [f"[sources.{name}]", f'ip = "{ip}"', f'local_ip = "{ip}"']
        if proxy is not None:
            lines.append(f'node = "{SOURCE_NODES[name]}"')
        lines += [f'ehlo = "o{n}.quiver.local.test"', ""]
    lines += [
        "[pools.shared]",
        "sources = { local1 = 1, local2 = 1 }",
        "",
        "[pools.bulk]",
        "sources = { local3 = 1 }",
        EGRESS_END,
    ]
    return "\n".join(lines) + "\n"


def with_egress(text: str, egress: str) -> str:
    """`text` (a local stack policy) with its egress part replaced by `egress`."""
    start, end = text.index(EGRESS_BEGIN), text.index(EGRESS_END) + len(EGRESS_END)
    return text[:start] + egress.rstrip("\n") + text[end:]


def dkim_toml() -> str:
    """The policy's [[dkim]] tables: the demo From domains' keys, under keys/."""
    return "".join(
        f'\n[[dkim]]\ndomain = "{domain}"\nselector = "{selector}"\n'
        f'algorithm = "{algorithm}"\nkey_file = "keys/{domain}.{selector}.pem"\n'
        for domain, selector, algorithm in DKIM_DOMAINS
    )


def local_policy_text(*, mx_port: int, ca_file: Path | str, max_age: str,
                      proxy: ProxyPorts | None) -> str:
    """The generated local stack policy, before any fragment is merged over it."""
    return POLICY_TEMPLATE.format(
        mx_port=mx_port, ca_file=ca_file, max_age=max_age, dkim=dkim_toml(),
        egress=egress_toml(proxy),
    )


def add_demo_records(zone: Zone) -> None:
    """The demo destinations (MX, A, null MX) and the From domains' SPF; the DKIM keys'
    TXT records are added once the keys exist."""
    for domain, hosts in MX_DOMAINS.items():
        for pref, host in hosts:
            zone.add_mx(domain, host, pref)
    for host in MX_HOSTS:
        zone.add_a(host, "127.0.0.1")
    for domain in A_ONLY_DOMAINS:
        zone.add_a(domain, "127.0.0.1")
    for domain in NULL_MX_DOMAINS:
        zone.add_null_mx(domain)
    for domain, _, _ in DKIM_DOMAINS:
        zone.add_txt(domain, "v=spf1 ip4:127.0.0.0/8 -all")


def feedback_toml() -> str:
    """The policy's feedback-loop part: a bounce domain per From domain (VERP return
    paths), and the FBL address with its trusted reporter."""
    domains = [d for d, _, _ in DKIM_DOMAINS]
    return "".join(
        f'\n[[return_path.domains]]\nfrom = "{d}"\nbounce = "{bounce_domain(d)}"\n'
        for d in domains
    ) + ("\n[suppression]\n# Compressed like the retry schedule: a new entry reaches the "
         "sender's\n# cache within this, so mail seconds after a bounce already sees it.\n"
         f'cache_ttl = "{SUPPRESSION_CACHE_TTL}"\n'
         f'\n[feedback]\naddresses = ["{FBL_ADDRESS}"]\n'
         f"own_domains = {json.dumps(domains)}\n"
         f'trusted_reporters = [{{ domain = "{REPORTER_DOMAIN}" }}]\n')


def add_feedback_records(zone: Zone) -> None:
    """MX records of the bounce and FBL domains, pointing at the inbound server's host:
    where a real MTA would deliver its DSNs and reports (the local MX is told the
    server's port directly, since loopback servers differ by port, not by address)."""
    zone.add_a(INBOUND_HOST, "127.0.0.1")
    for domain, _, _ in DKIM_DOMAINS:
        zone.add_mx(bounce_domain(domain), INBOUND_HOST, 10)
    zone.add_mx(FBL_ADDRESS.rpartition("@")[2], INBOUND_HOST, 10)


@dataclass
class LocalStack:
    root: Path
    max_age: str = "12s"
    # The outbound queue's redrive limit (maxReceiveCount), as the CDK app sets it.
    max_receives: int = moto_server.MAX_RECEIVE_COUNT
    # Egress through real HAProxy nodes: None uses them when haproxy is installed
    # (unless QUIVER_LOCAL_HAPROXY=0), True insists, False binds each source directly.
    haproxy: bool | None = None
    moto: moto_server.MotoServer | None = None
    dns: DnsServer | None = None
    mx: MxProcess | None = None
    deployment: Deployment | None = None
    policy_path: Path | None = None
    ca_file: Path | None = None
    zone: Zone = field(default_factory=Zone)
    proxy_nodes: dict[str, EgressNode] = field(default_factory=dict)
    # Served beside the demo zone (`quiver local --dns`); dns_origin names their file.
    dns_records: tuple[ExtraRecord, ...] = ()
    dns_origin: str = "records"
    # Merged over the generated policy (`quiver local --policy`); see policy_fragment.
    policy_fragment: dict[str, Any] | None = None
    fragment_origin: str = "the policy fragment"
    # Serve the one-click unsubscribe endpoint on loopback HTTP, and add policy rules
    # (a key ring under keys/, a rule per demo From domain) that point at it.
    unsubscribe: bool = False
    unsubscribe_server: UnsubscribeHttp | None = None
    # The whole feedback loop (implies `unsubscribe`): signed return paths on the From
    # domains' bounce domains, an inbound SMTP server standing in for SES, the bounce
    # and FBL intakes on their queues, and an MX that mails DSNs and ARF reports back.
    feedback: bool = False
    inbound: InboundSmtp | None = None
    intakes: IntakePumps | None = None
    # Serve the HTTP injection API on loopback, with a demo tenant and its key.
    http_ingress: bool = False
    ingress_server: IngressHttp | None = None
    demo_tenant_key: str | None = None
    # The SMTP submission listener on loopback (AUTH as the demo tenant).
    smtp_ingress: LocalSmtpIngress | None = None
    _senders: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, *, dns_prefer: Literal["dnsmasq", "builtin"] = "dnsmasq") -> LocalStack:
        self.check_additions()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        try:
            self._start(dns_prefer)
        except BaseException:
            self.stop()
            raise
        return self

    def check_additions(self) -> None:
        """Refuse extra records that clash with the demo zone, or a policy fragment
        that does not validate, before any server starts (RecordsError, PolicyError)."""
        if self.dns_records:
            zone = Zone()
            add_demo_records(zone)
            for domain, selector, _ in DKIM_DOMAINS:
                zone.add_txt(f"{selector}._domainkey.{domain}", "v=DKIM1; p=")
            add_records(zone, self.dns_records, origin=self.dns_origin)
        if self.policy_fragment is not None:
            # Stand-in ports and CA path: the real ones exist only once servers run, and
            # validation does not depend on their values.
            binary = choose_haproxy(self.haproxy, os.environ)
            proxy = None if binary is None else ProxyPorts(frontend=2500, health=8500,
                                                            allowed=(2525,))
            merged_policy_text(
                local_policy_text(mx_port=2525, ca_file="ca.crt", max_age=self.max_age,
                                  proxy=proxy),
                self.policy_fragment, origin=self.fragment_origin,
            )

    def _start(self, dns_prefer: Literal["dnsmasq", "builtin"]) -> None:
        self.moto = moto_server.start_moto(log_dir=self.root / "logs")
        self.deployment = moto_server.create_resources(
            self.moto.endpoint, max_receive_count=self.max_receives)
        ca_cert, _ = make_local_ca(self.root / "ca")
        self.ca_file = ca_cert
        hostnames = [*MX_HOSTS, *A_ONLY_DOMAINS]
        hostnames += [h for h in host_names(self.dns_records) if h not in hostnames]
        cert, key = issue_cert(
            ca_dir=self.root / "ca", hostnames=hostnames, ips=["127.0.0.1"],
            dir=self.root / "mx-tls",
        )
        mx_store = self.root / "mx"
        shutil.rmtree(mx_store, ignore_errors=True)
        self._keys_and_zone()
        reports: dict[str, Any] = {}
        if self.feedback:
            self.unsubscribe = True
            # Rules come once the policy is written; until then it refuses every recipient.
            self.inbound = InboundSmtp(rules=(), s3=self.client("s3"),
                                       bucket=self.deployment.inbound_bucket)
            reports = {"report_relay": self.inbound.address, "fbl_address": FBL_ADDRESS,
                       "reporter_domain": REPORTER_DOMAIN,
                       "reporter_selector": REPORTER_SELECTOR,
                       "reporter_key_file": self._reporter_key()}
        self.mx = spawn_mx(
            port=free_port(), store_dir=mx_store, tls_cert=cert, tls_key=key,
            hostname=MX_HOSTS[0], **reports,
        )
        add_records(self.zone, self.dns_records, origin=self.dns_origin)
        self.dns = start_dns(self.zone, prefer=dns_prefer)
        mx_port = self.mx.address[1]
        binary = choose_haproxy(self.haproxy, os.environ)
        proxy = None
        if binary is not None:
            frontend = free_port_on(EGRESS_IPS, avoid=[mx_port])
            health = free_port_on([a for _, _, a in PROXY_NODES], avoid=[mx_port, frontend])
            proxy = ProxyPorts(frontend=frontend, health=health, allowed=(mx_port,))
        self.policy_path = self.root / "policy.toml"
        text = local_policy_text(mx_port=mx_port, ca_file=ca_cert, max_age=self.max_age,
                                 proxy=proxy)
        text += demo_tenant_toml()
        if self.unsubscribe:
            text += self._start_unsubscribe()
        if self.feedback:
            text += feedback_toml()
        if self.policy_fragment is not None:
            text = merged_policy_text(text, self.policy_fragment, origin=self.fragment_origin)
        self.policy_path.write_text(text)
        self._publish_policy(text)
        if self.feedback:
            self._start_intakes(text)
        if self.http_ingress:
            self._start_ingress()
        self.smtp_ingress = start_smtp_ingress(
            client=QuiverClient(sqs=self.client("sqs"), s3=self.client("s3"),
                                queue_url=self.deployment.outbound_queue_url,
                                spill_bucket=self.deployment.spill_bucket),
            tenants=parse_policy(text, origin=str(self.policy_path)).tenants,
            dynamodb=self.client("dynamodb"), keys_table=self.deployment.tenant_keys_table,
            cert=cert, key=key, ca_file=ca_cert)
        if binary is not None:
            # The same policy object the sender will load decides what each node serves.
            self.proxy_nodes = start_nodes(
                self.policy_path, binary=binary, run_dir=self.root / "haproxy",
                log_dir=self.root / "logs",
            )

    def _start_unsubscribe(self) -> str:
        """Start the endpoint; the policy text that signs tokens and points at it."""
        assert self.moto is not None and self.deployment is not None
        key_file = self.root / "keys" / UNSUBSCRIBE_KEY_FILE
        key_file.parent.mkdir(exist_ok=True)
        if not key_file.exists():
            rotate_file(key_file, now=time.time())
        self.unsubscribe_server = UnsubscribeHttp(local_unsubscriber(
            endpoint=self.moto.endpoint, deployment=self.deployment, key_file=key_file))
        url = self.unsubscribe_server.url
        # An absolute path: the intakes read this policy from SSM, with no file beside it.
        return f'\n[return_path]\nkey_file = "{key_file.resolve()}"\n' + "".join(
            f'\n[[unsubscribe.domains]]\nfrom = "{domain}"\nurl = "{url}"\n'
            f'mailto = "unsubscribe@bounces.{domain}"\n'
            for domain, _, _ in DKIM_DOMAINS)

    def _start_ingress(self) -> None:
        """The demo tenant's key into the keys table, and the API on loopback."""
        import asyncio

        from quiver.storage.dynamo_keys import DynamoTenantKeys
        from quiver.tenants.keys import TenantKeys

        assert self.moto is not None and self.deployment is not None
        keys = TenantKeys(DynamoTenantKeys(self.client("dynamodb"),
                                           self.deployment.tenant_keys_table))
        self.demo_tenant_key, _ = asyncio.run(keys.create(
            tenant=DEMO_TENANT, who="quiver local", now=time.time()))
        self.ingress_server = IngressHttp(local_ingress(endpoint=self.moto.endpoint,
                                                        deployment=self.deployment))

    def _reporter_key(self) -> Path:
        """The complaint reporter's DKIM key, published in the zone."""
        path = self.root / "keys" / f"{REPORTER_DOMAIN}.{REPORTER_SELECTOR}.pem"
        if not path.exists():
            path.write_bytes(generate_private_key("rsa-sha256"))
            path.chmod(0o600)
        self.zone.add_txt(f"{REPORTER_SELECTOR}._domainkey.{REPORTER_DOMAIN}",
                          dns_txt_value(path.read_bytes()))
        return path

    def _publish_policy(self, text: str) -> None:
        """The policy into SSM, where the Lambdas read it (the intakes, and the export
        its `[guards]`)."""
        assert self.deployment is not None
        # Parameters over 4 KB need the advanced tier, as in AWS.
        tier = "Advanced" if len(text.encode()) > 4096 else "Standard"
        self.client("ssm").put_parameter(Name=self.deployment.policy_parameter, Value=text,
                                         Type="String", Tier=tier, Overwrite=True)

    def _start_intakes(self, text: str) -> None:
        """The receipt rules into the inbound server, and the intakes on their queues."""
        assert self.moto is not None and self.deployment is not None
        assert self.inbound is not None and self.dns is not None
        self.inbound.set_rules(receipt_rules(parse_policy(text, origin=str(self.policy_path))))
        self.intakes = IntakePumps(endpoint=self.moto.endpoint, deployment=self.deployment,
                                   nameservers=[self.dns.address], log_dir=self.root / "logs")
        self.intakes.start()

    @property
    def egress_mode(self) -> Literal["haproxy", "direct"]:
        return "haproxy" if self.proxy_nodes else "direct"

    def describe_egress(self) -> str:
        """One line for people: how mail leaves the local stack."""
        if not self.proxy_nodes:
            return f"direct: sources bind {', '.join(EGRESS_IPS)}"
        by_node: dict[str, list[str]] = {}
        for name, ip in zip(EGRESS_SOURCES, EGRESS_IPS, strict=True):
            by_node.setdefault(SOURCE_NODES[name], []).append(ip)
        nodes = "; ".join(
            f"{node} ({az}, health {address}:{self.proxy_nodes[node].health[1]}) "
            f"sends from {', '.join(by_node.get(node, []))}"
            for node, az, address in PROXY_NODES
        )
        return f"haproxy: {nodes}"

    def _keys_and_zone(self) -> None:
        add_demo_records(self.zone)
        if self.feedback:
            add_feedback_records(self.zone)
        keys_dir = self.root / "keys"
        keys_dir.mkdir(exist_ok=True)
        for domain, selector, algorithm in DKIM_DOMAINS:
            path = keys_dir / f"{domain}.{selector}.pem"
            if not path.exists():
                path.write_bytes(generate_private_key(algorithm))
                path.chmod(0o600)
            self.zone.add_txt(f"{selector}._domainkey.{domain}",
                              dns_txt_value(path.read_bytes()))

    @property
    def nameserver(self) -> str:
        assert self.dns is not None
        host, port = self.dns.address
        return f"{host}:{port}"

    def env(self) -> dict[str, str]:
        """Environment for a sender or client process using this stack."""
        assert self.moto is not None and self.deployment is not None
        env = {
            **moto_server.aws_env(self.moto.endpoint),
            **deployment_env(self.deployment),
            "QUIVER_NAMESERVERS": self.nameserver,
            **(self.smtp_ingress.env() if self.smtp_ingress is not None else {}),
        }
        if self.ingress_server is not None and self.demo_tenant_key is not None:
            env[INGRESS_URL_VARIABLE] = self.ingress_server.url
            env[DEMO_KEY_VARIABLE] = self.demo_tenant_key
        return env

    def client(self, service: str) -> Any:
        assert self.moto is not None
        return moto_server.client(self.moto.endpoint, service)

    def policy_variant(self, name: str, edit: Callable[[str], str]) -> Path:
        """A copy of the stack's policy with `edit` applied (tests vary throttles this way)."""
        assert self.policy_path is not None
        path = self.root / f"policy-{name}.toml"
        path.write_text(edit(self.policy_path.read_text()))
        return path

    def start_sender(self, *, name: str = "sender", config: Path | None = None,
                     extra: list[str] | None = None) -> subprocess.Popen[bytes]:
        assert self.policy_path is not None
        log = (self.root / "logs" / f"{name}.log").open("ab")
        extra = list(extra or [])
        if "--status-port" not in extra:
            # Several senders share the host here: each takes a free port (logged).
            extra += ["--status-port", "0"]
        process = subprocess.Popen(
            [sys.executable, "-m", "quiver", "sender", "--config",
             str(config or self.policy_path), *extra],
            env={**os.environ, **self.env()}, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self._senders.append(process)
        return process

    def stop_sender(self, process: subprocess.Popen[bytes], *, timeout: float = 30.0) -> int:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if process in self._senders:
            self._senders.remove(process)
        return process.returncode

    @property
    def senders(self) -> list[subprocess.Popen[bytes]]:
        return list(self._senders)

    def stop(self) -> None:
        for process in list(self._senders):
            self.stop_sender(process)
        stop_nodes(self.proxy_nodes)
        self.proxy_nodes = {}
        if self.intakes is not None:
            self.intakes.stop()
            self.intakes = None
        for server in (self.ingress_server, self.smtp_ingress, self.unsubscribe_server,
                       self.mx, self.inbound, self.dns, self.moto):
            if server is not None:
                # Best effort: one server failing to stop must not keep the others up.
                with contextlib.suppress(Exception):
                    server.stop()
        self.mx = self.dns = self.moto = None
        self.unsubscribe_server = None
        self.ingress_server = None
        self.inbound = None
        self.smtp_ingress = None

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(predicate: Any, *, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
