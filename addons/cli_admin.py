"""What ``bbb-lb servers|integrations|rules|recordings`` share: the admin listener's client and the output.

Those commands talk to the running LB over HTTP (stdlib only), so a change takes effect at once and is
kept by the LB's store; nothing here edits config.yaml. Where to connect and the token come from the
config (admin.host, admin.port, admin.token), or from --admin-url / --token / BBB_LB_ADMIN_TOKEN. Each
command group is its own module: ``cli_servers``, ``cli_integrations``, ``cli_rules``, ``cli_recordings``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

TOKEN_ENV = "BBB_LB_ADMIN_TOKEN"
TIMEOUT_S = float(os.environ.get("BBB_LB_ADMIN_TIMEOUT_S") or 30.0)  # panic ends every meeting on a server


class CliError(Exception):
    """A one-line message for the operator; the command exits 1."""


class AdminClient:
    """A bearer-token JSON client for the admin API."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 - operator's URL
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raise CliError(_http_error(error)) from None
        except urllib.error.URLError as error:
            raise CliError(f"cannot reach the admin listener at {self.base_url} ({_reason(error.reason)}): "
                           "is bbb-lb running with admin.port set?") from None
        except (TimeoutError, ConnectionError) as error:
            raise CliError(f"no answer from the admin listener at {self.base_url} ({_reason(error)}): "
                           "is bbb-lb running with admin.port set?") from None
        except json.JSONDecodeError:
            raise CliError(f"{self.base_url} did not answer JSON: is that the bbb-lb admin listener?") from None


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


def _http_error(error: urllib.error.HTTPError) -> str:
    if error.code == 401:
        return f"the admin token was refused: check admin.token, --token or {TOKEN_ENV}"
    try:
        message = json.loads(error.read()).get("error")
    except (ValueError, AttributeError, OSError):
        message = None
    return str(message or f"HTTP {error.code} {error.reason}")


def client_for(args: argparse.Namespace) -> AdminClient:
    """--admin-url and --token win; the environment, then the config file, fill in the rest."""
    url: str | None = args.admin_url
    token: str | None = args.token or os.environ.get(TOKEN_ENV)
    if url is None or not token:
        from addons.cli import load_config

        config = load_config(args.config)
        if url is None:
            if config.admin.port is None:
                raise CliError(f"{args.config}: admin.port is not set, so bbb-lb has no admin listener "
                               "(or pass --admin-url)")
            host = config.admin.host
            host = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"
            url = f"http://{host}:{config.admin.port}"
        token = token or config.admin.token
    if not token:
        raise CliError(f"no admin token: set admin.token in the config, pass --token or set {TOKEN_ENV}")
    return AdminClient(url, token)


def _secret(value: str) -> str:
    """``-`` reads the secret from stdin, so it need not appear in the process list or shell history."""
    if value != "-":
        return value
    secret = sys.stdin.readline().strip()
    if not secret:
        raise CliError("no secret on standard input")
    return secret


def _name(value: str) -> str:
    return quote(value, safe="")


def table(rows: list[list[str]], header: list[str]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


def print_listing(args: argparse.Namespace, listing: Any, show: Callable[[Any], None]) -> None:
    """``--json``: the admin API's JSON as it came; otherwise ``show`` prints it for people."""
    if args.json:
        print(json.dumps(listing, indent=2))
    else:
        show(listing)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "-" if value is None else str(value)


def run(args: argparse.Namespace) -> int:
    """Run the chosen action against the admin listener: 1 on its error, 130 when interrupted (--watch)."""
    try:
        args.action_handler(args, client_for(args))
    except CliError as exc:
        print(f"bbb-lb: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default="config.yaml", help="the YAML configuration (default: config.yaml)")
    common.add_argument("--admin-url", help="the admin listener, e.g. http://127.0.0.1:8091 (default: from config)")
    common.add_argument("--token", help=f"the admin token (default: ${TOKEN_ENV}, then admin.token)")
    return common
