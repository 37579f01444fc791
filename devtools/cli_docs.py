"""Shell completion (bash, zsh) and the man page, generated from the command line's parser.

``make cli-docs`` writes them under share/; they are committed, so an install needs neither
generator (shtab for completion, argparse-manpage for the page: test dependencies only), and
tests/cli/test_cli_docs.py fails when the parser changes without them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from agent import __version__

ROOT = Path(__file__).resolve().parent.parent
#: Where each file goes in the source tree; install.sh copies them to the system's places.
FILES = {
    "bash": ROOT / "share" / "bash-completion" / "kiosk-agent",
    "zsh": ROOT / "share" / "zsh" / "_kiosk-agent",
    "man": ROOT / "share" / "man" / "kiosk-agent.1",
}
#: Help text wraps at the terminal's width: fixed, so the output is the same everywhere.
COLUMNS = "80"


def _parser() -> argparse.ArgumentParser:
    from cli.main import build_parser

    return build_parser()


def generate() -> dict[str, str]:
    """Each file's text, from the parser as it is now."""
    import shtab
    from argparse_manpage.manpage import Manpage

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = COLUMNS
    try:
        texts = {shell: shtab.complete(_parser(), shell=shell) for shell in ("bash", "zsh")}
        page = Manpage(_parser(), _data={"project_name": "kiosk-agent", "version": __version__,
                                         "manual_title": "kiosk-agent manual",
                                         "description": "edge agent for biometric registration kiosks"})
        page.date = ""  # no build date: the committed page must not change by itself
        texts["man"] = str(page)
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    return texts


def stale() -> list[str]:
    """The committed files that differ from what the parser makes now."""
    return [str(FILES[k].relative_to(ROOT)) for k, text in generate().items()
            if not FILES[k].exists() or FILES[k].read_text() != text]


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--check", action="store_true", help="exit 1 when a committed file is stale")
    opts = args.parse_args(argv)
    if opts.check:
        out_of_date = stale()
        for name in out_of_date:
            print(f"{name} is stale: run `make cli-docs`", file=sys.stderr)
        return 1 if out_of_date else 0
    for key, text in generate().items():
        FILES[key].parent.mkdir(parents=True, exist_ok=True)
        FILES[key].write_text(text)
        print(f"wrote {FILES[key].relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
