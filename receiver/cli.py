"""The central side's commands, added to ``kiosk-agent`` by cli/main.py.

``kiosk-agent receiver`` runs the reference receiver; ``check-config --receiver`` checks its
config; ``keys init|show --central`` and ``keys enrol`` manage the central service's keys
(encryption and receipt signing) and the enrolled kiosks' keys.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.cliutil import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Subparsers, check_config, config_arg
from agent.config import ConfigError, config_path
from agent.config_types import topic_segment
from agent.lock import StateLock, StateLocked
from agent.logs import setup_logging
from agent.preflight import mqtt_problems
from agent.security import keys
from agent.security.cli import init_key, show_key
from receiver.config import ReceiverServiceConfig, load_receiver_config
from receiver.storage import preflight

if TYPE_CHECKING:
    from receiver.service import Receiver

log = logging.getLogger("kiosk-agent")

Command = Callable[[argparse.Namespace], int]


def extend(sub: Subparsers, parsers: dict[str, Any]) -> None:
    p = sub.add_parser("receiver", help="run the reference receiver (central side)")
    config_arg(p)
    p.add_argument("action", nargs="?", choices=["status", "import"],
                   help="status: where the registrations it stored stand, then exit (1: some failed); "
                        "import DIR: ingest what a van exported to a drive and write its receipts there")
    p.add_argument("dir", nargs="?", type=Path, metavar="DIR", help="with import: the drive's folder")
    p.add_argument("--json", action="store_true", help="with status or import: one JSON object")
    p.set_defaults(func=cmd_receiver)

    check = parsers["check-config"]
    check.add_argument("--receiver", action="store_true",
                       help="check a reference receiver's config instead of a kiosk's")
    check.set_defaults(func=_either(cmd_check_receiver_config, check.get_default("func"), "receiver"))

    init = parsers["keys init"]
    init.add_argument("--central", action="store_true",
                      help="create the central service's key pairs: encryption "
                           "(receiver.central_private_key) and receipt signing "
                           "(receiver.receipt_signing_key)")
    init.set_defaults(func=_either(cmd_central_key_init, init.get_default("func"), "central"))
    show = parsers["keys show"]
    show.add_argument("--central", action="store_true",
                      help="the central service's public keys (encryption, receipt signing)")
    show.set_defaults(func=_either(cmd_central_key_show, show.get_default("func"), "central"))

    enrol = parsers["keys"].add_parser(
        "enrol", help="central side: accept a kiosk's public key (receiver.kiosk_keys_dir)")
    config_arg(enrol)
    enrol.add_argument("--kiosk-id", required=True, help="the kiosk's id (kiosk.id in its config)")
    enrol.add_argument("public_key", type=Path, metavar="PUBLIC_KEY_FILE", help="the kiosk's .pub file")
    enrol.set_defaults(func=cmd_keys_enrol)


def _either(central: Command, kiosk: Command, flag: str) -> Command:
    """The central side's command when ``--<flag>`` is given, else the kiosk's."""
    def run(args: argparse.Namespace) -> int:
        return central(args) if getattr(args, flag, False) else kiosk(args)
    return run


def _central_keys(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """The central service's two key pairs: (private key path, what) each."""
    rc = load_receiver_config(config_path(args.config)).receiver
    return [(rc.central_private_key, "central"), (rc.receipt_key, "receipt-signing")]


def cmd_central_key_init(args: argparse.Namespace) -> int:
    """Both central key pairs: X25519 (captures are sealed to it) and Ed25519 (receipts are
    signed with it); one command, since a receiver needs both. A pair that already exists is
    kept and shown (a receiver set up before receipts were signed gets only the new one)."""
    pairs = _central_keys(args)
    if all(path.exists() for path, _ in pairs):
        print(f"error: {pairs[0][0]} and {pairs[1][0]} already exist; refusing to overwrite keys (move "
              "them away first if you really mean to replace them)", file=sys.stderr)
        return EXIT_FAILED
    for path, what in pairs:
        if path.exists():
            print(f"keeping the existing {what} key {path}", file=sys.stderr)
            status = show_key(path, what, args.json)
        else:
            status = init_key(path, what, args.json)
        if status != EXIT_OK:
            return status
    return EXIT_OK


def cmd_central_key_show(args: argparse.Namespace) -> int:
    """Both central public keys (with --json, one JSON object per line)."""
    for path, what in _central_keys(args):
        status = show_key(path, what, args.json)
        if status != EXIT_OK:
            return status
    return EXIT_OK


def cmd_check_receiver_config(args: argparse.Namespace) -> int:
    no_files = getattr(args, "no_files", False)
    return check_config(config_path(args.path), lambda p: _check_receiver_config(p, no_files), args.json)


def _check_receiver_config(path: Path, no_files: bool = False) -> tuple[str, list[str]]:
    config = load_receiver_config(path)
    if not no_files:  # what `kiosk-agent receiver` loads before it starts
        rc = config.receiver
        problems = mqtt_problems(config.mqtt)
        for load_key in (lambda: keys.load_decryption_key(rc.central_private_key),
                         lambda: keys.load_receipt_signing_key(rc.receipt_key),
                         lambda: keys.load_kiosk_keys(rc.kiosk_keys_dir)):
            try:
                load_key()
            except keys.KeyFileError as exc:
                problems.append(str(exc))
        # A PostgreSQL store: reachable, credentials, schema version (receiver/storage/preflight.py).
        store_problems, store_warnings = preflight.store_problems(rc.store)
        problems += store_problems
        if problems:
            raise ConfigError(str(path), problems)
    plaintext = config.mqtt.plaintext_warning()
    warnings = ([plaintext] if plaintext else []) + ([] if no_files else store_warnings)
    where = "in PostgreSQL" if config.receiver.store != "files" else f"under {config.receiver.output_dir}"
    return (f"receiver {config.receiver.name}, storing {where}"
            + ("; files not checked, nor the database" if no_files else ""), warnings)


def cmd_keys_enrol(args: argparse.Namespace) -> int:
    config = load_receiver_config(config_path(args.config))
    try:
        topic_segment(args.kiosk_id)
        public = keys.enrol(args.kiosk_id, args.public_key, config.receiver.kiosk_keys_dir)
    except (ValueError, keys.KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILED
    print(f"enrolled kiosk {args.kiosk_id}: {keys.fingerprint(public)} -> "
          f"{config.receiver.kiosk_keys_dir / (args.kiosk_id + '.pub')}")
    return EXIT_OK


def cmd_receiver(args: argparse.Namespace) -> int:
    config = load_receiver_config(config_path(args.config))
    if getattr(args, "action", None) == "status":
        if config.receiver.store != "files":  # the tables (receiver/storage/pg_report.py)
            from receiver.storage.pg_report import print_status as print_db_status

            return print_db_status(config.receiver.store, args.json)
        from receiver.status_report import print_status

        return print_status(config.receiver.output_dir, args.json)
    if getattr(args, "action", None) == "import":
        return cmd_receiver_import(config, args)
    setup_logging(config.logging.level, config.logging.format)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        lock = store_lock(config).acquire()
    except StateLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        from receiver.service import Receiver

        return _serve(Receiver(config), stop)
    finally:
        lock.release()


def cmd_receiver_import(config: ReceiverServiceConfig, args: argparse.Namespace) -> int:
    """Registrations carried on a drive (receiver/media_import.py); exit 1 unless every item
    listed was imported and every receipt written."""
    import json

    from agent.media.medium import MediaError
    from receiver.media_import import import_media
    from receiver.service import Receiver

    if args.dir is None:
        print("error: receiver import needs the drive's folder: kiosk-agent receiver import DIR",
              file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.logging.level, config.logging.format)
    try:
        # Its own lock: it may run beside this store's receivers (the store de-duplicates
        # between them), but two imports at once would race on the drive's receipt files.
        lock = StateLock(config.receiver.output_dir, "kiosk-agent receiver import",
                         name=".lock-media-import").acquire()
    except StateLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    receiver = None
    try:
        receiver = Receiver(config)
        # Not started: nothing goes over MQTT. Registration statuses are kept on disk and
        # reach the kiosk at its next query.
        receiver.reporter.publish = None
        results = import_media(receiver, args.dir.resolve(),
                               progress=lambda line: print(line, file=sys.stderr, flush=True))
    except MediaError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc), "kiosks": []}))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if receiver is not None:
            receiver.store.close()
        lock.release()
    ok = bool(results) and all(r.ok for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "kiosks": [r.as_dict() for r in results]}))
    else:
        if not results:
            print(f"nothing to import under {args.dir / 'kiosk-media'}", file=sys.stderr)
        for r in results:
            print(f"{r.kiosk_id or r.folder}: {r.listed} listed, {r.stored} stored, {r.duplicate} duplicate, "
                  f"{r.rejected} rejected, {r.not_imported} not imported; {r.receipts_written} receipts"
                  + (f" in {r.receipts_file}" if r.receipts_file else ""))
            for line in r.warnings:
                print(f"  warning: {line}", file=sys.stderr)
            for line in r.problems:
                print(f"  not imported: {line}", file=sys.stderr)
            if r.error:
                print(f"  error: {r.error}", file=sys.stderr)
    return EXIT_OK if ok else EXIT_FAILED


def store_lock(config: ReceiverServiceConfig) -> StateLock:
    """The store's lock for this receiver's MQTT client id. Receivers of one share group
    share a store by design, each under its own name; two with one client id would throw
    each other off the broker and race on the same files."""
    client = re.sub(r"[^A-Za-z0-9._-]", "_", config.client_id())
    return StateLock(config.receiver.output_dir, f"kiosk-agent receiver {config.receiver.name!r}",
                     name=f".lock-{client}")


def _serve(receiver: Receiver, stop: threading.Event) -> int:
    receiver.start()
    try:
        while not stop.wait(1.0):
            if not receiver.link.alive:
                log.critical("receiver MQTT thread died")
                return EXIT_FAILED
    finally:
        receiver.stop()
        c = receiver.counters
        log.info("receiver stopped: %d stored, %d duplicates, %d rejected, %d unreadable; "
                 "chunks: %d received, %d duplicate, %d corrupt", c.stored, c.duplicates, c.rejected,
                 c.unreadable, c.chunks_received, c.chunks_duplicate, c.chunks_corrupt)
    return EXIT_OK
