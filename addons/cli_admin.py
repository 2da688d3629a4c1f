"""``bbb-lb servers ...``, ``bbb-lb integrations ...`` and ``bbb-lb rules ...``: operator controls through
the admin listener.

They talk to the running LB over HTTP (stdlib only), so a change takes effect at once and is kept by
the LB's store; nothing here edits config.yaml. Where to connect and the token come from the config
(admin.host, admin.port, admin.token), or from --admin-url / --token / BBB_LB_ADMIN_TOKEN.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

TOKEN_ENV = "BBB_LB_ADMIN_TOKEN"
STATES = {0: "enabled", 1: "disabled", 3: "auto"}
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


# --- output ---------------------------------------------------------------------------------------------

def table(rows: list[list[str]], header: list[str]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "-" if value is None else str(value)


def server_line(s: dict[str, Any]) -> str:
    state = STATES.get(s.get("disable_state", -1), str(s.get("disable_state")))
    draining = ", draining" if s.get("draining") else ""
    return f"{s['name']}: {s['status']}, {state}{draining}, {s['meetings']} meetings, {s['participants']} participants"


def print_servers(servers: list[dict[str, Any]]) -> None:
    rows = [[s["name"], s["status"], STATES.get(s["disable_state"], str(s["disable_state"])),
             "yes" if s["draining"] else "no", str(s["meetings"]), str(s["participants"]), _num(s["load"]),
             s["url"]] for s in servers]
    print(table(rows, ["NAME", "STATUS", "STATE", "DRAINING", "MEETINGS", "PARTICIPANTS", "LOAD", "URL"]))


def _used(used: Any, limit: Any) -> str:
    return f"{used}/{limit}" if limit is not None else str(used)


def print_integrations(integrations: list[dict[str, Any]]) -> None:
    rows = [[i["name"], "yes" if i["enabled"] else "no", "yes" if i["can_record"] else "no",
             _used(i["meetings"], i["max_meetings"]),
             _used(i.get("participants", 0), i.get("max_participants")),
             _num(i.get("max_duration_minutes")),
             str(sum(len(params) for params in (i.get("rules") or {}).values())),
             ", ".join(f"{k} {v}" for k, v in sorted((i.get("limit_hits") or {}).items())) or "-",
             str(i["secrets"])] for i in integrations]
    print(table(rows, ["NAME", "ENABLED", "RECORD", "MEETINGS", "PARTICIPANTS", "MAX_MINUTES", "RULES",
                       "REFUSED", "SECRETS"]))


def integration_line(i: dict[str, Any]) -> str:
    flags = ["enabled" if i["enabled"] else "disabled", "can record" if i["can_record"] else "no recording"]
    if i["max_meetings"] is not None:
        flags.append(f"at most {i['max_meetings']} meetings")
    if i.get("max_participants") is not None:
        flags.append(f"at most {i['max_participants']} participants"
                     + ("" if i.get("limit_moderators", True) else " (moderators exempt)"))
    if i.get("max_duration_minutes") is not None:
        flags.append(f"meetings of at most {i['max_duration_minutes']} minutes")
    return f"{i['name']}: {', '.join(flags)}, {i['secrets']} secret(s), {i['meetings']} meetings"


def rule_text(rule: dict[str, Any]) -> str:
    (operation, value), = rule.items()
    if operation == "block":
        return "block"
    if isinstance(value, list):
        value = ",".join(value)
    return f"{operation} {json.dumps(value) if isinstance(value, str) else value}"


def print_rules(rules: dict[str, dict[str, Any]], title: str) -> None:
    rows = [[call, param, rule_text(rule)] for call in ("create", "join") for param, rule in rules.get(call, {}).items()]
    if not rows:
        print(f"{title}: no rules")
        return
    print(f"{title}:")
    print(table(rows, ["CALL", "PARAMETER", "RULE"]))


# --- handlers -------------------------------------------------------------------------------------------

def servers_list(args: argparse.Namespace, client: AdminClient) -> None:
    servers = client.call("GET", "/api/servers")
    if args.json:
        print(json.dumps(servers, indent=2))
    else:
        print_servers(servers)


def servers_add(args: argparse.Namespace, client: AdminClient) -> None:
    spec: dict[str, Any] = {"name": args.name, "url": args.url, "secret": _secret(args.secret),
                            "checksum": args.checksum, "state": args.state}
    for key in ("weight", "max_meetings", "max_participants"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    print("added " + server_line(client.call("POST", "/api/servers", spec)))


def servers_remove(args: argparse.Namespace, client: AdminClient) -> None:
    result = client.call("DELETE", f"/api/servers/{_name(args.name)}")
    print(f"removed {args.name} ({result['meetings_forgotten']} meetings forgotten)")


def servers_state(args: argparse.Namespace, client: AdminClient) -> None:
    print(server_line(client.call("POST", f"/api/servers/{_name(args.name)}/state", {"state": args.state})))


def servers_drain(args: argparse.Namespace, client: AdminClient) -> None:
    summary = client.call("POST", f"/api/servers/{_name(args.name)}/drain", {})
    print(server_line(summary) + ("" if summary["draining"] else " (it was empty: drained at once)"))


def servers_panic(args: argparse.Namespace, client: AdminClient) -> None:
    result = client.call("POST", f"/api/servers/{_name(args.name)}/panic", {"keep_state": args.keep_state})
    print(f"{server_line(result)}; {result['meetings_ended']} meetings ended, "
          f"{result['meetings_forgotten']} forgotten")


def integrations_list(args: argparse.Namespace, client: AdminClient) -> None:
    integrations = client.call("GET", "/api/integrations")
    if args.json:
        print(json.dumps(integrations, indent=2))
    else:
        print_integrations(integrations)


def _integration_exists(client: AdminClient, name: str) -> bool:
    return any(i["name"] == name for i in client.call("GET", "/api/integrations"))


def integrations_put(args: argparse.Namespace, client: AdminClient) -> None:
    adding = args.action == "add"
    if _integration_exists(client, args.name) == adding:
        raise CliError(f"integration {args.name!r} exists already; use update" if adding
                       else f"no integration named {args.name!r}; use add")
    spec: dict[str, Any] = {}
    if args.secret is not None:
        spec["secret"] = _secret(args.secret)
    if args.previous_secret is not None:
        spec["previous_secret"] = _secret(args.previous_secret)
    if args.record is not None:
        spec["can_record"] = args.record
    if args.max_meetings is not None:
        spec["max_meetings"] = args.max_meetings
    if args.enabled is not None:
        spec["enabled"] = args.enabled
    for key in ("max_participants", "max_duration_minutes"):
        value = getattr(args, key)
        if value is not None:
            spec[key] = None if value == "none" else value
    if args.limit_moderators is not None:
        spec["limit_moderators"] = args.limit_moderators
    if not adding and not spec:
        raise CliError("nothing to update: give --secret, --previous-secret, --record/--no-record, --max-meetings, "
                       "--max-participants, --limit-moderators/--no-limit-moderators or --max-duration-minutes")
    result = client.call("PUT", f"/api/integrations/{_name(args.name)}", spec)
    print(("added " if adding else "updated ") + integration_line(result))


def integrations_enable(args: argparse.Namespace, client: AdminClient) -> None:
    if not _integration_exists(client, args.name):
        raise CliError(f"no integration named {args.name!r}")
    result = client.call("PUT", f"/api/integrations/{_name(args.name)}", {"enabled": args.action == "enable"})
    print(integration_line(result))


def integrations_remove(args: argparse.Namespace, client: AdminClient) -> None:
    client.call("DELETE", f"/api/integrations/{_name(args.name)}")
    print(f"removed integration {args.name}")


def _rule_value(operation: str, value: str | None) -> Any:
    if operation in ("block", "remove"):
        if value is not None:
            raise CliError(f"{operation} takes no value")
        return True
    if value is None:
        raise CliError(f"{operation} needs a value")
    if operation == "max":
        try:
            return int(value)
        except ValueError:
            raise CliError("max needs a whole number") from None
    return value  # text as given: "false" stays the text BBB reads


def rules_command(args: argparse.Namespace, client: AdminClient) -> None:
    """Show rules, or change one parameter's rule, or clear them all (global, or of one integration)."""
    name = getattr(args, "name", None)
    path = f"/api/integrations/{_name(name)}/rules" if name else "/api/rules"
    title = f"rules of {name}" if name else "global rules"
    if args.clear or getattr(args, "reset", False):
        if args.call:
            raise CliError("--clear and --reset take no rule")
        result = client.call("PUT", path, {}) if args.clear else client.call("DELETE", path)
    elif args.call:
        if args.call not in ("create", "join"):
            raise CliError("rules are for create or join")
        if not args.param or not args.operation:
            raise CliError("give CALL PARAMETER OPERATION [VALUE], e.g. create duration max 120")
        value = _rule_value(args.operation, args.value)
        rule = None if args.operation == "remove" else {args.operation: value}
        result = client.call("PATCH", path, {args.call: {args.param: rule}})
    else:
        result = client.call("GET", path)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print_rules(result["rules"], title)
    if name:
        if result.get("max_duration_minutes") is not None:
            print(f"max_duration_minutes: {result['max_duration_minutes']} (a max rule on create duration)")
        if result.get("effective") != result["rules"]:
            print_rules(result.get("effective") or {}, "in force (with the global rules)")


def run(args: argparse.Namespace) -> int:
    try:
        args.action_handler(args, client_for(args))
    except CliError as exc:
        print(f"bbb-lb: {exc}", file=sys.stderr)
        return 1
    return 0


# --- parsers ------------------------------------------------------------------------------------------

def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default="config.yaml", help="the YAML configuration (default: config.yaml)")
    common.add_argument("--admin-url", help="the admin listener, e.g. http://127.0.0.1:8091 (default: from config)")
    common.add_argument("--token", help=f"the admin token (default: ${TOKEN_ENV}, then admin.token)")
    return common


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _limit(minimum: int):  # type: ignore[no-untyped-def]
    """A whole number of at least ``minimum``, or ``none`` to lift the limit."""
    def parse(text: str) -> int | str:
        if text.lower() == "none":
            return "none"
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("must be a whole number or none") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value
    return parse


def _rules_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("call", nargs="?", help="create or join; without it, the rules are shown")
    p.add_argument("param", nargs="?", help="the parameter, e.g. duration, record, disabledFeatures, meta_x")
    p.add_argument("operation", nargs="?", choices=["default", "override", "block", "max", "append", "remove"],
                   help="remove drops the parameter's rule")
    p.add_argument("value", nargs="?", help="the value (none for block and remove)")
    p.add_argument("--clear", action="store_true", help="remove every rule")
    p.add_argument("--json", action="store_true", help="print the admin API's JSON")
    p.set_defaults(action_handler=rules_command)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = _connection_options()

    servers = subparsers.add_parser("servers", help="list and change the BBB servers of a running bbb-lb")
    actions = servers.add_subparsers(dest="action", required=True)
    p = actions.add_parser("list", parents=[common], help="show every server with its status and load")
    p.add_argument("--json", action="store_true", help="print the admin API's JSON")
    p.set_defaults(action_handler=servers_list)
    p = actions.add_parser("add", parents=[common], help="add a server; it is polled at once")
    p.add_argument("name")
    p.add_argument("url", help="the server's BBB URL, e.g. https://bbb1.example.org/bigbluebutton/")
    p.add_argument("secret", help="its shared secret (bbb-conf --secret); '-' reads it from stdin")
    p.add_argument("--checksum", default="sha256", choices=["sha1", "sha256", "sha384", "sha512"],
                   help="checksum algorithm the server accepts (default: sha256)")
    p.add_argument("--weight", type=float)
    p.add_argument("--max-meetings", type=_positive_int)
    p.add_argument("--max-participants", type=_positive_int)
    p.add_argument("--state", default="auto", choices=["auto", "enabled", "disabled"])
    p.set_defaults(action_handler=servers_add)
    p = actions.add_parser("remove", parents=[common], help="forget a server and the meetings placed on it")
    p.add_argument("name")
    p.set_defaults(action_handler=servers_remove)
    for state, text in (("enable", "always take new meetings (health still counts)"),
                        ("disable", "take no new meetings; running ones go on"),
                        ("auto", "let health and limits decide (the default)")):
        p = actions.add_parser(state, parents=[common], help=text)
        p.add_argument("name")
        p.set_defaults(action_handler=servers_state, state={"enable": "enabled", "disable": "disabled"}.get(state,
                                                                                                          state))
    p = actions.add_parser("drain", parents=[common],
                           help="no new meetings; running ones stay joinable; disabled once empty")
    p.add_argument("name")
    p.set_defaults(action_handler=servers_drain)
    p = actions.add_parser("panic", parents=[common], help="end every meeting on the server now and disable it")
    p.add_argument("name")
    p.add_argument("--keep-state", action="store_true", help="end the meetings but do not disable the server")
    p.set_defaults(action_handler=servers_panic)
    servers.set_defaults(handler=run)

    integrations = subparsers.add_parser("integrations", help="list and change the integrations (API clients)")
    actions = integrations.add_subparsers(dest="action", required=True)
    p = actions.add_parser("list", parents=[common], help="show the integrations (never their secrets)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(action_handler=integrations_list)
    for action in ("add", "update"):
        adding = action == "add"
        p = actions.add_parser(action, parents=[common], help="add an integration with its own secret" if adding
                               else "change an integration's secret, rights or limit")
        p.add_argument("name")
        p.add_argument("--secret", required=adding, help="the secret it signs calls with; '-' reads stdin")
        p.add_argument("--previous-secret", help="also accepted, while the integration moves to --secret")
        record = p.add_mutually_exclusive_group()
        record.add_argument("--record", dest="record", action="store_const", const=True, default=None,
                            help="may record meetings" + (" (the default)" if adding else ""))
        record.add_argument("--no-record", dest="record", action="store_const", const=False,
                            help="may not record meetings")
        p.add_argument("--max-meetings", type=int, help="concurrent meetings it may have (0: none)")
        p.add_argument("--max-participants", type=_limit(0),
                       help="participants its meetings may have together ('none': no limit)")
        moderators = p.add_mutually_exclusive_group()
        moderators.add_argument("--limit-moderators", dest="limit_moderators", action="store_const", const=True,
                                default=None, help="moderators count against --max-participants (the default)")
        moderators.add_argument("--no-limit-moderators", dest="limit_moderators", action="store_const",
                                const=False, help="moderators may join past --max-participants")
        p.add_argument("--max-duration-minutes", type=_limit(1),
                       help="cap the duration of its meetings ('none': no cap)")
        if adding:
            p.add_argument("--disabled", dest="enabled", action="store_const", const=False, default=None,
                           help="add it disabled")
        else:
            p.set_defaults(enabled=None)
        p.set_defaults(action_handler=integrations_put)
    for action in ("enable", "disable"):
        p = actions.add_parser(action, parents=[common], help=f"{action} an integration's access to the API")
        p.add_argument("name")
        p.set_defaults(action_handler=integrations_enable)
    p = actions.add_parser("remove", parents=[common], help="remove an integration (not the default one)")
    p.add_argument("name")
    p.set_defaults(action_handler=integrations_remove)
    p = actions.add_parser("rules", parents=[common], help="show or change an integration's rules for create and "
                           "join, e.g. 'rules moodle create duration max 120'")
    p.add_argument("name")
    _rules_arguments(p)
    integrations.set_defaults(handler=run)

    rules = subparsers.add_parser("rules", parents=[common], help="show or change the global rules for create and "
                                  "join (an integration's own rule for a parameter wins)")
    _rules_arguments(rules)
    rules.add_argument("--reset", action="store_true",
                       help="forget the global rules set at run time: the config file's apply again")
    rules.set_defaults(handler=run)
