"""The preflight SPF evaluator (RFC 7208 check_host) over zone data in memory."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.preflight.lookup import LookupFailed
from quiver.preflight.spf import MAX_DNS_TERMS, check_host


class Records:
    """TXT, A/AAAA, MX and PTR answers by name, counting every query."""

    def __init__(self, txt: dict[str, list[str]] | None = None,
                 a: dict[str, list[str]] | None = None,
                 mx: dict[str, list[tuple[int, str]]] | None = None,
                 ptr: dict[str, list[str]] | None = None,
                 failing: frozenset[str] = frozenset()) -> None:
        self._txt, self._a, self._mx = txt or {}, a or {}, mx or {}
        self._ptr, self._failing = ptr or {}, failing
        self.queries = 0

    def _ask(self, name: str) -> None:
        self.queries += 1
        if name in self._failing:
            raise LookupFailed(f"{name}: timed out")

    def txt(self, name: str) -> list[str]:
        self._ask(name)
        return self._txt.get(name, [])

    def addresses(self, name: str, *, family: int = 0) -> list[str]:
        self._ask(name)
        return [ip for ip in self._a.get(name, [])
                if family == 0 or ipaddress.ip_address(ip).version == family]

    def mx(self, name: str) -> list[tuple[int, str]]:
        self._ask(name)
        return self._mx.get(name, [])

    def ptr(self, ip: str) -> list[str]:
        self._ask(ip)
        return self._ptr.get(ip, [])


def result(records: Records, ip: str, domain: str = "example.test") -> str:
    return check_host(records, ip=ip, domain=domain).result


def test_ip4_ip6_and_all_with_qualifiers() -> None:
    dns = Records(txt={"example.test": ["v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 ~all"]})
    assert result(dns, "192.0.2.77") == "pass"
    assert result(dns, "2001:db8::5") == "pass"
    assert result(dns, "198.51.100.1") == "softfail"
    assert result(dns, "::ffff:192.0.2.1") == "pass"  # IPv4-mapped is the IPv4 address


def test_a_and_mx_with_cidr() -> None:
    dns = Records(
        txt={"example.test": ["v=spf1 a:web.example.test/30 mx -all"]},
        a={"web.example.test": ["192.0.2.8"], "mx1.example.test": ["198.51.100.5"]},
        mx={"example.test": [(10, "mx1.example.test")]},
    )
    assert result(dns, "192.0.2.10") == "pass"
    assert result(dns, "198.51.100.5") == "pass"
    assert result(dns, "192.0.2.12") == "fail"


def test_include_results_and_redirect() -> None:
    dns = Records(txt={
        "example.test": ["v=spf1 include:a.test include:b.test -all"],
        "a.test": ["v=spf1 ip4:192.0.2.1 -all"],
        "b.test": ["v=spf1 ip4:192.0.2.2 ?all"],
        "r.test": ["v=spf1 redirect=a.test"],
        "gone.test": ["v=spf1 include:nothing.test -all"],
        "nowhere.test": ["v=spf1 redirect=nothing.test"],
    })
    assert result(dns, "192.0.2.1") == "pass"
    assert result(dns, "192.0.2.2") == "pass"
    # include of a fail or neutral is simply no match.
    assert result(dns, "192.0.2.3") == "fail"
    assert result(dns, "192.0.2.1", "r.test") == "pass"
    assert result(dns, "192.0.2.3", "r.test") == "fail"
    assert result(dns, "192.0.2.1", "gone.test") == "permerror"
    assert result(dns, "192.0.2.1", "nowhere.test") == "permerror"


def test_none_multiple_records_and_no_match() -> None:
    dns = Records(txt={"two.test": ["v=spf1 -all", "v=spf1 +all"],
                       "other.test": ["google-site-verification=x", "v=spf10 +all"],
                       "open.test": ["v=spf1 ip4:192.0.2.1"]})
    assert result(dns, "192.0.2.1", "missing.test") == "none"
    assert result(dns, "192.0.2.1", "other.test") == "none"
    assert result(dns, "192.0.2.1", "two.test") == "permerror"
    assert result(dns, "192.0.2.9", "open.test") == "neutral"


def test_more_than_ten_lookups_is_a_permerror() -> None:
    chain = {f"l{i}.test": [f"v=spf1 include:l{i + 1}.test -all"] for i in range(20)}
    dns = Records(txt={"example.test": ["v=spf1 include:l0.test -all"], **chain})
    verdict = check_host(dns, ip="192.0.2.1", domain="example.test")
    assert verdict.result == "permerror"
    assert str(MAX_DNS_TERMS) in verdict.reason
    # ... found after the eleventh term, without reading the rest of the chain.
    assert len(verdict.visited) == MAX_DNS_TERMS + 1


def test_an_include_loop_ends_at_the_limit() -> None:
    dns = Records(txt={"example.test": ["v=spf1 include:example.test -all"]})
    assert result(dns, "192.0.2.1") == "permerror"
    assert dns.queries <= MAX_DNS_TERMS + 1


def test_void_lookups_past_two_are_a_permerror() -> None:
    dns = Records(txt={"example.test": [
        "v=spf1 a:n1.test a:n2.test a:n3.test ip4:192.0.2.1 -all"]})
    assert result(dns, "192.0.2.1") == "permerror"


def test_a_resolver_failure_is_a_temperror() -> None:
    dns = Records(txt={"example.test": ["v=spf1 include:slow.test -all"]},
                  failing=frozenset({"slow.test"}))
    assert result(dns, "192.0.2.1") == "temperror"


def test_macros_expand() -> None:
    dns = Records(
        txt={"example.test": ["v=spf1 exists:%{ir}.%{l1r-}.allow.%{d} -all"]},
        a={"1.2.0.192.postmaster.allow.example.test": ["127.0.0.2"]},
    )
    assert result(dns, "192.0.2.1") == "pass"
    assert result(dns, "192.0.2.2") == "fail"


def test_ptr_mechanism_needs_a_confirmed_name() -> None:
    dns = Records(
        txt={"example.test": ["v=spf1 ptr -all"]},
        ptr={"192.0.2.1": ["mta.example.test"], "192.0.2.2": ["liar.example.test"]},
        a={"mta.example.test": ["192.0.2.1"], "liar.example.test": ["198.51.100.1"]},
    )
    assert result(dns, "192.0.2.1") == "pass"
    assert result(dns, "192.0.2.2") == "fail"


def test_malformed_terms_are_permerrors() -> None:
    for record in ("v=spf1 ip4:192.0.2.300 -all", "v=spf1 ip4:2001:db8::1 -all",
                   "v=spf1 frob:x -all", "v=spf1 a/33 -all", "v=spf1 all:x",
                   "v=spf1 include -all", "v=spf1 redirect=a.test redirect=b.test",
                   "v=spf1 exists:%{z}.test -all", "v=spf1 ip4:192.0.2.0/24/1 -all"):
        dns = Records(txt={"example.test": [record]})
        assert result(dns, "192.0.2.1") == "permerror", record


_term = st.one_of(
    st.sampled_from(["all", "-all", "~all", "?all", "+all", "a", "mx", "ptr", "a/24",
                     "mx//64", "redirect=h.test", "exp=x.test", "include:h.test",
                     "exists:%{i}.h.test", "ip4:192.0.2.0/24", "ip6:2001:db8::/32"]),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40),
    st.text(max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_term, max_size=30), st.lists(_term, max_size=30),
       st.sampled_from(["192.0.2.1", "2001:db8::1", "198.51.100.7"]))
def test_hostile_records_never_raise_and_stay_bounded(
        first: list[str], second: list[str], ip: str) -> None:
    dns = Records(
        txt={"example.test": ["v=spf1 " + " ".join(first)],
             "h.test": ["v=spf1 " + " ".join(second)]},
        a={"example.test": ["192.0.2.1"], "h.test": ["2001:db8::1"]},
        mx={"example.test": [(10, "h.test")], "h.test": [(10, "example.test")]},
    )
    verdict = check_host(dns, ip=ip, domain="example.test")
    assert verdict.result in {"pass", "fail", "softfail", "neutral", "none", "permerror",
                              "temperror"}
    # Ten terms with lookups, each of at most ten names, plus the records themselves.
    assert dns.queries <= (MAX_DNS_TERMS + 1) * 11
