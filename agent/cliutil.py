"""What every subcommand shares: exit codes, the --config option, argument types, error output.

Kept apart from agent/cli.py so that each component's subcommands (agent/*/cli.py, the
receiver's, the demo's) can use it without importing the whole command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, AgentConfig, ConfigError, config_path, load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: argparse's sub-parser action, as add_subparsers() returns it.
Subparsers = Any


def config_arg(p: argparse.ArgumentParser, **kwargs: Any) -> None:
    p.add_argument("--config", metavar="PATH",
                   help=f"config file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG_PATH})", **kwargs)


def load(args: argparse.Namespace) -> AgentConfig:
    return load_config(config_path(args.config))


def print_config_error(exc: ConfigError) -> None:
    print(f"error: invalid config {exc.source}:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def check_config(path: Path, check: Callable[[Path], tuple[str, list[str]]], as_json: bool) -> int:
    """``check-config``'s answer for any config file: ``check`` loads and validates it and
    returns a one-line summary and warnings (problems the service runs despite)."""
    try:
        summary, warnings = check(path)
    except ConfigError as exc:
        if as_json:
            print(json.dumps({"valid": False, "path": str(path), "problems": exc.problems}))
        else:
            print_config_error(exc)
        return EXIT_USAGE
    if as_json:
        print(json.dumps({"valid": True, "path": str(path), "summary": summary, "warnings": warnings}))
    else:
        print(f"{path}: valid ({summary})")
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return number


def non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number
