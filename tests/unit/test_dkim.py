"""DKIM signer: dkimpy verifies its signatures, they break when signed content changes."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.canonicalization import Relaxed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiver.dkim import (
    DEFAULT_SIGNED_HEADERS,
    DkimError,
    DkimSigner,
    SignerSet,
    dns_txt_value,
    generate_private_key,
    signers_from_policy,
)
from quiver.dkim.canon import relaxed_body, relaxed_header, split_message
from quiver.message import to_crlf
from quiver.policy import DkimKey

T = 1_700_000_000
EMPTY_BODY_HASH = base64.b64encode(hashlib.sha256(b"").digest()).decode()


def wire(message: bytes) -> bytes:
    """The bytes the SMTP wire client sends: every line end as CRLF, a final CRLF."""
    message = re.sub(rb"\r\n|\n|\r(?!\n)", b"\r\n", message)
    return message if message.endswith(b"\r\n") else message + b"\r\n"


class Zone:
    """DKIM key records answered from a dict, in dkimpy's dnsfunc shape."""

    def __init__(self) -> None:
        self.records: dict[str, str] = {}

    def add(self, signer: DkimSigner, pem: bytes) -> None:
        self.records[f"{signer.selector}._domainkey.{signer.domain}"] = dns_txt_value(pem)

    def __call__(self, name: bytes, timeout: int = 5) -> bytes | None:
        record = self.records.get(name.decode().rstrip(".").lower())
        return record.encode() if record is not None else None

    def verifies(self, message: bytes) -> bool:
        return bool(dkim.verify(message, dnsfunc=self))


@pytest.fixture(scope="module")
def rsa_pem() -> bytes:
    return generate_private_key("rsa-sha256")


@pytest.fixture(scope="module")
def ed_pem() -> bytes:
    return generate_private_key("ed25519-sha256")


@pytest.fixture(scope="module")
def zone(rsa_pem: bytes, ed_pem: bytes) -> Zone:
    z = Zone()
    z.add(DkimSigner.from_pem(domain="example.com", selector="rsa", algorithm="rsa-sha256",
                              pem=rsa_pem, headers=DEFAULT_SIGNED_HEADERS), rsa_pem)
    z.add(DkimSigner.from_pem(domain="example.com", selector="ed", algorithm="ed25519-sha256",
                              pem=ed_pem, headers=DEFAULT_SIGNED_HEADERS), ed_pem)
    return z


@pytest.fixture(scope="module", params=["rsa-sha256", "ed25519-sha256"])
def signer(request: pytest.FixtureRequest, rsa_pem: bytes, ed_pem: bytes) -> DkimSigner:
    rsa_key = request.param == "rsa-sha256"
    return DkimSigner.from_pem(
        domain="example.com", selector="rsa" if rsa_key else "ed", algorithm=request.param,
        pem=rsa_pem if rsa_key else ed_pem, headers=DEFAULT_SIGNED_HEADERS,
    )


MESSAGE = (
    b"Received: from app1 by relay; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"From: Example Shop <news@example.com>\r\n"
    b"To: Ann Reader <ann@example.org>\r\n"
    b"Subject: Your weekly deals\r\n"
    b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"Message-ID: <20231114221320.1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"List-Unsubscribe: <https://example.com/u/1>, <mailto:u+1@example.com>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"X-Mailer: quiver\r\n"
    b"\r\n"
    b"Hello Ann,\r\n"
    b"\r\n"
    b"This week's deals are in.\r\n"
)


def signed(signer: DkimSigner, message: bytes) -> bytes:
    return signer.sign(message, timestamp=T) + wire(message)


def tags(field: bytes) -> dict[str, str]:
    value = field.decode().split(":", 1)[1]
    value = re.sub(r"\s+", "", value)
    return dict(t.split("=", 1) for t in value.split(";") if t)


# --- the signature verifies, and only the unchanged message verifies ---


def test_signature_verifies_with_dkimpy(signer: DkimSigner, zone: Zone) -> None:
    assert zone.verifies(signed(signer, MESSAGE))


def test_header_field_shape(signer: DkimSigner) -> None:
    field = signer.sign(MESSAGE, timestamp=T)
    assert field.startswith(b"DKIM-Signature: v=1; ")
    assert field.endswith(b"\r\n") and field.count(b"\r\n") == field.count(b"\n")
    lines = field[:-2].split(b"\r\n")
    assert all(len(line) <= 78 for line in lines), lines
    assert all(line[:1] == b" " for line in lines[1:])
    t = tags(field)
    assert list(t) == ["v", "a", "c", "d", "s", "t", "h", "bh", "b"]
    assert t["a"] == signer.algorithm
    assert t["c"] == "relaxed/relaxed"
    assert (t["d"], t["s"], t["t"]) == ("example.com", signer.selector, str(T))
    # Present fields from the list, in list order, From once more than present;
    # Cc, Reply-To, ... are absent and X-Mailer/Received are not in the list.
    assert t["h"] == ("from:from:to:subject:date:message-id:mime-version:content-type:"
                      "list-unsubscribe:list-unsubscribe-post")
    assert "l" not in t


def test_ed25519_signature_is_deterministic(ed_pem: bytes) -> None:
    s = DkimSigner.from_pem(domain="example.com", selector="ed", algorithm="ed25519-sha256",
                            pem=ed_pem, headers=["from"])
    assert s.sign(MESSAGE, timestamp=T) == s.sign(MESSAGE, timestamp=T)
    assert s.sign(MESSAGE, timestamp=T) != s.sign(MESSAGE, timestamp=T + 1)


def test_timestamp_defaults_to_now(signer: DkimSigner) -> None:
    before = int(time.time())
    t = int(tags(signer.sign(MESSAGE))["t"])
    assert before <= t <= int(time.time())


def test_altered_signed_header_fails(signer: DkimSigner, zone: Zone) -> None:
    good = signed(signer, MESSAGE)
    assert not zone.verifies(good.replace(b"Your weekly deals", b"Your weekly dealz"))
    assert not zone.verifies(good.replace(b"ann@example.org", b"bob@example.org"))
    assert not zone.verifies(good.replace(b"news@example.com", b"news@evil.example"))


def test_unsigned_header_may_change(signer: DkimSigner, zone: Zone) -> None:
    good = signed(signer, MESSAGE)
    assert zone.verifies(good.replace(b"X-Mailer: quiver", b"X-Mailer: other"))


def test_removing_a_signed_header_fails(signer: DkimSigner, zone: Zone) -> None:
    good = signed(signer, MESSAGE)
    assert not zone.verifies(good.replace(b"MIME-Version: 1.0\r\n", b""))


def test_body_change_fails(signer: DkimSigner, zone: Zone) -> None:
    good = signed(signer, MESSAGE)
    assert not zone.verifies(good.replace(b"deals are in", b"deals are out"))
    assert not zone.verifies(good + b"P.S. appended\r\n")


def test_relaxed_whitespace_changes_still_verify(signer: DkimSigner, zone: Zone) -> None:
    good = signed(signer, MESSAGE)
    changed = (good.replace(b"deals are in.\r\n", b"deals   are\tin.  \r\n\r\n\r\n")
               .replace(b"Subject: Your weekly deals", b"SUBJECT:Your\r\n\tweekly   deals "))
    assert zone.verifies(changed)


# --- message shapes ---


def test_folded_headers_verify(signer: DkimSigner, zone: Zone) -> None:
    message = MESSAGE.replace(
        b"To: Ann Reader <ann@example.org>\r\n",
        b"To: Ann Reader <ann@example.org>,\r\n  Bob Reader\r\n\t<bob@example.org>\r\n",
    ).replace(b"Subject: Your weekly deals", b"Subject:\r\n Your weekly\r\n deals")
    assert zone.verifies(signed(signer, message))
    # The folded parts are signed: changing a continuation line breaks it.
    assert not zone.verifies(signed(signer, message).replace(b"<bob@", b"<rob@"))


def test_duplicate_headers_are_signed_bottom_up(signer: DkimSigner, zone: Zone) -> None:
    message = MESSAGE.replace(
        b"To: Ann Reader <ann@example.org>\r\n",
        b"To: ann@example.org\r\nReceived: by hop2\r\nTo: bob@example.org\r\n"
        b"Cc: c1@example.org\r\nCc: c2@example.org\r\n",
    )
    field = signer.sign(message, timestamp=T)
    assert tags(field)["h"].startswith("from:from:to:to:cc:cc:subject:")
    good = field + wire(message)
    assert zone.verifies(good)
    # Swapping the two To fields changes the order they are hashed in.
    swapped = good.replace(b"To: ann@example.org", b"To: TMP").replace(
        b"To: bob@example.org", b"To: ann@example.org").replace(b"To: TMP", b"To: bob@example.org")
    assert not zone.verifies(swapped)
    assert not zone.verifies(good.replace(b"Cc: c2@example.org\r\n", b""))


def test_lf_only_message_signs_as_its_crlf_form(signer: DkimSigner, zone: Zone) -> None:
    lf = MESSAGE.replace(b"\r\n", b"\n")
    assert signer.sign(lf, timestamp=T) == signer.sign(MESSAGE, timestamp=T)
    assert zone.verifies(signer.sign(lf, timestamp=T) + wire(lf))


def test_mixed_and_lone_cr_line_ends_sign_as_the_wire_form(signer: DkimSigner, zone: Zone) -> None:
    mixed = MESSAGE.replace(b"Hello Ann,\r\n", b"Hello Ann,\n").replace(b"deals.\r\n", b"deals.\r")
    assert zone.verifies(signer.sign(mixed, timestamp=T) + wire(mixed))


def test_trailing_empty_lines_are_ignored(signer: DkimSigner, zone: Zone) -> None:
    padded = MESSAGE + b"\r\n\r\n  \r\n\t\r\n"
    assert tags(signer.sign(padded, timestamp=T))["bh"] == tags(signer.sign(MESSAGE))["bh"]
    assert zone.verifies(signed(signer, padded))


@pytest.mark.parametrize("tail", [b"\r\n", b"\r\n\r\n", b"", b"\r\n\r\n\r\n\r\n"])
def test_empty_body(signer: DkimSigner, zone: Zone, tail: bytes) -> None:
    head = MESSAGE.split(b"\r\n\r\n")[0]
    message = head + tail
    assert tags(signer.sign(message, timestamp=T))["bh"] == EMPTY_BODY_HASH
    assert zone.verifies(signed(signer, message))


def test_body_without_final_line_end(signer: DkimSigner, zone: Zone) -> None:
    message = MESSAGE + b"no line end here  "
    assert zone.verifies(signed(signer, message))


def test_long_lines_and_8bit_body_verify(signer: DkimSigner, zone: Zone) -> None:
    body = (b"x" * 990 + b"\r\n" + bytes(range(0x80, 0x100)) + b"\r\n"
            + "caf\u00e9 \u00fcber \u2603\r\n".encode() + b"a \t b\t\r\n" * 200)
    message = MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body
    assert zone.verifies(signed(signer, message))
    assert not zone.verifies(signed(signer, message).replace(b"\xff", b"\xfe"))


def test_8bit_header_value_verifies(signer: DkimSigner, zone: Zone) -> None:
    message = MESSAGE.replace(b"Your weekly deals", "Deine Angebote f\u00fcr M\u00e4rz".encode())
    assert zone.verifies(signed(signer, message))


def test_header_names_any_case(signer: DkimSigner, zone: Zone) -> None:
    message = MESSAGE.replace(b"From:", b"FROM:").replace(b"Subject:", b"sUbJeCt:")
    assert tags(signer.sign(message, timestamp=T))["h"].startswith("from:from:to:subject:")
    assert zone.verifies(signed(signer, message))


def test_body_lookalike_headers_are_not_signed(signer: DkimSigner, zone: Zone) -> None:
    # A "Cc:" line in the body is body text, not a header field to sign.
    message = MESSAGE + b"Cc: someone@example.org\r\n"
    assert "cc" not in tags(signer.sign(message, timestamp=T))["h"].split(":")
    assert zone.verifies(signed(signer, message))


# --- over-signing From ---


def test_added_from_header_fails(signer: DkimSigner, zone: Zone) -> None:
    good = signed(signer, MESSAGE)
    field_end = good.index(b"Received:")
    on_top = good[:field_end] + b"From: attacker@evil.example\r\n" + good[field_end:]
    at_bottom = good.replace(b"\r\n\r\n", b"\r\nFrom: attacker@evil.example\r\n\r\n", 1)
    assert zone.verifies(good)
    assert not zone.verifies(on_top)
    assert not zone.verifies(at_bottom)


def test_added_unlisted_header_still_verifies(signer: DkimSigner, zone: Zone) -> None:
    # Control for the test above: it is the extra From that breaks the signature.
    good = signed(signer, MESSAGE)
    assert zone.verifies(good.replace(b"\r\n\r\n", b"\r\nX-Added: fine\r\n\r\n", 1))


# --- bad input ---


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"To: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n", "no From"),
        (b"", "no header fields"),
        (b"\r\nFrom: a@example.com\r\n\r\nbody\r\n", "no header fields"),
        (b"From: a@example.com\r\nSubject: a\x00b\r\n\r\nbody\r\n", "NUL"),
        (b"From: a@example.com\x00\r\n\r\nbody\r\n", "NUL"),
        (b"From: a@example.com\r\nFrom: b@example.com\r\n\r\nx\r\n", "2 From"),
        (b"From: a@example.com\r\nnot a header\r\n\r\nx\r\n", "malformed header line"),
        (b"From: a@example.com\r\n: empty name\r\n\r\nx\r\n", "malformed header line"),
        (b"From: a@example.com\r\nSubject : obsolete\r\n\r\nx\r\n", "malformed header line"),
        (b" folded: first\r\nFrom: a@example.com\r\n\r\nx\r\n", "continuation"),
        (b"From a@example.com Mon Jan 1\r\nFrom: a@example.com\r\n\r\nx\r\n", "malformed"),
    ],
)
def test_bad_messages_are_refused(signer: DkimSigner, message: bytes, error: str) -> None:
    with pytest.raises(DkimError, match=error):
        signer.sign(message, timestamp=T)


def test_nul_in_body_is_not_a_header_error(signer: DkimSigner, zone: Zone) -> None:
    message = MESSAGE + b"binary\x00part\r\n"
    assert zone.verifies(signed(signer, message))


def test_bad_timestamp_is_refused(signer: DkimSigner) -> None:
    with pytest.raises(DkimError, match="timestamp"):
        signer.sign(MESSAGE, timestamp=-1)


# --- hypothesis: random header sets and bodies always verify ---

_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
_NAMES = ["From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "MIME-Version",
          "Content-Type", "List-Unsubscribe", "Feedback-ID", "X-Mailer", "Received", "X-Tag"]
_words = st.lists(st.text(alphabet=_PRINTABLE, min_size=1, max_size=12), max_size=6)
_seps = st.sampled_from([" ", "\t", "  ", " \t ", "\r\n ", "\r\n\t", " \r\n  "])


@st.composite
def header_value(draw: st.DrawFn) -> str:
    words = draw(_words)
    lead = draw(st.sampled_from(["", " ", "\t", "   "]))
    out = lead
    for i, word in enumerate(words):
        out += (draw(_seps) if i else "") + word
    return out + draw(st.sampled_from(["", " ", "\t "]))


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    names = draw(st.lists(st.sampled_from([n for n in _NAMES if n != "From"]), max_size=10))
    fields = [
        f"{draw(st.sampled_from([n, n.lower(), n.upper()]))}:{draw(header_value())}" for n in names
    ]
    fields.insert(draw(st.integers(0, len(fields))), f"From:{draw(header_value())}")
    body = draw(st.text(alphabet=_PRINTABLE + " \t\r\n", max_size=300))
    message = ("\r\n".join(fields) + "\r\n\r\n" + body).encode("ascii")
    if draw(st.booleans()):
        message = message.replace(b"\r\n", b"\n")
    return message


_fuzz = settings(max_examples=60, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


@_fuzz
@given(message=messages())
def test_random_messages_verify(signer: DkimSigner, zone: Zone, message: bytes) -> None:
    assert zone.verifies(signer.sign(message, timestamp=T) + wire(message))


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200) | st.text(alphabet=" \t\r\nab", max_size=60).map(str.encode))
def test_body_canonicalisation_matches_dkimpy(body: bytes) -> None:
    # dkimpy canonicalises the wire form, where every line end is CRLF.
    crlf = wire(body) if body else body
    assert relaxed_body(to_crlf(body)) == Relaxed.canonicalize_body(crlf)


@settings(max_examples=300, deadline=None)
@given(value=header_value(), name=st.sampled_from(_NAMES))
def test_header_canonicalisation_matches_dkimpy(name: str, value: str) -> None:
    raw = f"{name}:{value}\r\n\r\n".encode()
    [(lname, unfolded)], _ = split_message(raw)
    dk_name, dk_value = Relaxed.canonicalize_headers(dkim.rfc822_parse(raw)[0])[0]
    assert relaxed_header(lname, unfolded) == dk_name + b":" + dk_value


@pytest.mark.parametrize("run", [1, 2, 3, 7, 8, 9, 1000, 4097])
def test_long_blank_runs_canonicalise_like_dkimpy(run: int) -> None:
    body = b"a" + b" " * run + b"b\t" + b" \t" * run + b"c" + b" " * run + b"\r\n"
    assert relaxed_body(body) == Relaxed.canonicalize_body(body) == b"a b c\r\n"


def test_body_hash_matches_dkimpy_signer(rsa_pem: bytes) -> None:
    pkcs1 = serialization.load_pem_private_key(rsa_pem, password=None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption())
    message = MESSAGE + b"  tabs\tand  spaces \t\r\n\r\n"
    theirs = dkim.sign(message, b"rsa", b"example.com", pkcs1,
                       canonicalize=(b"relaxed", b"relaxed"), include_headers=[b"from"])
    ours = DkimSigner.from_pem(domain="example.com", selector="rsa", algorithm="rsa-sha256",
                               pem=rsa_pem, headers=["from"]).sign(message, timestamp=T)
    assert tags(ours)["bh"] == tags(theirs)["bh"]


# --- keys ---


def test_generated_keys_and_dns_records(rsa_pem: bytes, ed_pem: bytes) -> None:
    assert rsa_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    rsa_key = serialization.load_pem_private_key(rsa_pem, password=None)
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and rsa_key.key_size == 2048
    record = dns_txt_value(rsa_pem)
    assert record.startswith("v=DKIM1; k=rsa; p=")
    der = base64.b64decode(record.split("p=")[1])
    assert serialization.load_der_public_key(der).public_numbers() == (
        rsa_key.public_key().public_numbers())
    ed_record = dns_txt_value(ed_pem)
    assert ed_record.startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(ed_record.split("p=")[1])) == 32  # raw key, RFC 8463
    public_pem = serialization.load_pem_private_key(ed_pem, password=None).public_key()\
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert dns_txt_value(public_pem) == ed_record


def test_rsa_1024_signs_and_verifies() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    s = DkimSigner.from_pem(domain="example.net", selector="old", algorithm="rsa-sha256",
                            pem=pem, headers=["from", "subject"])
    z = Zone()
    z.add(s, pem)
    assert z.verifies(s.sign(MESSAGE.replace(b"example.com", b"example.net"), timestamp=T)
                      + MESSAGE.replace(b"example.com", b"example.net"))


@pytest.mark.parametrize(
    ("algorithm", "pem_of", "error"),
    [
        ("ed25519-sha256", "rsa", "needs an Ed25519 key"),
        ("rsa-sha256", "ed", "needs an RSA key"),
        ("rsa-sha1", "rsa", "unknown DKIM algorithm"),
        ("rsa-sha256", "garbage", "not a PEM private key"),
        ("rsa-sha256", "encrypted", "encrypted"),
    ],
)
def test_unusable_keys_are_refused(
    rsa_pem: bytes, ed_pem: bytes, algorithm: str, pem_of: str, error: str
) -> None:
    pems = {
        "rsa": rsa_pem, "ed": ed_pem, "garbage": b"-----BEGIN PRIVATE KEY-----\nnope\n",
        "encrypted": serialization.load_pem_private_key(ed_pem, password=None).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw")),
    }
    with pytest.raises(DkimError, match=error):
        DkimSigner.from_pem(domain="example.com", selector="s", algorithm=algorithm,
                            pem=pems[pem_of], headers=["from"])


def test_key_object_must_fit_the_algorithm(rsa_pem: bytes) -> None:
    key = serialization.load_pem_private_key(rsa_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    with pytest.raises(DkimError, match="ed25519-sha256 cannot sign with"):
        DkimSigner(domain="example.com", selector="s", algorithm="ed25519-sha256", key=key)


@pytest.mark.parametrize(
    ("domain", "selector", "headers", "error"),
    [
        ("example.com; x=1", "s", ["from"], "domain"),
        ("example.com", "s\r\nBcc: x", ["from"], "selector"),
        ("example..com", "s", ["from"], "domain"),
        ("example.com", "s", ["to", "subject"], "must include 'from'"),
        ("example.com", "s", ["from", "sub ject"], "not a header field name"),
    ],
)
def test_bad_settings_are_refused(
    ed_pem: bytes, domain: str, selector: str, headers: list[str], error: str
) -> None:
    with pytest.raises(DkimError, match=error):
        DkimSigner.from_pem(domain=domain, selector=selector, algorithm="ed25519-sha256",
                            pem=ed_pem, headers=headers)


def test_configured_header_names_are_lowercased_and_deduplicated(ed_pem: bytes) -> None:
    s = DkimSigner.from_pem(domain="Example.COM", selector="ed", algorithm="ed25519-sha256",
                            pem=ed_pem, headers=["From", "SUBJECT", "from", "Subject"])
    assert s.headers == ("from", "subject")
    assert s.domain == "example.com"
    assert tags(s.sign(MESSAGE, timestamp=T))["h"] == "from:from:subject"


# --- signer sets from policy ---


def test_signers_from_policy_reads_files_and_secrets(tmp_path: Path, rsa_pem: bytes,
                                                      ed_pem: bytes) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "a.pem").write_bytes(rsa_pem)
    secrets = {"quiver/dkim/b": ed_pem.decode()}
    asked: list[str] = []

    def load_secret(secret_id: str) -> str:
        asked.append(secret_id)
        return secrets[secret_id]

    keys = [
        DkimKey(domain="a.example", selector="s1", algorithm="rsa-sha256",
                key_file="keys/a.pem", headers=("from", "subject")),
        DkimKey(domain="b.example", selector="s2", algorithm="ed25519-sha256",
                key_secret="quiver/dkim/b"),
    ]
    signers = signers_from_policy(keys, load_secret=load_secret, base_dir=tmp_path)
    assert len(signers) == 2 and asked == ["quiver/dkim/b"]
    (a,), (b,) = signers.for_domain("A.Example."), signers.for_domain("b.example")
    assert (a.selector, a.algorithm, a.headers) == ("s1", "rsa-sha256", ("from", "subject"))
    assert (b.selector, b.headers) == ("s2", DEFAULT_SIGNED_HEADERS)
    assert signers.for_domain("c.example") == ()
    assert signers.for_domain("sub.a.example") == ()
    z = Zone()
    z.add(b, ed_pem)
    message = MESSAGE.replace(b"example.com", b"b.example")
    assert z.verifies(b.sign(message, timestamp=T) + message)


def test_missing_key_file_names_domain_and_path(tmp_path: Path) -> None:
    keys = [DkimKey(domain="a.example", selector="s1", algorithm="rsa-sha256",
                    key_file="keys/missing.pem")]
    with pytest.raises(DkimError) as e:
        signers_from_policy(keys, base_dir=tmp_path)
    message = str(e.value)
    assert "a.example" in message and "s1" in message
    assert str(tmp_path / "keys" / "missing.pem") in message


def test_bad_key_file_names_domain_and_path(tmp_path: Path, ed_pem: bytes) -> None:
    (tmp_path / "k.pem").write_bytes(ed_pem)
    keys = [DkimKey(domain="a.example", selector="s1", algorithm="rsa-sha256", key_file="k.pem")]
    with pytest.raises(DkimError, match=r"a\.example \(selector s1\) from key_file .*k\.pem: "
                                        "rsa-sha256 needs an RSA key"):
        signers_from_policy(keys, base_dir=tmp_path)


def test_secret_errors_name_the_secret() -> None:
    keys = [DkimKey(domain="a.example", selector="s1", algorithm="ed25519-sha256",
                    key_secret="quiver/dkim/gone")]

    def load_secret(secret_id: str) -> bytes:
        raise KeyError(f"ResourceNotFoundException: {secret_id}")

    with pytest.raises(DkimError, match=r"a\.example .*key_secret quiver/dkim/gone.*NotFound"):
        signers_from_policy(keys, load_secret=load_secret)
    with pytest.raises(DkimError, match="key_secret quiver/dkim/gone needs a secret reader"):
        signers_from_policy(keys)


def test_signer_set_holds_several_selectors_per_domain_but_not_one_twice(
    rsa_pem: bytes, ed_pem: bytes,
) -> None:
    def signer(selector: str, algorithm: str, pem: bytes) -> DkimSigner:
        return DkimSigner.from_pem(domain="A.example", selector=selector, algorithm=algorithm,
                                   pem=pem, headers=["from"])

    rsa, ed = signer("r", "rsa-sha256", rsa_pem), signer("e", "ed25519-sha256", ed_pem)
    signers = SignerSet([rsa, ed])
    assert signers.for_domain("a.example") == (rsa, ed) and len(signers) == 2
    with pytest.raises(DkimError, match=r"two DKIM signers for a\.example with selector r"):
        SignerSet([rsa, ed, signer("r", "ed25519-sha256", ed_pem)])
    with pytest.raises(DkimError, match=r"more than 3 DKIM signers for a\.example"):
        SignerSet([rsa, ed, signer("r2", "rsa-sha256", rsa_pem),
                   signer("e2", "ed25519-sha256", ed_pem)])
