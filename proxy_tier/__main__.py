"""python -m proxy_tier render --config FILE --node NAME [--user-data] [--allow-network NET]"""

from __future__ import annotations

import argparse
import sys

from proxy_tier.cli import render_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m proxy_tier")
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="print a proxy node's haproxy.cfg")
    render.add_argument("--config", required=True, help="policy TOML file")
    render.add_argument("--node", required=True, help="proxy node name ([proxy.nodes.NAME])")
    render.add_argument("--user-data", action="store_true", help="print the EC2 user data")
    render.add_argument(
        "--allow-network", action="append", dest="allow_networks", metavar="NET",
        help="replace proxy.allow_networks (repeatable; test rigs only)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return render_command(
        args.config, args.node, sys.stdout,
        allow_networks=args.allow_networks, user_data=args.user_data,
    )


if __name__ == "__main__":
    sys.exit(main())
