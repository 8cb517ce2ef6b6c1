"""`quiver local --policy FILE`: a fragment merged over the generated local policy."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.devstack.policy_fragment import merge, merged_policy_text, read_fragment
from quiver.devstack.stack import LocalStack, ProxyPorts, local_policy_text
from quiver.policy import PolicyError, parse_policy
from quiver.units import Rate

BASE = local_policy_text(mx_port=2525, ca_file="/tmp/ca.crt", max_age="1h",
                         proxy=ProxyPorts(frontend=2500, health=8500, allowed=(2525,)))


def merged(fragment: str) -> str:
    return merged_policy_text(BASE, tomllib.loads(fragment), origin="frag.toml")


def test_the_generated_policy_is_local_only_and_valid() -> None:
    policy = parse_policy(BASE)
    assert policy.local_only is True
    assert policy.delivery.allow_networks == ("127.0.0.0/8",)
    assert policy.proxy.allow_networks == ("127.0.0.0/8",)


def test_tables_merge_key_by_key() -> None:
    policy = parse_policy(merged('[retry]\nmax_age = "60s"\n[sources.local1]\nehlo = "f.test"\n'))
    assert policy.retry.max_age == 60
    assert policy.retry.first == 1 and policy.retry.site_backoff == 2  # the rest of [retry]
    local1 = policy.sources["local1"]
    assert (local1.ehlo, local1.ip, local1.node) == ("f.test", "127.0.0.2", "n1")
    assert policy.sources["local2"].ehlo == "o2.quiver.local.test"


def test_arrays_of_tables_are_replaced_whole() -> None:
    base = parse_policy(BASE)
    assert [(t.source, t.max_connections) for t in base.throttles] == [("*", 20)]
    policy = parse_policy(merged(
        '[[throttles]]\nsource = "*"\nmax_connections = 2\nmax_rate = "10/s"\n'
        '[[throttles]]\nsource = "local3"\ndomain = "alpha.test"\nmax_connections = 1\n'
    ))
    assert [(t.source, t.scope, t.max_connections, t.max_rate) for t in policy.throttles] == [
        ("*", "any", 2, Rate(10, 1.0)), ("local3", "domain", 1, None),
    ]
    assert [k.domain for k in policy.dkim] == [k.domain for k in base.dkim]  # untouched


def test_plain_values_and_lists_are_replaced() -> None:
    policy = parse_policy(merged('[delivery]\nallow_networks = ["127.0.0.1/32"]\n'
                                 '[proxy]\nallowed_ports = [2525, 2526]\n'))
    assert policy.delivery.allow_networks == ("127.0.0.1/32",)
    assert policy.proxy.allowed_ports == (2525, 2526)


def test_problems_name_their_paths_and_the_fragment() -> None:
    with pytest.raises(PolicyError) as refused:
        merged('[retry]\nmax_age = "forever"\nmaxage = "1h"\n[[throttles]]\nsource = "nope"\n'
               'max_connections = 1\n')
    text = str(refused.value)
    assert text.startswith("frag.toml (merged over the local stack's policy): 3 problem(s)")
    assert "throttles[0].source: unknown source 'nope'" in refused.value.problems
    assert any(p.startswith("retry.maxage: unknown key") for p in refused.value.problems)
    assert any(p.startswith("retry.max_age: expected a duration") for p in refused.value.problems)


def test_turning_local_only_off_is_refused_with_the_allow_lists_paths() -> None:
    with pytest.raises(PolicyError) as refused:
        merged("local_only = false\n")
    assert [p.split(":")[0] for p in refused.value.problems] == [
        "delivery.allow_networks[0]", "proxy.allow_networks[0]",
    ]


def test_the_written_text_is_the_merged_policy() -> None:
    fragment = '[retry]\nmax_age = "60s"\n[delivery]\nehlo = "x.test"\n'
    text = merged(fragment)
    assert text.startswith("# Written by the local stack: its generated policy with frag.toml")
    assert tomllib.loads(text) == merge(tomllib.loads(BASE), tomllib.loads(fragment))


def test_read_fragment_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "frag.toml"
    path.write_text("[retry\n")
    with pytest.raises(PolicyError, match=r"frag\.toml: 1 problem\(s\)\n  not valid TOML"):
        read_fragment(path)
    with pytest.raises(PolicyError, match="cannot read"):
        read_fragment(tmp_path / "absent.toml")
    path.write_text('[retry]\nfirst = "2s"\n')
    assert read_fragment(path) == {"retry": {"first": "2s"}}


def test_the_local_stack_refuses_a_bad_fragment_before_starting(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "never", policy_fragment={"retry": {"cap": "soon"}},
                       fragment_origin="frag.toml")
    with pytest.raises(PolicyError, match=r"retry\.cap"):
        stack.start()
    assert not (tmp_path / "never").exists()


TOML_SCALARS = st.one_of(st.integers(-1000, 1000), st.booleans(), st.text(max_size=5))
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda inner: st.dictionaries(st.text("abc", min_size=1, max_size=2), inner, max_size=3),
    max_leaves=8,
)
TABLES = st.dictionaries(st.text("abc", min_size=1, max_size=2), TOML_VALUES, max_size=4)


@given(TABLES, TABLES)
def test_merge_takes_every_fragment_value_and_keeps_the_rest(base, fragment) -> None:
    before = copy.deepcopy((base, fragment))
    out = merge(base, fragment)
    assert (base, fragment) == before  # neither input is changed

    def check(out, base, fragment):
        for key, value in fragment.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                check(out[key], base[key], value)
            else:
                assert out[key] == value
        for key, value in base.items():
            if key not in fragment:
                assert out[key] == value

    check(out, base, fragment)
    assert merge(base, {}) == base and merge({}, fragment) == fragment
