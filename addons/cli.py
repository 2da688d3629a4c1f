"""The ``bbb-lb`` command. Sub-commands beyond ``run`` live in their own modules (``COMMAND_MODULES``)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lb_core import config as lb_config

# Each module has ``register(subparsers)`` adding parsers whose ``handler`` takes the parsed args.
COMMAND_MODULES: list[str] = ["addons.cli_servers", "addons.cli_integrations", "addons.cli_rules",
                              "addons.cli_recordings", "addons.replay", "addons.cli_migrate"]


# Set to 1 to keep Python's assertions (and mitmproxy's debug-only type checks) in ``bbb-lb run``.
KEEP_ASSERTS_ENV = "BBB_LB_ASSERTS"


def optimised_argv(argv: list[str]) -> list[str] | None:
    """The command line to serve with under ``python -O``, or None when this process already is.

    mitmproxy type-checks every request and response field under ``__debug__`` and raises and
    catches a TypeError for each empty optional one: about ten exceptions, with their tracebacks and
    reference cycles, per API call, which also keep the cyclic GC busy. ``-O`` turns that off; our
    own asserts only narrow types.
    """
    if sys.flags.optimize or os.environ.get(KEEP_ASSERTS_ENV) == "1" or argv[:1] != ["run"]:
        return None
    return [sys.executable, "-O", "-m", "addons.cli", *argv]


def load_config(path: str) -> lb_config.Config:
    from lb_core import config as lb_config

    try:
        return lb_config.load(path)
    except lb_config.ConfigError as exc:
        for problem in str(exc).splitlines():  # one line per problem, each naming the file and the key
            print(f"bbb-lb: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from addons.runner import StartError
    from addons.runner import run as run_lb
    from addons.workers import refusal, supervise

    workers = args.workers if args.workers is not None else config.workers
    try:
        if args.worker_index is None:
            if (why := refusal(config, workers, web=args.web, save=bool(args.save))) is not None:
                raise StartError(why)
            if workers > 1:
                return supervise(config, args.config, workers, ports_file=args.ports_file,
                                 extra=["--mask-passwords"] if args.mask_passwords else [])
        else:  # one worker of ``--workers``: the supervisor chose its ports and runs the simulators
            config = config.for_worker(args.listen_port, args.admin_port)
        return run_lb(config, web=args.web, web_port=args.web_port, web_password=args.web_password,
                      save_file=args.save, save_max_mb=args.save_max_mb, save_keep=args.save_keep,
                      mask_passwords=args.mask_passwords, ports_file=args.ports_file,
                      worker=args.worker_index is not None)
    except StartError as exc:
        print(f"bbb-lb: {exc}", file=sys.stderr, flush=True)
        return 2


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(f"{args.config}: OK ({len(config.servers)} servers, {len(config.integrations)} integrations)")
    return 0


def _positive_mb(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bbb-lb", description="A BigBlueButton load balancer built on mitmproxy.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="start the load balancer in the foreground")
    run.add_argument("--config", default="config.yaml", help="the YAML configuration (default: config.yaml)")
    run.add_argument("--web", action="store_true", help="serve mitmweb's UI to watch the API traffic")
    run.add_argument("--web-port", type=int, default=8081)
    run.add_argument("--web-password", default="",
                     help="password for the --web UI (or set $BBB_LB_WEB_PASSWORD; default: a random one, printed)")
    run.add_argument("--save", default="", help="save flows to this file (mitmproxy format)")
    run.add_argument("--save-max-mb", type=_positive_mb, default=100.0,
                     help="rotate the --save file when it exceeds this many MB (default 100; fractions allowed)")
    run.add_argument("--save-keep", type=_count, default=5, help="rotated files to keep: FILE.1 ... FILE.K (default 5)")
    run.add_argument("--mask-passwords", action="store_true",
                     help="replace meeting passwords with *** in the saved flows")
    run.add_argument("--ports-file", default="",
                     help='once listening, write the bound ports here as JSON: {"listen": N, "admin": N or null}'
                          " (for listen.port / admin.port 0)")
    run.add_argument("--workers", type=_at_least_one, default=None,
                     help="processes serving the listen port (SO_REUSEPORT); above 1 needs store.backend: redis "
                          "(default: the config's workers, 1)")
    for hidden in ("--worker-index", "--listen-port", "--admin-port"):  # set by the supervisor for its workers
        run.add_argument(hidden, type=int, default=None, help=argparse.SUPPRESS)
    run.set_defaults(handler=cmd_run)

    check = commands.add_parser("check-config", help="validate the configuration and exit")
    check.add_argument("--config", default="config.yaml")
    check.set_defaults(handler=cmd_check_config)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None and (optimised := optimised_argv(sys.argv[1:])) is not None:
        sys.stdout.flush()
        os.execv(optimised[0], optimised)  # the same process (pid, signals, open files), under -O
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
