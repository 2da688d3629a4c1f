"""``bbb-lb integrations list|add|update|enable|disable|remove|rules``: the API clients of a running bbb-lb."""

from __future__ import annotations

import argparse
from typing import Any

from addons.cli_admin import (
    AdminClient,
    CliError,
    _connection_options,
    _name,
    _num,
    _secret,
    print_listing,
    run,
    table,
)
from addons.cli_rules import add_rules_arguments


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


def integrations_list(args: argparse.Namespace, client: AdminClient) -> None:
    print_listing(args, client.call("GET", "/api/integrations"), print_integrations)


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


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = _connection_options()
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
    add_rules_arguments(p)
    integrations.set_defaults(handler=run)
