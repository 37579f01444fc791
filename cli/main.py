"""``kiosk-agent``: agent/cli.py's commands, extended with ``receiver`` (and its key and
config checks) and ``demo``."""

from __future__ import annotations

import argparse
import sys

from agent import shutdown


def _extensions():  # type: ignore[no-untyped-def]
    # Imported here, not at the top: `kiosk-agent run` installs its stop-signal handlers
    # first (agent/shutdown.py), and these imports take most of a second.
    from devtools import demo
    from receiver import cli as receiver_cli

    return (receiver_cli.extend, demo.add_parser)


def build_parser() -> argparse.ArgumentParser:
    from agent import cli as agent_cli

    return agent_cli.build_parser(_extensions())


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv)[:1] == ["run"]:
        shutdown.install()
    from agent import cli as agent_cli

    return agent_cli.main(argv, extensions=_extensions())
