"""The ``kiosk-agent`` command line.

Exit codes: 0 success; 1 the operation failed (broker, devices, lost captures); 2 bad usage
or a bad config file (every problem is listed, one per line, with its dotted path).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
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
    AgentConfig,
    ConfigError,
    config_path,
    json_schema,
    load_config,
    read_toml,
)
from agent.console import cli as console_cli
from agent.lock import StateLock, StateLocked
from agent.logs import setup_logging
from agent.media import cli as media_cli
from agent.preflight import mqtt_problems, problems_and_warnings
from agent.quality import cli as quality_cli
from agent.remote import cli as remote_cli
from agent.remote.cli import load_operator_config
from agent.remote.control import operator_key_exposure
from agent.security import cli as security_cli
from agent.update import cli as update_cli

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

    p = sub.add_parser("check-config", help="check a config file and what `run` needs besides it: key, "
                                             "TLS and token files, the state folder, the local API "
                                             "(exit 0 ready, 2 not); an operator's file too")
    p.add_argument("path", nargs="?", metavar="PATH",
                   help=f"config file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG_PATH}); a file with "
                        "an [operator] table is checked as an operator's (`remote`)")
    p.add_argument("--no-files", action="store_true",
                   help="check the file alone, not the files it names (a config written for "
                        "another machine, or before its keys are installed)")
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
    media_cli.add_parser(sub)
    update_cli.add_parser(sub)
    console_cli.add_parser(sub)
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
    config = load(args)
    setup_logging(config.logging.level, config.logging.format)
    try:
        # Before anything opens the queue or reaches the broker: a second agent on this
        # queue would fight the first over its rows and its MQTT client id.
        locks = lock_state_folders(config)
    except StateLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        # check-config's checks, so that the service (which has no ExecStartPre: systemd would
        # restart a failing one every few seconds) refuses with exit 2 and is not restarted.
        problems, warnings = problems_and_warnings(config, operator_warnings=False)
        if problems:
            raise ConfigError(str(config_path(args.config)), problems)
        for warning in warnings:
            log.warning("%s", warning)
        from agent.daemon import Agent

        Agent(config, config_path(args.config)).run_until_signalled()
    finally:
        for lock in locks:
            lock.release()
    return EXIT_OK


def lock_state_folders(config: AgentConfig) -> list[StateLock]:
    """The state folder's lock, and the queue's folder's when the queue lives elsewhere."""
    folders = dict.fromkeys([config.state_dir, config.queue.path.parent])
    locks: list[StateLock] = []
    try:
        for folder in folders:
            try:
                locks.append(StateLock(folder).acquire())
            except StateLocked:
                raise
            except OSError as exc:  # not this user's folder: a set-up problem, exit 2
                raise ConfigError("kiosk.state_dir", [
                    f"cannot take the lock {folder / '.lock'}: {exc.strerror or exc} (run as the "
                    f"service's user, uid {os.getuid()} here)"]) from None
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    return locks


def cmd_check_config(args: argparse.Namespace) -> int:
    path = config_path(args.path)
    if _is_operator_file(path):
        return check_config(path, lambda p: _check_operator_config(p, args.no_files), args.json)
    return check_config(path, lambda p: _check_kiosk_config(p, args.no_files), args.json)


def _check_kiosk_config(path: Path, no_files: bool = False) -> tuple[str, list[str]]:
    config = load_config(path)
    if no_files:
        # The file alone; an operator key the service user can read is still refused: the
        # agent refuses to start with it, whatever else is installed.
        problems = operator_key_exposure(config.remote, config.security.service_user)
        warnings = [w for w in [config.mqtt.plaintext_warning()] if w]
    else:
        problems, warnings = problems_and_warnings(config)
    if problems:  # the agent refuses to start with these: errors here too, not warnings
        raise ConfigError(str(path), problems)
    summary = (f"kiosk {config.kiosk.id}, {len(config.devices)} devices: "
               f"{', '.join(sorted(config.devices)) or 'none'}"
               + ("; files not checked" if no_files else ""))
    return summary, warnings


def _is_operator_file(path: Path) -> bool:
    """An operator's file (config/operator.toml) has an [operator] table and no [kiosk]."""
    try:
        raw = read_toml(path)
    except ConfigError:
        return False  # the kiosk check reports it
    return "operator" in raw and "kiosk" not in raw


def _check_operator_config(path: Path, no_files: bool) -> tuple[str, list[str]]:
    from agent.security.keys import KeyFileError, load_signing_key

    config = load_operator_config(path)
    if not no_files:  # what `remote` loads: the operator's key, the broker's files
        problems = mqtt_problems(config.mqtt)
        try:
            load_signing_key(config.operator.key, "operator.key")
        except KeyFileError as exc:
            problems.insert(0, str(exc))
        if problems:
            raise ConfigError(str(path), problems)
    plaintext = config.mqtt.plaintext_warning()
    return (f"operator {config.operator.name}, broker {config.mqtt.host}:{config.mqtt.port}",
            [plaintext] if plaintext else [])


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
    running = 0
    try:
        with StateLock(config.state_dir):
            queue = DurableQueue(config.queue.path, max_bytes=config.queue.max_bytes,
                                 min_free_bytes=config.queue.min_free_bytes)
            try:
                stats = queue.stats()
            finally:
                queue.close()
    except StateLocked as exc:
        # The agent runs: opening the queue writes (its reserve file, erasure, a damaged file
        # moved aside), which only the lock's holder may do. Read it without writing instead.
        from agent.transport.queue_reader import read_only_stats

        running = exc.pid
        try:
            stats = read_only_stats(config.queue.path, config.queue.max_bytes)
        except sqlite3.DatabaseError as db_exc:
            print(f"error: cannot read {config.queue.path} while kiosk-agent pid {running} runs: {db_exc} "
                  "(the agent's log says whether it set a damaged file aside)", file=sys.stderr)
            return EXIT_FAILED
    if args.json:
        print(json.dumps(dict(stats.as_dict(), path=str(config.queue.path), agent_pid=running or None)))
        return EXIT_OK
    age = "-" if stats.oldest_age_s is None else f"{stats.oldest_age_s:.0f} s"
    print(f"queue {config.queue.path}")
    print(f"  pending:     {stats.pending} captures, {stats.pending_bytes:,} bytes "
          f"(quota {stats.max_bytes:,})")
    print(f"  oldest:      {age}")
    print("  by state:    " + ", ".join(f"{k} {v}" for k, v in stats.by_state.items()))
    print(f"  disk free:   {stats.disk_free_bytes:,} bytes")
    if running:
        print(f"  (read only: kiosk-agent pid {running} is running)")
    return EXIT_OK


