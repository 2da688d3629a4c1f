"""``bbb-lb rules`` and ``bbb-lb integrations rules NAME``: the rules for create and join, global or of one
integration (show, change one parameter's rule, clear, reset)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from addons.cli_admin import AdminClient, CliError, _connection_options, _name, run, table


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


def add_rules_arguments(p: argparse.ArgumentParser) -> None:
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
    rules = subparsers.add_parser("rules", parents=[common], help="show or change the global rules for create and "
                                  "join (an integration's own rule for a parameter wins)")
    add_rules_arguments(rules)
    rules.add_argument("--reset", action="store_true",
                       help="forget the global rules set at run time: the config file's apply again")
    rules.set_defaults(handler=run)
