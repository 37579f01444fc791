"""The ``kiosk-agent`` command line.

Exit codes: 0 success; 1 the operation failed (broker, devices, lost captures); 2 bad usage
or a bad config file (every problem is listed, one per line, with its dotted path).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.capture import cli as capture_cli
from agent.cliutil import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Subparsers,
    check_config,
    config_arg,
    load,
    print_config_error,
)
from agent.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    ConfigError,
    config_path,
    json_schema,
    load_config,
)
from agent.logs import setup_logging
from agent.quality import cli as quality_cli
from agent.remote import cli as remote_cli
from agent.remote.control import load_operators, operator_key_exposure
from agent.security import cli as security_cli

log = logging.getLogger("kiosk-agent")

#: Adds subcommands (or options to existing ones) to the kiosk's command line; given the
#: sub-parser action and, by name, the parsers ("check-config", "keys init", "keys show") and
#: the sub-parser action of ``keys`` ("keys").
Extension = Callable[[Subparsers, dict[str, Any]], None]


def build_parser(extensions: Sequence[Extension] = ()) -> argparse.ArgumentParser:
    """The kiosk's commands; ``extensions`` add the central side's (cli/main.py)."""
    parser = argparse.ArgumentParser(
        prog="kiosk-agent",
        description="Edge agent for biometric registration kiosks: captures from fingerprint "
                    "scanners and cameras, queues them durably and delivers them over MQTT.",
        epilog=f"The config file defaults to {DEFAULT_CONFIG_PATH}; --config or {CONFIG_ENV} "
               "override it. Exit codes: 0 ok, 1 failed, 2 bad usage or config.",
    )
    parser.add_argument("--version", action="version", version=f"kiosk-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the agent in the foreground until SIGTERM or SIGINT")
    config_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a config file (exit 0 valid, 2 invalid)")
    p.add_argument("path", nargs="?", metavar="PATH",
                   help=f"config file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG_PATH})")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_check_config)
    parsers: dict[str, Any] = {"check-config": p}

    p = sub.add_parser("config-schema", help="print the config file's JSON Schema")
    p.set_defaults(func=cmd_config_schema)

    for name, parser_ in security_cli.add_parser(sub).items():
        parsers["keys" if name == "keys" else f"keys {name}"] = parser_
    quality_cli.add_parser(sub)
    remote_cli.add_parser(sub)

    p = sub.add_parser("queue", help="inspect the local capture queue")
    qsub = p.add_subparsers(dest="queue_command", metavar="SUBCOMMAND", required=True)
    q = qsub.add_parser("stats", help="pending captures and bytes, oldest age, counts by state")
    config_arg(q)
    q.add_argument("--json", action="store_true", help="print as JSON")
    q.set_defaults(func=cmd_queue_stats)
    capture_cli.add_parser(sub)
    for extend in extensions:
        extend(sub, parsers)
    return parser


def main(argv: list[str] | None = None, extensions: Sequence[Extension] = ()) -> int:
    args = build_parser(extensions).parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print_config_error(exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def cmd_run(args: argparse.Namespace) -> int:
    from agent.daemon import Agent

    config = load(args)
    setup_logging(config.logging.level, config.logging.format)
    Agent(config, config_path(args.config)).run_until_signalled()
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    return check_config(config_path(args.path), _check_kiosk_config, args.json)


def _check_kiosk_config(path: Path) -> tuple[str, list[str]]:
    config = load_config(path)
    exposed = operator_key_exposure(config.remote, config.security.service_user)
    if exposed:  # the agent refuses to start with these: an error here too, not a warning
        raise ConfigError(str(path), exposed)
    summary = (f"kiosk {config.kiosk.id}, {len(config.devices)} devices: "
               f"{', '.join(sorted(config.devices)) or 'none'}")
    # Unusable operator keys: the agent runs without those operators; worth fixing.
    warnings = load_operators(config.remote)[1] if config.remote.enabled else []
    plaintext = config.mqtt.plaintext_warning()  # allowed (allow_plaintext), yet worth saying
    if plaintext:
        warnings.append(plaintext)
    return summary, warnings


def cmd_config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_queue_stats(args: argparse.Namespace) -> int:
    from agent.transport.durable_queue import DurableQueue

    config = load(args)
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


