"""``kiosk-agent keys init|show``: the kiosk's signing key and support operators' keys.

The central service's keys (``--central``) and ``keys enrol`` belong to the receiver and are
added to these subcommands by receiver/cli.py, so the kiosk's command line never needs the
receiver's config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.cliutil import EXIT_FAILED, EXIT_OK, Subparsers, config_arg, load
from agent.security import keys


def add_parser(sub: Subparsers) -> dict[str, Any]:
    """Add ``keys``; returns, for extensions, its sub-parser action ("keys") and its parsers
    ("init", "show")."""
    p = sub.add_parser("keys", help="create, show and enrol the keys that protect captures")
    ksub = p.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)
    init = ksub.add_parser("init", help="create the kiosk's Ed25519 key pair (security.kiosk_key), or "
                                        "with --central the central service's X25519 pair")
    config_arg(init)
    init.add_argument("--operator", type=Path, metavar="PATH",
                      help="create a support operator's Ed25519 key pair at PATH (list PATH.pub in "
                           "the kiosks' remote.operators); needs no config file")
    init.add_argument("--json", action="store_true", help="print the public key as JSON")
    init.set_defaults(func=cmd_keys_init)
    show = ksub.add_parser("show", help="print the public key and its fingerprint for enrolment")
    config_arg(show)
    show.add_argument("--json", action="store_true", help="print as JSON")
    show.set_defaults(func=cmd_keys_show)
    return {"keys": ksub, "init": init, "show": show}


def _key_path(args: argparse.Namespace) -> tuple[Path, str, str | None]:
    """(private key path, what, owner): an operator's key (which keeps the owner that made
    it), else the kiosk's from its config (handed to its service user)."""
    if getattr(args, "operator", None):
        return args.operator, "operator", None
    security = load(args).security
    return security.kiosk_key, "kiosk", security.service_user


def print_public(path: Path, what: str, as_json: bool) -> None:
    pub_path = keys.public_path(path)
    kind = keys.X25519PublicKey if what == "central" else keys.Ed25519PublicKey
    public = keys.load_public(pub_path, str(pub_path), kind)
    pem = keys.public_pem(public).decode()
    if as_json:
        print(json.dumps({"key": what, "private_key_file": str(path), "public_key_file": str(pub_path),
                          "fingerprint": keys.fingerprint(public), "key_id": keys.key_id(public),
                          "public_key_pem": pem}))
    else:
        print(f"{what} public key {pub_path}\nfingerprint {keys.fingerprint(public)} (key id "
              f"{keys.key_id(public)})\n{pem}", end="")


def init_key(path: Path, what: str, as_json: bool, owner: str | None = None) -> int:
    """Create the key pair at ``path`` ("central": X25519, otherwise Ed25519) and print it.

    ``owner``: the service user that gets the files (when run as root). Only the kiosk's own
    key has one; every other key stays with whoever made it, so the kiosk's service user
    never holds a key that signs or decrypts for more than this kiosk.
    """
    new_folder = not path.parent.exists()
    try:
        if what == "central":
            keys.create_encryption_key(path)
        else:
            keys.create_signing_key(path)
    except keys.KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except PermissionError as exc:
        print(f"error: cannot write {path}: {exc.strerror}; run as the service user "
              "(sudo -u kiosk kiosk-agent keys init)", file=sys.stderr)
        return EXIT_FAILED
    if owner is not None:
        keys.chown_to_service_user(path, owner, folder=new_folder)
    if not as_json:
        print(f"created {what} private key {path} (mode 0600)")
    print_public(path, what, as_json)
    return EXIT_OK


def show_key(path: Path, what: str, as_json: bool) -> int:
    try:
        print_public(path, what, as_json)
    except keys.KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_keys_init(args: argparse.Namespace) -> int:
    path, what, owner = _key_path(args)
    return init_key(path, what, args.json, owner)


def cmd_keys_show(args: argparse.Namespace) -> int:
    path, what, _ = _key_path(args)
    return show_key(path, what, args.json)
