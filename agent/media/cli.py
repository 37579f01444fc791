"""``kiosk-agent export --to DIR`` and ``kiosk-agent import-receipts DIR`` (the kiosk's side
of registrations carried on a drive; the central side's is ``receiver import``).

Both open the queue, so they take the state folder's lock like ``run``: stop the agent
first (``systemctl stop kiosk-agent``); they say so when it runs. Exit codes: 0 done,
1 failed or incomplete (the text says what to do), 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.cliutil import EXIT_FAILED, EXIT_OK, Subparsers, config_arg, load
from agent.config import AgentConfig, ConfigError
from agent.lock import StateLock, StateLocked
from agent.media.medium import MediaError


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("export", help="copy the queued, sealed captures and registration manifests to a "
                                      "removable drive, with a signed index (the queue keeps them)")
    config_arg(p)
    p.add_argument("--to", required=True, type=Path, metavar="DIR",
                   help="the drive's folder (its mount point); kiosk-media/<kiosk id>/ is written there")
    p.add_argument("--json", action="store_true", help="print a summary as JSON (progress goes to stderr)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-receipts", help="delete from the queue what the central receipts on a "
                                               "drive confirm (after `receiver import` of that drive)")
    config_arg(p)
    p.add_argument("dir", type=Path, metavar="DIR", help="the drive's folder, as given to export --to")
    p.add_argument("--json", action="store_true", help="print a summary as JSON")
    p.set_defaults(func=cmd_import_receipts)


def _open_queue(config: AgentConfig):  # type: ignore[no-untyped-def]
    from agent.transport.durable_queue import DurableQueue

    if not config.queue.path.exists():
        raise MediaError(f"no queue at {config.queue.path} (the agent has not run with this config)")
    # As `run` does: the state folder's lock, and the queue's folder's when it lies elsewhere.
    locks: list[StateLock] = []
    try:
        for folder in dict.fromkeys([config.state_dir, config.queue.path.parent]):
            locks.append(StateLock(folder).acquire())
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    queue = DurableQueue(config.queue.path, max_bytes=config.queue.max_bytes,
                         min_free_bytes=config.queue.min_free_bytes)
    return locks, queue


def _signing_key(config: AgentConfig):  # type: ignore[no-untyped-def]
    from agent.security.keys import KeyFileError, load_signing_key

    try:
        return load_signing_key(config.security.kiosk_key)
    except KeyFileError as exc:
        raise ConfigError("security", [str(exc)]) from None


def _fail(message: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"ok": False, "error": message}))
    print(f"error: {message}", file=sys.stderr)
    return EXIT_FAILED


def cmd_export(args: argparse.Namespace) -> int:
    from agent.media.export import export

    config = load(args)
    key = _signing_key(config)
    try:
        locks, queue = _open_queue(config)
    except (StateLocked, MediaError) as exc:
        return _fail(str(exc), args.json)
    try:
        summary = export(queue, config.kiosk.id, key, args.to.resolve(),
                         progress=lambda line: print(line, file=sys.stderr, flush=True))
    except MediaError as exc:
        return _fail(str(exc), args.json)
    finally:
        queue.close()
        for lock in locks:
            lock.release()
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(dict(summary.as_dict(), ok=summary.complete)))
    elif summary.complete:
        print(f"exported {summary.items} items ({summary.bytes:,} bytes; {summary.written} copied, "
              f"{summary.already_there} already there, {summary.removed} settled ones removed) to "
              f"{summary.folder}; the queue keeps them until `kiosk-agent import-receipts`")
    if summary.error:
        print(f"error: {summary.error}", file=sys.stderr)
    return EXIT_OK if summary.complete else EXIT_FAILED


def cmd_import_receipts(args: argparse.Namespace) -> int:
    from agent.media.receipts_in import import_receipts
    from agent.security.keys import KeyFileError, load_receipt_keys

    config = load(args)
    own = _signing_key(config).public_key()
    try:
        trusted = load_receipt_keys(config.security.receipt_keys)
    except KeyFileError as exc:
        raise ConfigError("security", [str(exc)]) from None
    try:
        locks, queue = _open_queue(config)
    except (StateLocked, MediaError) as exc:
        return _fail(str(exc), args.json)
    try:
        summary = import_receipts(queue, config.kiosk.id, own, trusted, args.dir.resolve())
    except MediaError as exc:
        return _fail(str(exc), args.json)
    finally:
        queue.close()
        for lock in locks:
            lock.release()
    ok = not summary.refused
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(dict(summary.as_dict(), ok=ok)))
    else:
        print(f"export {summary.export_id}: {summary.listed} items listed; {summary.deleted} deleted "
              "(receipted), "
              f"{summary.rejected} set aside as rejected, {summary.already_gone} already gone, "
              f"{summary.waiting} still waiting for a receipt")
    if summary.refused:
        print("error: receipts refused (nothing deleted for them): " + ", ".join(
            f"{reason} {n}" for reason, n in sorted(summary.refused.items())), file=sys.stderr)
    if summary.changed:
        print(f"warning: {summary.changed} listed items are held in the queue with other bytes; export "
              "again", file=sys.stderr)
    return EXIT_OK if ok else EXIT_FAILED
