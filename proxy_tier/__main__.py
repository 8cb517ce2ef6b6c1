"""python -m proxy_tier render --config FILE --node NAME [--user-data] [rig options]
python -m proxy_tier record --config FILE [--accept]"""

from __future__ import annotations

import argparse
import sys

from proxy_tier.cli import render_command
from proxy_tier.render import DEFAULT_MAXCONN_PER_SOURCE, DEFAULT_STATS_SOCKET


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
    sockets = render.add_mutually_exclusive_group()
    sockets.add_argument(
        "--stats-socket", default=DEFAULT_STATS_SOCKET, metavar="PATH",
        help=f"the admin socket's path (default {DEFAULT_STATS_SOCKET}; test rigs only)",
    )
    sockets.add_argument(
        "--no-stats-socket", dest="stats_socket", action="store_const", const=None,
        help="render without an admin socket (test rigs whose paths are too long for one)",
    )
    render.add_argument(
        "--maxconn-per-source", type=int, default=DEFAULT_MAXCONN_PER_SOURCE, metavar="N",
        help=f"connections per source frontend (default {DEFAULT_MAXCONN_PER_SOURCE}; "
             "test rigs only)",
    )
    record = commands.add_parser(
        "record", help="compare the policy with its record of deployed sources and nodes "
                       "(<policy>.deployed.json); --accept writes the record")
    record.add_argument("--config", required=True, help="policy TOML file")
    record.add_argument("--accept", action="store_true",
                        help="write the policy's sources and nodes as deployed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "record":
        from proxy_tier.record import record_command

        return record_command(args.config, accept=args.accept)
    return render_command(
        args.config, args.node, sys.stdout,
        allow_networks=args.allow_networks, user_data=args.user_data,
        stats_socket=args.stats_socket, maxconn_per_source=args.maxconn_per_source,
    )


if __name__ == "__main__":
    sys.exit(main())
