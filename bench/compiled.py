"""The sender's own modules compiled to C by mypyc, against the same source interpreted.

Issue 16's `overhead_per_rsa_sign` asks the sender's work besides the private-key
operation to cost under 0.6 of one RSA-2048 signature. Most of that work is Python,
so the first thing to ask of a compiled core is what compiling the Python we have
buys. This copies `quiver/` into a work directory, compiles the modules of the
per-message path with mypyc (MODULES), and alternates bench/sender_cpu.py (as a child
process, production engine, `smtp-sink` on loopback) between the compiled copy and
the tree as it is, round by round, the order swapped each round.

The figure compared is `main_process_cpu_us_per_msg`: the CPU of the sender's own
process per message (event loop, intake, DKIM hashing, SMTP, events, completion),
with the signing worker's CPU left out, since mypyc does not touch OpenSSL's
signature. Each run's RSA-2048 signature is printed beside it, and the main process
against it. Medians over the rounds; the compiled/interpreted ratio is the median of
the per-round ratios. Prints figures, never fails on time.

Left interpreted: quiver/sender/lifecycle.py and engine.py (`del` of a local) and
quiver/scheduler/connection.py (`continue` inside `try`/`finally`), which mypyc does
not implement, and everything off the per-message path. mypyc asks that classes
deriving from a built-in type or from an interpreted class be non-native: the copy
marks the three it meets (NON_NATIVE) with `mypyc_attr(native_class=False)`.
Needs a C compiler and Python's headers (scripts/setup.sh installs gcc, and
python3-dev where the headers are missing).

    .venv/bin/python bench/compiled.py                       # 4,000 messages x 3 runs, 3 rounds
    .venv/bin/python bench/compiled.py --rounds 5 --json
    .venv/bin/python bench/compiled.py --modules quiver/dkim/canon.py --messages 300
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SENDER_CPU = Path(__file__).resolve().parent / "sender_cpu.py"

MODULES = (
    "quiver/envelope.py", "quiver/events.py", "quiver/message.py",
    "quiver/dkim/canon.py", "quiver/dkim/signer.py",
    "quiver/smtp/wire.py", "quiver/smtp/reader.py", "quiver/smtp/reply.py",
    "quiver/smtp/framing.py", "quiver/smtp/session.py",
    "quiver/scheduler/outcomes.py", "quiver/scheduler/ready.py",
    "quiver/scheduler/scheduler.py", "quiver/scheduler/throttle.py",
    "quiver/scheduler/budget.py", "quiver/sender/complete.py", "quiver/storage/sqs_lean.py",
)
# Classes mypyc compiles only as ordinary Python classes (see the module's docstring).
NON_NATIVE = {
    "quiver/message.py": ("WireReady",),
    "quiver/storage/sqs_lean.py": ("SqsError", "_TransportError"),
}
FUTURE = "from __future__ import annotations\n"


def mark_non_native(source: str, classes: tuple[str, ...]) -> str:
    """`source` with each named class decorated `@mypyc_attr(native_class=False)`."""
    if FUTURE not in source:
        raise ValueError("expected `from __future__ import annotations` to import after")
    out = source.replace(FUTURE, FUTURE + "\nfrom mypy_extensions import mypyc_attr\n", 1)
    for name in classes:
        out, found = re.subn(rf"^class {re.escape(name)}\(", "@mypyc_attr(native_class=False)\n"
                             f"class {name}(", out, count=1, flags=re.MULTILINE)
        if not found:
            raise ValueError(f"class {name} not found")
    return out


def build(work: Path, modules: list[str]) -> None:
    """Copy quiver/ into `work` and compile `modules` there in place (.so beside .py)."""
    shutil.copytree(ROOT / "quiver", work / "quiver",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for rel, classes in NON_NATIVE.items():
        if rel in modules:
            path = work / rel
            path.write_text(mark_non_native(path.read_text(), classes))
    done = subprocess.run([sys.executable, "-m", "mypyc", *modules], cwd=work,
                          capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"mypyc failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    missing = [m for m in modules if not list((work / m).parent.glob(
        Path(m).stem + ".cpython-*.so"))]
    if missing:
        raise RuntimeError(f"mypyc built no extension for {missing}")


def compiled_env(work: Path, module: str) -> dict[str, str]:
    """An environment whose `import quiver` is the compiled copy: checked, not assumed
    (the tree would win from a working directory holding it)."""
    env = dict(os.environ, PYTHONPATH=str(work))
    name = module.removesuffix(".py").replace("/", ".")
    # From bench/, which is the first entry of sys.path when sender_cpu.py runs.
    where = subprocess.run([sys.executable, "-c", f"import {name} as m; print(m.__file__)"],
                           cwd=SENDER_CPU.parent, env=env, capture_output=True, text=True,
                           timeout=120, check=True)
    if not where.stdout.strip().endswith(".so"):
        raise RuntimeError(f"{name} imports from {where.stdout.strip()}, not the compiled copy")
    return env


def sender_cpu(env: dict[str, str] | None, args: argparse.Namespace) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(SENDER_CPU), "--messages", str(args.messages), "--runs",
         str(args.runs), "--json"],
        env=env, capture_output=True, text=True, timeout=args.timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sender_cpu.py failed:\n{done.stderr[-4000:]}")
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=4000, help="per sender_cpu run (default 4,000)")
    p.add_argument("--runs", type=int, default=3, help="sender_cpu runs per side per round")
    p.add_argument("--rounds", type=int, default=3, help="alternations; medians (default 3)")
    p.add_argument("--modules", nargs="+", default=list(MODULES),
                   help="paths under the repository to compile (default: the per-message path)")
    p.add_argument("--timeout", type=float, default=900, help="per sender_cpu child")
    p.add_argument("--json", action="store_true", help="end with one JSON line on stdout")
    args = p.parse_args(argv)
    if args.messages < 1 or args.runs < 1 or args.rounds < 1:
        p.error("--messages, --runs and --rounds must be at least 1")
    args.modules = [str(Path(m)) for m in args.modules]  # "./quiver/x.py" → "quiver/x.py"
    # Relative paths inside quiver/ only: anything else would be compiled in the tree
    # itself, and its extension would then shadow the source in the interpreted runs.
    outside = [m for m in args.modules if Path(m).parts[:1] != ("quiver",)
               or ".." in Path(m).parts or Path(m).suffix != ".py"]
    if outside:
        p.error(f"modules are paths like quiver/envelope.py: {outside}")
    unknown = [m for m in args.modules if not (ROOT / m).is_file()]
    if unknown:
        p.error(f"no such module: {unknown}")

    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="quiver-bench-mypyc-") as tmp:
        work = Path(tmp)
        print(f"compiling {len(args.modules)} modules with mypyc ...", file=sys.stderr)
        build(work, args.modules)
        env = compiled_env(work, args.modules[0])
        for number in range(args.rounds):
            sides = ["interpreted", "compiled"]
            if number % 2:
                sides.reverse()
            row: dict[str, float] = {}
            for side in sides:
                data = sender_cpu(env if side == "compiled" else None, args)
                row[f"{side}_main_us_per_msg"] = data["main_process_cpu_us_per_msg"]
                row[f"{side}_sender_us_per_msg"] = data["sender_cpu_us_per_msg"]
                row[f"{side}_rsa_sign_us"] = data["rsa_sign_us"]
                rsa_path = data["rsa_path"]
            row["compiled_per_interpreted"] = (row["compiled_main_us_per_msg"]
                                               / row["interpreted_main_us_per_msg"])
            rows.append(row)
            print(f"round {number + 1}/{args.rounds}: main process "
                  f"{row['interpreted_main_us_per_msg']:,.0f} µs/msg interpreted, "
                  f"{row['compiled_main_us_per_msg']:,.0f} compiled "
                  f"({row['compiled_per_interpreted']:.3f})", file=sys.stderr)

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    rsa = statistics.median([r["interpreted_rsa_sign_us"] for r in rows]
                            + [r["compiled_rsa_sign_us"] for r in rows])
    out = {
        "modules": len(args.modules), "messages": args.messages, "runs": args.runs,
        "rounds": args.rounds, "rsa_path": rsa_path, "rsa_sign_us": round(rsa, 1),
        **{key: round(median(key), 1) for key in rows[0] if key != "compiled_per_interpreted"},
        "compiled_per_interpreted": round(median("compiled_per_interpreted"), 3),
        "interpreted_main_per_rsa_sign": round(median("interpreted_main_us_per_msg") / rsa, 3),
        "compiled_main_per_rsa_sign": round(median("compiled_main_us_per_msg") / rsa, 3),
        "per_round": [{k: round(v, 3) for k, v in r.items()} for r in rows],
    }
    print(f"\nsender's main process (signing workers apart), median of {args.rounds} rounds "
          f"of {args.runs} x {args.messages:,} messages; {out['modules']} modules compiled:\n"
          f"  interpreted {out['interpreted_main_us_per_msg']:,.0f} µs/msg = "
          f"{out['interpreted_main_per_rsa_sign']:.2f} RSA signatures\n"
          f"  compiled    {out['compiled_main_us_per_msg']:,.0f} µs/msg = "
          f"{out['compiled_main_per_rsa_sign']:.2f} RSA signatures\n"
          f"  compiled / interpreted {out['compiled_per_interpreted']:.3f} (per-round median); "
          f"RSA-2048 {out['rsa_sign_us']:,.0f} µs on OpenSSL's {rsa_path} path",
          file=sys.stderr)
    if args.json:
        print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
