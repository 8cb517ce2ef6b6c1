"""CPU per message of the content checks (quiver.content) the sender runs before signing.

For a 5 KB multipart message as the demo renders it (7-bit, short lines: the hot
path), the same with one 1,500-octet line (re-encoded as quoted-printable), with
8-bit UTF-8 text (checked, signed as it is), and for the 8-bit one the cost of its
7-bit form with its DKIM signature: what a connection to a server without
8BITMIME pays once per message, and what `eight_bit = "downgrade"` adds to every
8-bit message. Also the session's last check before DATA (`payload_problem`), and
one whole DKIM signature (RSA-2048) to read the others against. Medians of several
runs, µs per message of this process's CPU; prints figures, never fails on time.

    .venv/bin/python bench/content_cost.py
    .venv/bin/python bench/content_cost.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable

from rig import cpu_us_per_call

from quiver.content import prepare, seven_bit
from quiver.devstack.samples import render
from quiver.dkim import DkimSigner, generate_private_key
from quiver.smtp.framing import payload_problem

LIMIT = 40 * 1024 * 1024


def samples() -> dict[str, bytes]:
    plain = render(message_id="bench", from_addr="hello@news.example.com",
                   to=["ann@example.org"], subject="content bench")
    first_text = plain.index(b"7bit\r\n\r\n") + len(b"7bit\r\n\r\n")
    long_line = plain[:first_text] + b"wool coats " * 136 + b"\r\n" + plain[first_text:]
    eight_bit = plain.replace(b"Content-Transfer-Encoding: 7bit", b"Content-Transfer-Encoding: "
                              b"8bit").replace(b"coats", "cr\u00e8me".encode())
    return {"7-bit, short lines": plain, "one 1,500-octet line": long_line,
            "8-bit text": eight_bit}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=7, help="runs; medians (default 7)")
    p.add_argument("--count", type=int, default=2000, help="calls per run (default 2,000)")
    p.add_argument("--json", action="store_true", help="end with one JSON line on stdout")
    args = p.parse_args(argv)
    signer = DkimSigner.from_pem(domain="news.example.com", selector="b",
                                 algorithm="rsa-sha256", pem=generate_private_key("rsa-sha256"))
    cases: dict[str, Callable[[], object]] = {}
    for name, raw in samples().items():
        cases[f"prepare: {name}"] = (
            lambda raw=raw: prepare(raw, max_size=LIMIT, long_lines="reencode"))
    eight = prepare(samples()["8-bit text"], max_size=LIMIT, long_lines="reencode").message
    cases["seven_bit: 8-bit text"] = lambda: seven_bit(eight)
    cases["seven_bit + DKIM signature: 8-bit text"] = lambda: signer.sign(seven_bit(eight))
    plain = samples()["7-bit, short lines"]
    cases["payload_problem (session, before DATA)"] = (
        lambda: payload_problem(plain, eight_bit=False))
    cases["DKIM signature (RSA-2048), for scale"] = lambda: signer.sign(plain)
    results: dict[str, float] = {}
    for name, fn in cases.items():
        count = max(1, args.count // 20) if "DKIM" in name else args.count
        results[name] = round(statistics.median(
            cpu_us_per_call(fn, count) for _ in range(args.runs)), 2)
        print(f"{name:48} {results[name]:9,.2f} µs/msg",
              file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
