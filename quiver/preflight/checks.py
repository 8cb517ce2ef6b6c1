"""The preflight checks: what receivers will look up before they accept this
policy's mail, asked of DNS now.

- each sending source: its address has a PTR, the PTR's name resolves back to the
  address (forward-confirmed reverse DNS), and the EHLO name is that name;
- each sending domain (DKIM domains and return-path bounce domains): SPF authorizes
  every source address of the pools;
- each DKIM key: the TXT at `<selector>._domainkey.<domain>` publishes its public key;
- each bounce domain and FBL address domain: an MX, at SES inbound in production.

Every check yields rows; none raises for what DNS says or fails to say.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from quiver.dkim import DkimError
from quiver.dkim.keys import dns_txt_value
from quiver.policy import Policy
from quiver.policy.model import DkimKey, Source
from quiver.preflight.lookup import Lookup, LookupFailed
from quiver.preflight.spf import check_host

Status = Literal["ok", "missing", "wrong", "unknown", "warn", "skipped"]
# Statuses that mean the policy is not ready to send: exit 1.
FAILING: frozenset[Status] = frozenset({"missing", "wrong", "unknown"})
SES_INBOUND = re.compile(r"^inbound-smtp\.([a-z0-9-]+)\.amazonaws\.com$")


@dataclass(frozen=True, slots=True)
class Row:
    check: str
    subject: str
    status: Status
    detail: str


@dataclass(frozen=True, slots=True)
class Inputs:
    policy: Policy
    lookup: Lookup
    # The policy file's folder: DKIM key_file paths are relative to it.
    base_dir: Path
    # Secret id -> PEM; None skips keys kept in Secrets Manager.
    load_secret: Callable[[str], bytes] | None
    # The region whose SES inbound endpoint bounce MXes should name; None: any region.
    region: str | None


def run_checks(inputs: Inputs) -> list[Row]:
    rows: list[Row] = []
    sources = sending_sources(inputs.policy)
    for source in sources:
        rows.extend(_reverse_dns(inputs.lookup, source))
    for domain in sending_domains(inputs.policy):
        rows.extend(_spf(inputs.lookup, domain, sources))
    for key in inputs.policy.dkim:
        rows.append(_dkim(inputs, key))
    for domain, role in mail_domains(inputs.policy):
        rows.append(_mx(inputs.lookup, domain, role, inputs.region))
    return rows


def sending_sources(policy: Policy) -> list[Source]:
    """The sources some pool sends from, in policy order."""
    used = {name for pool in policy.pools.values() for name, _ in pool.sources}
    return [source for name, source in policy.sources.items() if name in used]


def sending_domains(policy: Policy) -> list[str]:
    """Domains that appear in MAIL FROM or sign mail: each needs SPF for every source."""
    domains = [key.domain for key in policy.dkim]
    domains += [d.bounce_domain for d in policy.return_path.domains]
    return list(dict.fromkeys(d.lower() for d in domains))


def mail_domains(policy: Policy) -> list[tuple[str, str]]:
    """Domains that receive mail for Quiver (bounces, FBL reports), with their role."""
    out: dict[str, str] = {}
    for entry in policy.return_path.domains:
        out.setdefault(entry.bounce_domain.lower(), "bounce domain")
    for address in policy.feedback.addresses:
        out.setdefault(address.rpartition("@")[2].lower(), "FBL address domain")
    return list(out.items())


def _reverse_dns(lookup: Lookup, source: Source) -> Iterator[Row]:
    subject = f"{source.name} {source.ip}"
    family = ipaddress.ip_address(source.ip).version
    try:
        names = lookup.ptr(source.ip)
    except LookupFailed as exc:
        yield Row("ptr", subject, "unknown", str(exc))
        return
    if not names:
        yield Row("ptr", subject, "missing",
                  f"no PTR record; set the address's reverse DNS to {source.ehlo}")
    else:
        yield Row("ptr", subject, "ok", ", ".join(names))
    confirmed: list[str] = []
    for name in names:
        try:
            if source.ip in lookup.addresses(name, family=family):
                confirmed.append(name)
        except LookupFailed as exc:
            yield Row("fcrdns", subject, "unknown", str(exc))
            return
    if names:
        if confirmed:
            yield Row("fcrdns", subject, "ok", f"{confirmed[0]} resolves to {source.ip}")
        else:
            yield Row("fcrdns", subject, "wrong",
                      f"{names[0]} does not resolve to {source.ip}")
    yield _ehlo(lookup, source, subject, family, names)


def _ehlo(lookup: Lookup, source: Source, subject: str, family: int,
          names: list[str]) -> Row:
    ehlo = source.ehlo.lower().rstrip(".")
    try:
        addresses = lookup.addresses(ehlo, family=family)
    except LookupFailed as exc:
        return Row("ehlo", subject, "unknown", str(exc))
    if not addresses:
        return Row("ehlo", subject, "missing",
                   f"{ehlo} has no {'A' if family == 4 else 'AAAA'} record")
    if source.ip not in addresses:
        return Row("ehlo", subject, "wrong",
                   f"{ehlo} resolves to {', '.join(addresses)}, not {source.ip}")
    if names and ehlo not in names:
        return Row("ehlo", subject, "wrong",
                   f"EHLO name {ehlo} differs from the PTR name {names[0]}")
    return Row("ehlo", subject, "ok", f"{ehlo} resolves to {source.ip}")


def _spf(lookup: Lookup, domain: str, sources: list[Source]) -> Iterator[Row]:
    for source in sources:
        verdict = check_host(lookup, ip=source.ip, domain=domain, helo=source.ehlo)
        subject = f"{domain} {source.name} {source.ip}"
        if verdict.result == "pass":
            yield Row("spf", subject, "ok", verdict.reason)
        elif verdict.result == "none":
            yield Row("spf", subject, "missing", verdict.reason)
        elif verdict.result == "temperror":
            yield Row("spf", subject, "unknown", verdict.reason)
        else:
            yield Row("spf", subject, "wrong", f"{verdict.result}: {verdict.reason}")


def dkim_tags(record: str) -> dict[str, str]:
    """A DKIM key record's tags (RFC 6376 3.2); whitespace inside values removed."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), re.sub(r"\s+", "", value))
    return tags


def _dkim(inputs: Inputs, key: DkimKey) -> Row:
    name = f"{key.selector}._domainkey.{key.domain}".lower()
    try:
        pem = _private_key(inputs, key)
    except DkimError as exc:
        return Row("dkim", name, "unknown", str(exc))
    if pem is None:
        return Row("dkim", name, "skipped", f"key in Secrets Manager ({key.key_secret})")
    try:
        expected = dkim_tags(dns_txt_value(pem))
    except DkimError as exc:
        return Row("dkim", name, "unknown", f"cannot read the policy's key: {exc}")
    try:
        texts = inputs.lookup.txt(name)
    except LookupFailed as exc:
        return Row("dkim", name, "unknown", str(exc))
    records = [t for t in texts if "p" in dkim_tags(t)]
    if not records:
        return Row("dkim", name, "missing",
                   f"no DKIM key record; publish: {dns_txt_value(pem)[:60]}...")
    published = dkim_tags(records[0])
    if len(records) > 1:
        return Row("dkim", name, "wrong", f"{len(records)} key records; keep one")
    if not published["p"]:
        return Row("dkim", name, "wrong", "the published key is revoked (empty p=)")
    if published.get("k", "rsa").lower() != expected["k"]:
        return Row("dkim", name, "wrong",
                   f"k={published.get('k', 'rsa')}, the policy's key is k={expected['k']}")
    if published["p"] != expected["p"]:
        return Row("dkim", name, "wrong", "p= is not the public half of the policy's key")
    return Row("dkim", name, "ok", f"k={expected['k']}, key matches")


def _private_key(inputs: Inputs, key: DkimKey) -> bytes | None:
    if key.key_file is not None:
        path = inputs.base_dir / key.key_file
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DkimError(f"cannot read key_file {path}: {exc.strerror or exc}") from None
    if key.key_secret is None or inputs.load_secret is None:
        return None
    try:
        return inputs.load_secret(key.key_secret)
    except Exception as exc:  # any reader failure: missing secret, access denied, network
        raise DkimError(f"cannot read key_secret {key.key_secret}: {exc}") from None


def _mx(lookup: Lookup, domain: str, role: str, region: str | None) -> Row:
    subject = f"{domain} ({role})"
    try:
        exchanges = lookup.mx(domain)
    except LookupFailed as exc:
        return Row("mx", subject, "unknown", str(exc))
    if not exchanges:
        want = f"inbound-smtp.{region}.amazonaws.com" if region else "SES inbound"
        return Row("mx", subject, "missing", f"no MX; point it at 10 {want}")
    hosts = [host for _, host in exchanges]
    if hosts == [""]:
        return Row("mx", subject, "wrong", "null MX: the domain refuses all mail")
    shown = ", ".join(f"{pref} {host}" for pref, host in exchanges)
    regions = [m.group(1) for m in map(SES_INBOUND.match, hosts) if m is not None]
    if not regions:
        return Row("mx", subject, "warn", f"{shown}: not SES inbound; mail must reach it")
    if region is not None and region not in regions:
        return Row("mx", subject, "warn",
                   f"{shown}: SES inbound in {regions[0]}, the stack is in {region}")
    return Row("mx", subject, "ok", shown)
