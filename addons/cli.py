"""The ``bbb-lb`` command."""

from __future__ import annotations

import argparse
import sys

from lb_core import config as lb_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bbb-lb", description="A BigBlueButton load balancer built on mitmproxy.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="start the load balancer in the foreground")
    run.add_argument("--config", default="config.yaml", help="the YAML configuration (default: config.yaml)")
    run.add_argument("--web", action="store_true", help="serve mitmweb's UI to watch the API traffic")
    run.add_argument("--web-port", type=int, default=8081)
    run.add_argument("--web-password", default="", help="mitmweb password (default: a token is printed)")
    run.add_argument("--save", default="", help="save flows to this file (mitmproxy format)")

    check = commands.add_parser("check-config", help="validate the configuration and exit")
    check.add_argument("--config", default="config.yaml")

    args = parser.parse_args(argv)
    try:
        config = lb_config.load(args.config)
    except lb_config.ConfigError as exc:
        print(f"bbb-lb: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"{args.config}: OK ({len(config.servers)} servers, {len(config.integrations)} integrations)")
        return 0
    from addons.runner import run as run_lb

    return run_lb(config, web=args.web, web_port=args.web_port, web_password=args.web_password,
                  save_file=args.save)


if __name__ == "__main__":
    sys.exit(main())
