"""``kiosk-agent``: agent/cli.py's commands, extended with ``receiver`` (and its key and
config checks) and ``demo``."""

from __future__ import annotations

import argparse

from agent import cli as agent_cli
from devtools import demo
from receiver import cli as receiver_cli

EXTENSIONS = (receiver_cli.extend, demo.add_parser)


def build_parser() -> argparse.ArgumentParser:
    return agent_cli.build_parser(EXTENSIONS)


def main(argv: list[str] | None = None) -> int:
    return agent_cli.main(argv, extensions=EXTENSIONS)
