"""``bbb-lb servers list|add|remove|enable|disable|auto|drain|panic``: the BBB servers of a running bbb-lb."""

from __future__ import annotations

import argparse
from typing import Any

from addons.cli_admin import AdminClient, _connection_options, _name, _num, _secret, print_listing, run, table

STATES = {0: "enabled", 1: "disabled", 3: "auto"}


def server_line(s: dict[str, Any]) -> str:
    state = STATES.get(s.get("disable_state", -1), str(s.get("disable_state")))
    draining = ", draining" if s.get("draining") else ""
    return f"{s['name']}: {s['status']}, {state}{draining}, {s['meetings']} meetings, {s['participants']} participants"


def print_servers(servers: list[dict[str, Any]]) -> None:
    rows = [[s["name"], s["status"], STATES.get(s["disable_state"], str(s["disable_state"])),
             "yes" if s["draining"] else "no", str(s["meetings"]), str(s["participants"]), _num(s["load"]),
             s["url"]] for s in servers]
    print(table(rows, ["NAME", "STATUS", "STATE", "DRAINING", "MEETINGS", "PARTICIPANTS", "LOAD", "URL"]))


def servers_list(args: argparse.Namespace, client: AdminClient) -> None:
    print_listing(args, client.call("GET", "/api/servers"), print_servers)


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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


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
