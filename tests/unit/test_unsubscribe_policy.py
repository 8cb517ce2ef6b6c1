"""The [unsubscribe] policy section: rules by domain and tenant, and clear errors."""

from __future__ import annotations

import pytest

from quiver.policy import PolicyError, parse_policy

BASE = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
"""
KEYS = '[return_path]\nkey_secret = "quiver/return-path/keys"\n'
BOUNCES = KEYS + '[[return_path.domains]]\nfrom = "example.com"\nbounce = "bounces.example.com"\n'


def policy(section: str, keys: str = KEYS):  # type: ignore[no-untyped-def]
    return parse_policy(BASE + keys + section)


def problems(section: str, keys: str = KEYS) -> str:
    with pytest.raises(PolicyError) as error:
        policy(section, keys)
    return str(error.value)


def test_rules_by_domain_and_tenant() -> None:
    p = policy("""
[[unsubscribe.domains]]
from = "Example.COM"
url = "https://u.example.com/u/"
mailto = "unsubscribe@bounces.example.com"
[[unsubscribe.domains]]
from = "example.com"
tenant = "acme"
url = "https://acme.example.com:8443/leave/"
[[unsubscribe.domains]]
from = "quiet.example"
url = "https://u.example.com/u/"
add = "never"
""", keys=BOUNCES).unsubscribe
    assert p.enabled
    rule = p.rule("example.com", tenant=None)
    assert rule is not None and rule.url == "https://u.example.com/u/"
    assert rule.mailto == "unsubscribe@bounces.example.com" and rule.add == "when_missing"
    acme = p.rule("example.com", tenant="acme")
    assert acme is not None and acme.url == "https://acme.example.com:8443/leave/"
    other = p.rule("example.com", tenant="other")
    assert other is not None and other.tenant is None
    assert p.rule("quiet.example", tenant=None) is None
    assert p.rule("unknown.example", tenant=None) is None


def test_no_section_is_off() -> None:
    assert not parse_policy(BASE).unsubscribe.enabled


@pytest.mark.parametrize(("url", "message"), [
    ("http://u.example.com/u/", "must be https"),
    ("https://u.example.com/u", "the path must end with '/'"),
    ("https://u.example.com/u/?x=1", "no query or fragment"),
    ("https://u.example.com/u/#top", "no query or fragment"),
    ("https://user:pw@u.example.com/u/", "no user or password"),
    ("https://u.example.com/a b/", "no spaces, commas or angle brackets"),
    ("https://u.example.com/a>b/", "no spaces, commas or angle brackets"),
    ("https:///u/", "expected a host name"),
    ("https://" + "a" * 200 + ".example/u/", "at most 200"),
    (42, "expected an https:// URL"),
])
def test_bad_urls_are_refused_with_the_reason(url: object, message: str) -> None:
    text = problems(f'[[unsubscribe.domains]]\nfrom = "example.com"\nurl = {url!r}\n'
                    .replace("'", '"'))
    assert "unsubscribe.domains[0].url" in text and message in text


@pytest.mark.parametrize(("entry", "message"), [
    ('url = "https://u.example.com/u/"', "unsubscribe.domains[0].from: required"),
    ('from = "example.com"', "unsubscribe.domains[0].url: required"),
    ('from = "example.com"\nurl = "https://u.example.com/u/"\nmailto = "nobody"',
     "unsubscribe.domains[0].mailto: expected an address"),
    ('from = "example.com"\nurl = "https://u.example.com/u/"\nadd = "always"',
     "unsubscribe.domains[0].add: expected one of when_missing, never"),
    ('from = "example.com"\nurl = "https://u.example.com/u/"\nlist = "x"',
     "unsubscribe.domains[0].list: unknown key"),
    ('from = "not a domain"\nurl = "https://u.example.com/u/"',
     "unsubscribe.domains[0].from: expected a domain name"),
    ('from = "example.com"\nurl = "https://u.example.com/u/"\ntenant = "a b"',
     "unsubscribe.domains[0].tenant: expected a tenant name"),
])
def test_bad_entries_are_refused_with_the_path(entry: str, message: str) -> None:
    assert message in problems(f"[[unsubscribe.domains]]\n{entry}\n")


def test_a_duplicate_entry_is_refused() -> None:
    entry = '[[unsubscribe.domains]]\nfrom = "example.com"\nurl = "https://u.example.com/u/"\n'
    assert "example.com has an unsubscribe entry already" in problems(entry + entry)


def test_rules_need_the_key_ring() -> None:
    text = problems('[[unsubscribe.domains]]\nfrom = "example.com"\n'
                    'url = "https://u.example.com/u/"\n', keys="")
    assert "tokens are signed with the return-path key ring" in text


def test_a_dkim_key_that_would_not_sign_the_headers_is_refused() -> None:
    text = problems("""
[[dkim]]
domain = "example.com"
selector = "s"
algorithm = "ed25519-sha256"
key_file = "k.pem"
headers = ["from", "to", "subject", "list-unsubscribe"]
[[unsubscribe.domains]]
from = "example.com"
url = "https://u.example.com/u/"
""")
    assert "does not sign list-unsubscribe-post" in text


def test_unknown_section_keys_are_refused() -> None:
    assert "unsubscribe.url: unknown key" in problems('[unsubscribe]\nurl = "x"\n')


def test_the_readme_policy_snippet_loads_and_means_what_it_says() -> None:
    from test_return_path_readme import MINIMAL, block

    section = parse_policy(MINIMAL + block("toml", "# unsubscribe policy")).unsubscribe
    rule = section.rule("example.com", tenant=None)
    assert rule is not None and rule.url == "https://unsubscribe.example.com/u/"
    assert rule.mailto == "unsubscribe@bounces.example.com" and rule.add == "when_missing"
    acme = section.rule("example.com", tenant="acme")
    assert acme is not None and acme.url == "https://leave.acme.example/u/"


def test_only_a_local_only_policy_may_name_a_loopback_http_endpoint() -> None:
    entry = '[[unsubscribe.domains]]\nfrom = "example.com"\nurl = "http://127.0.0.1:8080/u/"\n'
    assert "must be https" in problems(entry)
    local = "local_only = true\n" + BASE + KEYS
    rule = parse_policy(local + entry).unsubscribe.rule("example.com", tenant=None)
    assert rule is not None and rule.url == "http://127.0.0.1:8080/u/"
    with pytest.raises(PolicyError, match="must be https"):
        parse_policy(local + entry.replace("127.0.0.1", "192.0.2.1"))


def rule_with_mailto(mailto: str) -> str:
    return ('[[unsubscribe.domains]]\nfrom = "example.com"\nurl = "https://u.example.com/u/"\n'
            f'mailto = "{mailto}"\n')


FBL = '[feedback]\naddresses = ["fbl@fbl.example.com"]\n'


def test_a_mailto_on_a_bounce_or_fbl_domain_is_received_and_listed_once() -> None:
    p = policy(FBL + rule_with_mailto("unsubscribe@bounces.example.com") + """
[[unsubscribe.domains]]
from = "example.com"
tenant = "acme"
url = "https://u.example.com/u/"
mailto = "Unsubscribe@Bounces.example.com"
[[unsubscribe.domains]]
from = "example.org"
url = "https://u.example.com/u/"
mailto = "leave@fbl.example.com"
add = "never"
""", keys=BOUNCES).unsubscribe
    # add = "never" still counts: mail sent under the rule earlier names its address.
    assert p.mailto_addresses() == ("unsubscribe@bounces.example.com", "leave@fbl.example.com")


def test_a_mailto_that_nothing_receives_is_refused_naming_the_domains_that_are() -> None:
    text = problems(FBL + rule_with_mailto("unsubscribe@example.com"), keys=BOUNCES)
    assert ("unsubscribe.domains[0].mailto: example.com is not a domain SES receives for "
            "Quiver") in text
    assert "bounces.example.com, fbl.example.com" in text
    assert "none in this policy" in problems(rule_with_mailto("u@bounces.example.com"))


def test_a_mailto_that_is_an_fbl_address_is_refused() -> None:
    text = problems(FBL + rule_with_mailto("FBL@fbl.example.com"), keys=BOUNCES)
    assert "unsubscribe.domains[0].mailto: FBL@fbl.example.com is a [feedback] address" in text
    assert "like unsubscribe@fbl.example.com" in text


def test_a_local_only_policy_may_name_any_mailto_domain() -> None:
    """The local stack advertises a mailto it never receives: a local_only policy is
    never deployed (cdk synth refuses one), so no receipt rule would exist anyway."""
    local = "local_only = true\n" + BASE + KEYS
    rules = parse_policy(local + rule_with_mailto("unsubscribe@bounces.demo.test")).unsubscribe
    assert rules.mailto_addresses() == ("unsubscribe@bounces.demo.test",)
