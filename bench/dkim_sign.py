"""DKIM signing cost per message: quiver's signer against dkimpy's `dkim.sign`.

Signs one realistic 5 KB marketing message (multipart/alternative, quoted-printable
text and HTML parts) and prints the median over several runs of microseconds per
message. Prints figures only; never fails on time.

    .venv/bin/python bench/dkim_sign.py
"""

from __future__ import annotations

import base64
import statistics
import time
from collections.abc import Callable

import dkim
from cryptography.hazmat.primitives import serialization

from quiver.dkim import DEFAULT_SIGNED_HEADERS, DkimSigner, dns_txt_value, generate_private_key
from quiver.dkim.canon import relaxed_body, relaxed_header, split_message
from quiver.message import to_crlf

RUNS = 7
# Each run lasts about this long (bounded by MAX_PER_RUN messages), so the whole
# benchmark takes a few seconds whatever the machine.
RUN_SECONDS = 0.25
MAX_PER_RUN = 20_000
T = 1_700_000_000


def marketing_message() -> bytes:
    headers = (
        "Return-Path: <bounce+1f3a@mail.example.com>\r\n"
        "From: Example Outfitters <news@example.com>\r\n"
        "To: Ann Reader <ann.reader@example.org>\r\n"
        "Reply-To: Example Support <support@example.com>\r\n"
        "Subject: =?utf-8?q?Autumn_sale=3A_30=25_off_jackets_=E2=80=94_this_weekend_only?=\r\n"
        "Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
        "Message-ID: <20231114221320.5f1c2a@mail.example.com>\r\n"
        "MIME-Version: 1.0\r\n"
        "List-Unsubscribe: <https://example.com/u/eyJ1IjoiYW5uIn0>,\r\n"
        " <mailto:unsubscribe+eyJ1IjoiYW5uIn0@example.com>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        "Feedback-ID: autumn-sale:newsletter:example\r\n"
        "X-Campaign: autumn-sale-2023\r\n"
        'Content-Type: multipart/alternative; boundary="b1_5f1c2a"\r\n'
    )
    text_lines = [
        "Hi Ann,",
        "",
        "Our autumn sale starts now: 30% off every jacket, this weekend only.",
        "",
    ] + [
        f"  * Jacket model {i:02d} =E2=80=94 was =E2=82=AC{100 + i}, now =E2=82=AC{70 + i}  "
        for i in range(12)
    ] + ["", "Shop now: https://example.com/sale?utm_source=mail&utm_campaign=autumn", ""]
    html_rows = "".join(
        f'<tr>\r\n  <td style=3D"padding:8px;font-family:Arial">Jacket {i:02d}</td>\r\n'
        f'  <td style=3D"padding:8px">=E2=82=AC{70 + i}</td>\r\n</tr>\r\n'
        for i in range(24)
    )
    html = (
        "<!DOCTYPE html>\r\n<html><body style=3D\"margin:0\">\r\n"
        "<table width=3D\"600\" cellpadding=3D\"0\" cellspacing=3D\"0\">\r\n"
        + html_rows
        + "</table>\r\n<p><a href=3D\"https://example.com/sale\">Shop the sale</a></p>\r\n"
        "</body></html>\r\n"
    )
    body = (
        "This is a multi-part message in MIME format.\r\n\r\n"
        "--b1_5f1c2a\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + "\r\n".join(text_lines)
        + "\r\n--b1_5f1c2a\r\nContent-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + html
        + "\r\n--b1_5f1c2a--\r\n"
    )
    return (headers + "\r\n" + body).encode("ascii")


def median_us(fn: Callable[[], object]) -> float:
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    per_run = max(3, min(MAX_PER_RUN, int(RUN_SECONDS / once)))
    results = []
    for _ in range(RUNS):
        start = time.perf_counter()
        for _ in range(per_run):
            fn()
        results.append((time.perf_counter() - start) / per_run * 1e6)
    return statistics.median(results)


def main() -> None:
    message = marketing_message()
    rsa_pem = generate_private_key("rsa-sha256")
    ed_pem = generate_private_key("ed25519-sha256")
    rsa_signer = DkimSigner.from_pem(domain="example.com", selector="rsa", algorithm="rsa-sha256",
                                     pem=rsa_pem, headers=DEFAULT_SIGNED_HEADERS)
    ed_signer = DkimSigner.from_pem(domain="example.com", selector="ed",
                                    algorithm="ed25519-sha256", pem=ed_pem,
                                    headers=DEFAULT_SIGNED_HEADERS)
    # dkimpy reads RSA keys only as PKCS#1 PEM, and Ed25519 keys as the base64 raw seed.
    rsa_pkcs1 = serialization.load_pem_private_key(rsa_pem, password=None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption())
    ed_seed = base64.b64encode(
        serialization.load_pem_private_key(ed_pem, password=None).private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption()))
    include = [h.encode() for h in DEFAULT_SIGNED_HEADERS]

    def dkimpy(key: bytes, selector: bytes, algorithm: bytes) -> bytes:
        return bytes(dkim.sign(message, selector, b"example.com", key,
                               signature_algorithm=algorithm,
                               canonicalize=(b"relaxed", b"relaxed"), include_headers=include))

    zone = {
        "rsa._domainkey.example.com": dns_txt_value(rsa_pem).encode(),
        "ed._domainkey.example.com": dns_txt_value(ed_pem).encode(),
    }

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return zone.get(name.decode().rstrip("."))

    checks = {
        "quiver rsa": rsa_signer.sign(message, timestamp=T) + message,
        "quiver ed25519": ed_signer.sign(message, timestamp=T) + message,
        "dkimpy rsa": dkimpy(rsa_pkcs1, b"rsa", b"rsa-sha256") + message,
        "dkimpy ed25519": dkimpy(ed_seed, b"ed", b"ed25519-sha256") + message,
    }
    for name, signed in checks.items():
        if not dkim.verify(signed, dnsfunc=dnsfunc):
            raise SystemExit(f"{name}: signature does not verify; figures would be meaningless")

    crlf = to_crlf(message)
    _, body = split_message(crlf)

    def canonicalise() -> bytes:
        fields, body = split_message(to_crlf(message))
        return b"".join(relaxed_header(n, v) for n, v in fields) + relaxed_body(body)

    print(f"message: {len(message)} bytes ({len(body)} bytes body), "
          f"{len(DEFAULT_SIGNED_HEADERS)} header names configured; all signatures verify")
    print(f"median of {RUNS} runs, microseconds per message:")
    figures = {
        "quiver relaxed body canonicalisation": median_us(lambda: relaxed_body(body)),
        "quiver split + canonicalise all": median_us(canonicalise),
        "quiver rsa-sha256 (RSA-2048)": median_us(lambda: rsa_signer.sign(message, timestamp=T)),
        "quiver ed25519-sha256": median_us(lambda: ed_signer.sign(message, timestamp=T)),
        "dkimpy dkim.sign rsa-sha256": median_us(
            lambda: dkimpy(rsa_pkcs1, b"rsa", b"rsa-sha256")),
        "dkimpy dkim.sign ed25519-sha256": median_us(
            lambda: dkimpy(ed_seed, b"ed", b"ed25519-sha256")),
    }
    for name, us in figures.items():
        print(f"  {name:<40} {us:10.1f}")
    rsa_ratio = figures["dkimpy dkim.sign rsa-sha256"] / figures["quiver rsa-sha256 (RSA-2048)"]
    ed_ratio = figures["dkimpy dkim.sign ed25519-sha256"] / figures["quiver ed25519-sha256"]
    print(f"dkimpy / quiver: rsa-sha256 {rsa_ratio:.1f}x, ed25519-sha256 {ed_ratio:.1f}x")


if __name__ == "__main__":
    main()
