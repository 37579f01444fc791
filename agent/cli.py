"""The ``kiosk-agent`` command line.

Exit codes: 0 success; 1 the operation failed (broker, devices, lost captures); 2 bad usage
or a bad config file (every problem is listed, one per line, with its dotted path).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from agent import __version__
from agent.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    ConfigError,
    config_path,
    json_schema,
    load_config,
    load_receiver_config,
)
from agent.logs import setup_logging

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("kiosk-agent")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiosk-agent",
        description="Edge agent for biometric registration kiosks: captures from fingerprint "
                    "scanners and cameras, queues them durably and delivers them over MQTT.",
        epilog=f"The config file defaults to {DEFAULT_CONFIG_PATH}; --config or {CONFIG_ENV} "
               "override it. Exit codes: 0 ok, 1 failed, 2 bad usage or config.",
    )
    parser.add_argument("--version", action="version", version=f"kiosk-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def config_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="PATH", help=f"config file (default: ${CONFIG_ENV} "
                       f"or {DEFAULT_CONFIG_PATH})")

    p = sub.add_parser("run", help="run the agent in the foreground until SIGTERM or SIGINT")
    config_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run the whole capture path locally with simulated devices")
    p.add_argument("--count", type=_positive_int, default=20, metavar="N",
                   help="captures to take (default 20)")
    p.add_argument("--rate", type=_non_negative_float, default=0.0, metavar="R",
                   help="captures per second; 0 = as fast as the path allows (default)")
    p.add_argument("--broker", metavar="HOST:PORT",
                   help="use this broker instead of starting one (waits while it is down)")
    p.add_argument("--embedded-broker", action="store_true",
                   help="use the in-process broker even when mosquitto is installed")
    p.add_argument("--protocol", choices=["5", "3.1.1"],
                   help="MQTT version (default: 5, or 3.1.1 with the embedded broker)")
    p.add_argument("--timeout", type=_positive_float, default=300.0, metavar="SECONDS",
                   help="give up after this long (default 300)")
    p.add_argument("--dir", type=Path, metavar="PATH",
                   help="keep the queue and received captures here (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("receiver", help="run the reference receiver (central side)")
    config_arg(p)
    p.set_defaults(func=cmd_receiver)

    p = sub.add_parser("check-config", help="validate a config file (exit 0 valid, 2 invalid)")
    p.add_argument("path", nargs="?", metavar="PATH",
                   help=f"config file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG_PATH})")
    p.add_argument("--receiver", action="store_true",
                   help="check a reference receiver's config instead of a kiosk's")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("config-schema", help="print the config file's JSON Schema")
    p.set_defaults(func=cmd_config_schema)

    p = sub.add_parser("keys", help="create, show and enrol the keys that protect captures")
    ksub = p.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)
    k = ksub.add_parser("init", help="create the kiosk's Ed25519 key pair (security.kiosk_key), or "
                                     "with --central the central service's X25519 pair")
    config_arg(k)
    k.add_argument("--central", action="store_true",
                   help="create the central service's key pair (receiver.central_private_key)")
    k.add_argument("--json", action="store_true", help="print the public key as JSON")
    k.set_defaults(func=cmd_keys_init)
    k = ksub.add_parser("show", help="print the public key and its fingerprint for enrolment")
    config_arg(k)
    k.add_argument("--central", action="store_true", help="the central service's key")
    k.add_argument("--json", action="store_true", help="print as JSON")
    k.set_defaults(func=cmd_keys_show)
    k = ksub.add_parser("enrol", help="central side: accept a kiosk's public key (receiver.kiosk_keys_dir)")
    config_arg(k)
    k.add_argument("--kiosk-id", required=True, help="the kiosk's id (kiosk.id in its config)")
    k.add_argument("public_key", type=Path, metavar="PUBLIC_KEY_FILE", help="the kiosk's .pub file")
    k.set_defaults(func=cmd_keys_enrol)

    p = sub.add_parser("queue", help="inspect the local capture queue")
    qsub = p.add_subparsers(dest="queue_command", metavar="SUBCOMMAND", required=True)
    q = qsub.add_parser("stats", help="pending captures and bytes, oldest age, counts by state")
    config_arg(q)
    q.add_argument("--json", action="store_true", help="print as JSON")
    q.set_defaults(func=cmd_queue_stats)
    return parser


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _print_config_error(exc: ConfigError) -> None:
    print(f"error: invalid config {exc.source}:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def _load(args: argparse.Namespace) -> AgentConfig:
    return load_config(config_path(args.config))


def cmd_run(args: argparse.Namespace) -> int:
    from agent.daemon import Agent

    config = _load(args)
    setup_logging(config.logging.level, config.logging.format)
    Agent(config).run_until_signalled()
    return EXIT_OK


def cmd_receiver(args: argparse.Namespace) -> int:
    import signal
    import threading

    from agent.receiver import Receiver

    config = load_receiver_config(config_path(args.config))
    setup_logging(config.logging.level, config.logging.format)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    receiver = Receiver(config)
    receiver.start()
    try:
        while not stop.wait(1.0):
            if not receiver.link.alive:
                log.critical("receiver MQTT thread died")
                return EXIT_FAILED
    finally:
        receiver.stop()
        c = receiver.counters
        log.info("receiver stopped: %d stored, %d duplicates, %d rejected, %d unreadable",
                 c.stored, c.duplicates, c.rejected, c.unreadable)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import DemoError, DemoOptions, run_demo

    setup_logging("WARNING", "text")
    opts = DemoOptions(count=args.count, rate=args.rate, broker=args.broker, protocol=args.protocol,
                       embedded=args.embedded_broker,
                       timeout_s=args.timeout, workdir=args.dir, json=args.json)
    try:
        return run_demo(opts)
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def cmd_check_config(args: argparse.Namespace) -> int:
    path = config_path(args.path)
    try:
        config = load_receiver_config(path) if args.receiver else load_config(path)
    except ConfigError as exc:
        if args.json:
            print(json.dumps({"valid": False, "path": str(path), "problems": exc.problems}))
        else:
            _print_config_error(exc)
        return EXIT_USAGE
    if isinstance(config, AgentConfig):
        summary = (f"kiosk {config.kiosk.id}, {len(config.devices)} devices: "
                   f"{', '.join(sorted(config.devices)) or 'none'}")
    else:
        summary = f"receiver {config.receiver.name}, storing under {config.receiver.output_dir}"
    if args.json:
        print(json.dumps({"valid": True, "path": str(path), "summary": summary}))
    else:
        print(f"{path}: valid ({summary})")
    return EXIT_OK


def cmd_config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_queue_stats(args: argparse.Namespace) -> int:
    from agent.durable_queue import DurableQueue

    config = _load(args)
    if not config.queue.path.exists():
        print(f"error: no queue at {config.queue.path} (the agent has not run with this config)",
              file=sys.stderr)
        return EXIT_FAILED
    queue = DurableQueue(config.queue.path, max_bytes=config.queue.max_bytes,
                         min_free_bytes=config.queue.min_free_bytes)
    try:
        stats = queue.stats()
    finally:
        queue.close()
    if args.json:
        print(json.dumps(dict(stats.as_dict(), path=str(config.queue.path))))
        return EXIT_OK
    age = "-" if stats.oldest_age_s is None else f"{stats.oldest_age_s:.0f} s"
    print(f"queue {config.queue.path}")
    print(f"  pending:     {stats.pending} captures, {stats.pending_bytes:,} bytes "
          f"(quota {stats.max_bytes:,})")
    print(f"  oldest:      {age}")
    print("  by state:    " + ", ".join(f"{k} {v}" for k, v in stats.by_state.items()))
    print(f"  disk free:   {stats.disk_free_bytes:,} bytes")
    return EXIT_OK


# --- keys ----------------------------------------------------------------------------------


def _key_paths(args: argparse.Namespace) -> tuple[Path, str]:
    """(private key path, what) from a kiosk config, or a receiver config with --central."""
    if args.central:
        return load_receiver_config(config_path(args.config)).receiver.central_private_key, "central"
    return load_config(config_path(args.config)).security.kiosk_key, "kiosk"


def _print_public(path: Path, what: str, as_json: bool) -> None:
    from agent import keys

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


def cmd_keys_init(args: argparse.Namespace) -> int:
    from agent import keys

    path, what = _key_paths(args)
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
    keys.chown_to_service_user(path)
    if not args.json:
        print(f"created {what} private key {path} (mode 0600)")
    _print_public(path, what, args.json)
    return EXIT_OK


def cmd_keys_show(args: argparse.Namespace) -> int:
    from agent import keys

    path, what = _key_paths(args)
    try:
        _print_public(path, what, args.json)
    except keys.KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_keys_enrol(args: argparse.Namespace) -> int:
    from agent import keys
    from agent.config import _topic_segment

    config = load_receiver_config(config_path(args.config))
    try:
        _topic_segment(args.kiosk_id)
        public = keys.enrol(args.kiosk_id, args.public_key, config.receiver.kiosk_keys_dir)
    except (ValueError, keys.KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILED
    print(f"enrolled kiosk {args.kiosk_id}: {keys.fingerprint(public)} -> "
          f"{config.receiver.kiosk_keys_dir / (args.kiosk_id + '.pub')}")
    return EXIT_OK
