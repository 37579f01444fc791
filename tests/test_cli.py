from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent import __version__
from agent.cli import build_parser, main
from tests.conftest import to_toml

COMMANDS = [["run"], ["demo"], ["receiver"], ["check-config"], ["config-schema"], ["queue"],
            ["queue", "stats"]]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_help_for_every_subcommand(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--help"])
    assert exit_info.value.code == 0
    assert "usage: kiosk-agent " + " ".join(args) in capsys.readouterr().out


def test_every_subcommand_is_covered() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted({c[0] for c in COMMANDS})  # type: ignore[union-attr]


def test_console_script_version() -> None:
    out = subprocess.run([sys.executable, "-m", "agent", "--version"], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == f"kiosk-agent {__version__}"


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--count", "0"])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
    assert main(["demo", "--broker", "nonsense"]) == 2


def test_queue_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.durable_queue import DurableQueue

    queue_path = tmp_path / "q.db"
    config = tmp_path / "agent.toml"
    config.write_text(to_toml({"kiosk": {"id": "k"}, "queue": {"path": str(queue_path)}}))
    assert main(["queue", "stats", "--config", str(config)]) == 1  # no queue yet
    assert "has not run" in capsys.readouterr().err
    q = DurableQueue(queue_path, max_bytes=1 << 30, min_free_bytes=0)
    for i in range(3):
        q.put(f"id{i}", "capture", lambda seq: b"z" * 1000)
    q.close()
    assert main(["queue", "stats", "--config", str(config), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["pending"] == 3 and stats["pending_bytes"] == 3000
    assert stats["by_state"] == {"queued": 3, "sent": 0, "rejected": 0}
    assert main(["queue", "stats", "--config", str(config)]) == 0
    assert "3 captures, 3,000 bytes" in capsys.readouterr().out


def test_run_with_invalid_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[kiosk]\nid = "k"\n[mqtt]\nport = "x"\n')
    assert main(["run", "--config", str(config)]) == 2
    assert "mqtt.port" in capsys.readouterr().err
