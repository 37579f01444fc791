"""``kiosk-agent users add|passwd|list|remove``: the operator console's accounts.

Passwords come from a prompt (typed twice, not echoed) or the first line of
``--password-file`` (``-``: standard input), never from the command line, where every local
user could read them in the process list and the shell keeps them in its history.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from agent.cliutil import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Subparsers, config_arg, load, print_config_error
from agent.config import ConfigError
from agent.console.accounts import ROLES, AccountError, Accounts
from agent.console.audit import CliAudit


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("users", help="officer and supervisor accounts of the operator console")
    usub = p.add_subparsers(dest="users_command", metavar="SUBCOMMAND", required=True)
    for name, help_ in (("add", "add an account (the password is asked for)"),
                        ("passwd", "set a new password (also unlocks the account and signs it out)"),
                        ("remove", "remove an account (its sessions end)"),
                        ("list", "list accounts, their roles and whether they are locked")):
        # No abbreviations: "--password SECRET" must not pass for "--password-file" (and put
        # the secret in the process list).
        q = usub.add_parser(name, help=help_, allow_abbrev=False)
        config_arg(q)
        if name != "list":
            q.add_argument("name", help="user name: 1-32 lower-case letters, digits, '.', '_', '-'")
        if name in ("add", "passwd"):
            q.add_argument("--password-file", metavar="PATH",
                           help="read the password from the first line of PATH ('-': standard input) "
                                "instead of asking")
        if name == "add":
            q.add_argument("--role", choices=ROLES, default="officer", help="officer (default) or supervisor")
        if name == "list":
            q.add_argument("--json", action="store_true", help="print as JSON")
        q.set_defaults(func=cmd_users)


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        if args.password_file == "-":
            return sys.stdin.readline().rstrip("\r\n")
        with open(args.password_file, encoding="utf-8") as fh:
            return fh.readline().rstrip("\r\n")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise AccountError("the two passwords differ; nothing was changed")
    return first


def cmd_users(args: argparse.Namespace) -> int:
    try:
        config = load(args)
    except ConfigError as exc:
        print_config_error(exc)
        return EXIT_USAGE
    console = config.console
    assert console.users_file is not None
    accounts = Accounts(console.users_file, max_failures=console.max_failures, lockout_s=console.lockout_s,
                        service_user=config.security.service_user)
    if args.users_command == "list":
        return _list(accounts, args.json, console.users_file)
    try:
        audit = CliAudit(config)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        return _change(args, accounts, audit)
    finally:
        audit.close()


def _list(accounts: Accounts, as_json: bool, users_file: object) -> int:
    try:
        users = accounts.list()
    except AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, ValueError) as exc:
        print(f"error: {users_file}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if as_json:
        print(json.dumps(users))
    else:
        for u in users:
            print(f"{u['name']:<32} {u['role']:<10} {'locked' if u['locked'] else ''}".rstrip())
        if not users:
            print(f"no accounts in {users_file}; add one with `kiosk-agent users add NAME`")
    return EXIT_OK


def _change(args: argparse.Namespace, accounts: Accounts, audit: CliAudit) -> int:
    """add, passwd or remove, each audited with who ran it and how it ended (never the password)."""
    action = args.users_command
    details = {"name": args.name} | ({"role": args.role} if action == "add" else {})
    try:
        if action == "remove":
            accounts.remove(args.name)
            done = f"removed {args.name}"
        else:
            password = _password(args)
            if action == "add":
                accounts.add(args.name, args.role, password)
                done = f"added {args.name} ({args.role})"
            else:
                accounts.passwd(args.name, password)
                done = f"new password for {args.name}; its sessions are signed out"
    except AccountError as exc:
        audit.record(action, "error", str(exc)[:160], **details)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, ValueError) as exc:
        audit.record(action, "error", type(exc).__name__, **details)
        print(f"error: {accounts.path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    audit.record(action, **details)
    print(done)
    return EXIT_OK
