"""``kiosk-agent update``: build a bundle (release machine), apply it, show the releases.

``apply`` and ``recover`` are the privileged updater's work: they write /opt/kiosk-agent and
restart the agent's unit, so they run as root (kiosk-agent-updater.service), never as the
agent's user.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

from agent.cliutil import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Subparsers, config_arg, load
from agent.config import config_path
from agent.errors import PermanentError
from agent.security import keys
from agent.update.build import BuildRequest, build
from agent.update.bundle import PLATFORMS, BundleError, load_release_keys, machine
from agent.update.layout import Tree
from agent.update.service import Service
from agent.update.spool import request, spool_dir, take, wait_result, write_result
from agent.update.updater import UpdateFailed, Updater


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("update", help="software updates: build signed bundles, install them with a "
                                      "health gate and rollback, list the releases")
    usub = p.add_subparsers(dest="update_command", metavar="SUBCOMMAND", required=True)

    b = usub.add_parser("build", help="build a signed bundle of this project and its dependencies' wheels")
    b.add_argument("--key", type=Path, required=True, metavar="PATH", help="the release signing key "
                   "(from `update release-key`)")
    b.add_argument("--out", type=Path, required=True, metavar="FILE", help="the bundle to write")
    b.add_argument("--project", type=Path, default=Path("."), metavar="DIR",
                   help="the project's source folder (default: the current folder)")
    b.add_argument("--platform", choices=PLATFORMS, default=machine() if machine() in PLATFORMS else "x86_64",
                   help="target platform (default: this machine's)")
    b.add_argument("--min-from", default="0.1.0", metavar="VERSION",
                   help="the oldest version this bundle may upgrade (default 0.1.0)")
    b.add_argument("--wheelhouse", type=Path, metavar="DIR",
                   help="take dependency wheels from DIR instead of the package index (offline builds)")
    b.add_argument("--system-dependencies", action="store_true",
                   help="bundle the project's wheel alone: the kiosk's dependencies come from the OS "
                        "(its release venvs see the system's site-packages)")
    b.add_argument("--reversible-migration", action="store_true",
                   help="declare that the previous version can still read the queue after this one ran")
    b.set_defaults(func=cmd_build)

    k = usub.add_parser("release-key", help="create a release signing key pair (PATH, PATH.pub); list "
                                            "PATH.pub in the kiosks' update.release_keys")
    k.add_argument("path", type=Path, metavar="PATH")
    k.set_defaults(func=cmd_release_key)

    for name, helptext in (("apply", "verify a bundle, install it beside the running release, switch "
                                     "and keep it only if the agent comes back healthy (root)"),
                           ("status", "installed releases, the current and previous one, failures"),
                           ("recover", "finish or undo an update a power cut interrupted (root; at boot)")):
        a = usub.add_parser(name, help=helptext)
        if name == "apply":
            a.add_argument("bundle", type=Path, nargs="?", metavar="FILE")
            how = a.add_mutually_exclusive_group()
            how.add_argument("--via-updater", action="store_true",
                             help="hand the bundle to the privileged updater (kiosk-agent-updater.path) and "
                                  "wait for its result (the default when the release tree is not writable)")
            how.add_argument("--pending", action="store_true",
                             help="apply the bundle handed over with --via-updater (what the updater "
                                  "unit runs)")
        if name != "status":
            a.add_argument("--systemctl", default="systemctl", metavar="CMD",
                           help="the service manager's command (default systemctl)")
        config_arg(a)
        a.add_argument("--root", type=Path, metavar="DIR", help="the release tree (default update.root)")
        a.add_argument("--json", action="store_true", help="print the result as JSON")
        a.set_defaults(func={"apply": cmd_apply, "status": cmd_status, "recover": cmd_recover}[name])


def cmd_release_key(args: argparse.Namespace) -> int:
    if args.path.exists():
        print(f"error: {args.path} exists; not overwriting a release key", file=sys.stderr)
        return EXIT_USAGE
    public = keys.create_signing_key(args.path)
    print(f"release key {args.path}, public {keys.public_path(args.path)}\nfingerprint "
          f"{keys.fingerprint(public)} (key id {keys.key_id(public)})")
    return EXIT_OK


def cmd_build(args: argparse.Namespace) -> int:
    request = BuildRequest(args.project, args.key, args.out, args.platform, args.min_from,
                           args.system_dependencies, args.reversible_migration, args.wheelhouse)
    try:
        manifest = build(request)
    except (BundleError, keys.KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{args.out}: kiosk-agent {manifest.version} for {', '.join(manifest.platforms)}, "
          f"{len(manifest.files) - 1} wheels, upgrades from {manifest.min_from}")
    return EXIT_OK


def _updater(args: argparse.Namespace) -> Updater:
    config = load(args).update
    tree = Tree(args.root or config.root)
    return Updater(tree, config_path(args.config), load_release_keys(config.release_keys),
                   Service(getattr(args, "systemctl", "systemctl")), config.health_timeout_s,
                   config.max_bundle_bytes)


def cmd_apply(args: argparse.Namespace) -> int:
    config = load(args)
    spool = spool_dir(config.kiosk.state_dir)  # type: ignore[arg-type]
    if args.pending:
        return _apply_pending(args, spool)
    if args.bundle is None:
        print("error: give a bundle FILE (or --pending)", file=sys.stderr)
        return EXIT_USAGE
    root = args.root or config.update.root
    nearest = next(p for p in (root, *root.parents) if p.exists())  # the tree may not exist yet
    if args.via_updater or not os.access(nearest, os.W_OK):
        request(spool, args.bundle)
        print(f"handed {args.bundle} to the updater; waiting for its result", file=sys.stderr)
        result = wait_result(spool, config.update.health_timeout_s * 2 + 600)
        if result is None:
            result = {"ok": False,
                      "error": "no result from the updater (is kiosk-agent-updater.path enabled?)"}
        return _report(args, result)
    try:
        with _updater(args) as updater:
            version = updater.apply(args.bundle)
    except (PermanentError, OSError) as exc:
        return _report(args, {"ok": False, "error": str(exc)})
    return _report(args, {"ok": True, "version": version})


def _apply_pending(args: argparse.Namespace, spool: Path) -> int:
    try:
        with _updater(args) as updater:
            bundle = take(spool, updater.tree, updater.max_bundle_bytes)
            if bundle is None:
                print("nothing pending")
                return EXIT_OK
            version = updater.apply(bundle)
            result = {"ok": True, "version": version, "outcome": "committed", "reason": "healthy"}
    except (PermanentError, OSError) as exc:
        rolled_back = isinstance(exc, UpdateFailed) and exc.rolled_back
        result = {"ok": False, "error": str(exc), "version": getattr(exc, "version", None),
                  "outcome": "rolled_back" if rolled_back else "refused", "reason": str(exc)}
    # The id lets the agent announce each outcome exactly once (agent/update/outcome.py).
    result.update(id=uuid.uuid4().hex, at=time.time())
    write_result(spool, result)
    return _report(args, result)


def _report(args: argparse.Namespace, result: dict[str, object]) -> int:
    if result.get("ok"):
        print(json.dumps(result) if args.json else f"kiosk-agent {result['version']} installed and healthy")
        return EXIT_OK
    print(json.dumps(result) if args.json else f"error: {result.get('error')}", file=sys.stderr)
    return EXIT_FAILED


def cmd_recover(args: argparse.Namespace) -> int:
    try:
        with _updater(args) as updater:
            done = updater.recover()
    except (UpdateFailed, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps({"recovered": done}) if args.json else (done or "nothing to recover"))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    tree = Tree(args.root or load(args).update.root)
    status = tree.status()
    if args.json:
        print(json.dumps(status))
        return EXIT_OK
    print(f"current {status['current'] or '-'}, previous {status['previous'] or '-'} ({tree.root})")
    print(f"installed: {', '.join(status['installed']) or 'none'}")
    for version, reason in status["failed"].items():
        print(f"failed {version}: {reason}")
    if status["in_progress"]:
        print(f"interrupted update: {status['in_progress']}")
    return EXIT_OK
