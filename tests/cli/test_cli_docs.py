"""Shell completion and the man page are generated from the parser and committed
(devtools/cli_docs.py): they must match it, and the bash completion must really complete."""

from __future__ import annotations

import subprocess

from devtools.cli_docs import FILES, stale


def test_committed_completion_and_man_page_match_the_parser() -> None:
    assert stale() == [], "run `make cli-docs` and commit share/"


def _complete(words: list[str]) -> list[str]:
    script = (f'source "{FILES["bash"]}"; COMP_WORDS=({" ".join(words)}); '
              f"COMP_CWORD={len(words) - 1}; _shtab_kiosk_agent; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    return out.split()


def test_bash_completes_commands_and_their_options() -> None:
    assert _complete(["kiosk-agent", "che"]) == ["check-config"]
    assert "receiver" in _complete(["kiosk-agent", "re"]) and "remote" in _complete(["kiosk-agent", "re"])
    assert "--no-files" in _complete(["kiosk-agent", "check-config", "--"])
    assert _complete(["kiosk-agent", "keys", "e"]) == ["enrol"]


def test_the_man_page_has_every_command() -> None:
    page = FILES["man"].read_text()
    for command in ("run", "check\\-config", "queue stats", "keys enrol", "remote", "receiver", "demo"):
        assert f"kiosk\\-agent {command}" in page, command
