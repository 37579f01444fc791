"""`check-config` answers what `run` would: a config the agent refuses at start is refused
before it (the unit's ExecStartPre), and an operator's file is checked as one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cli.main import main
from devtools.broker import free_port
from tests.support.config import security_section, to_toml
from tests.support.local_api import write_token
from tests.support.paths import ROOT


def _raw(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "kiosk": {"id": "k1", "state_dir": str(tmp_path / "state")},
        "mqtt": {"host": "127.0.0.1", "port": free_port(), "allow_plaintext": True},
        "security": security_section(tmp_path, "k1"),
        "logging": {"format": "text"},
    }
    for section, values in extra.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


def _write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(to_toml(raw))
    return path


def test_a_runnable_config_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(_write(tmp_path, _raw(tmp_path)))]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("broken, expected", [
    (lambda t: (t / "keys" / "kiosk.key").unlink(), "security.kiosk_key"),
    (lambda t: (t / "keys" / "central.key.pub").unlink(), "security.central_public_key"),
    (lambda t: (t / "keys" / "receipt-signing.key.pub").write_text("not a key"), "security.receipt_keys"),
], ids=["kiosk key missing", "central key missing", "receipt key garbage"])
def test_check_config_refuses_what_run_refuses(tmp_path: Path, broken: Any, expected: str) -> None:
    """Both exit 2 naming the setting; the run prints no "stopping" line before the error."""
    config = _write(tmp_path, _raw(tmp_path))
    broken(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    check = subprocess.run([sys.executable, "-m", "cli", "check-config", str(config)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    run = subprocess.run([sys.executable, "-m", "cli", "run", "--config", str(config)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert check.returncode == 2 and expected in check.stderr, check.stderr
    assert run.returncode == 2 and expected in run.stderr, run.stderr
    assert "stopping" not in run.stderr, run.stderr


def test_broker_files_and_the_local_api_are_checked(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    raw = _raw(tmp_path, mqtt={"allow_plaintext": False, "password_file": str(tmp_path / "nope"),
                               "tls": {"enabled": True, "ca_file": str(tmp_path / "ca.pem")}},
               local_api={"enabled": True, "token_file": str(tmp_path / "token")})
    assert main(["check-config", str(_write(tmp_path, raw))]) == 2
    err = capsys.readouterr().err
    assert "mqtt.password_file" in err and "mqtt.tls.ca_file" in err
    assert f"local_api.token_file {tmp_path / 'token'} does not exist" in err
    write_token(tmp_path / "token", 0o644)  # readable by everyone: the agent refuses to use it
    main(["check-config", str(_write(tmp_path, raw))])
    assert "too open" in capsys.readouterr().err


def test_warnings_the_agent_runs_despite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_token(tmp_path / "token")
    raw = _raw(tmp_path, local_api={"enabled": True, "token_file": str(tmp_path / "token"),
                                    "unix_socket": str(tmp_path / "run" / "api.sock")},
               devices={"finger": {"driver": "zfm", "port": "/dev/ttyUSB-kiosk-missing"}})
    assert main(["check-config", str(_write(tmp_path, raw))]) == 0
    err = capsys.readouterr().err
    assert "warning: devices.finger.port: /dev/ttyUSB-kiosk-missing does not exist" in err
    assert f"warning: local_api.unix_socket: {tmp_path / 'run'} does not exist" in err


def test_a_busy_local_api_port_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    write_token(tmp_path / "token")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        raw = _raw(tmp_path, local_api={"enabled": True, "token_file": str(tmp_path / "token"), "port": port})
        assert main(["check-config", str(_write(tmp_path, raw))]) == 0
    assert f"warning: local_api: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_an_unwritable_state_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where a folder must be: not even root creates a folder in it
    raw = _raw(tmp_path, queue={"path": str(blocker / "q" / "queue.db")})
    assert main(["check-config", str(_write(tmp_path, raw))]) == 2
    assert f"queue.path: this user (uid {os.getuid()}) cannot" in capsys.readouterr().err


def test_no_files_checks_the_file_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(tmp_path, _raw(tmp_path))
    shutil.rmtree(tmp_path / "keys")
    assert main(["check-config", str(config)]) == 2
    assert main(["check-config", "--no-files", str(config)]) == 0
    assert "files not checked" in capsys.readouterr().out


def test_operator_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shipped = ROOT / "config" / "operator.toml"
    assert main(["check-config", "--no-files", str(shipped)]) == 0
    assert "operator ada" in capsys.readouterr().out
    assert main(["check-config", str(shipped)]) == 2  # ada's key is not on this machine
    assert "operator.key" in capsys.readouterr().err
    from agent.security.keys import create_signing_key

    create_signing_key(tmp_path / "ada.key")
    mine = tmp_path / "operator.toml"
    mine.write_text(to_toml({"operator": {"name": "ada", "key": str(tmp_path / "ada.key")},
                             "mqtt": {"host": "127.0.0.1", "allow_plaintext": True}}))
    assert main(["check-config", str(mine)]) == 0
    mine.write_text(to_toml({"operator": {"name": "ada", "key": str(tmp_path / "ada.key"), "colour": 1},
                             "mqtt": {"allow_plaintext": True}}))
    assert main(["check-config", str(mine)]) == 2
    assert "operator.colour" in capsys.readouterr().err


def test_queue_stats_beside_a_running_agent_reads_without_writing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Opening the queue writes (reserve file, erasure, a damaged file moved aside): never
    beside the agent that holds the folder."""
    from agent.lock import StateLock
    from agent.transport.durable_queue import DurableQueue

    queue_path = tmp_path / "queue.db"
    queue = DurableQueue(queue_path, max_bytes=1 << 30, min_free_bytes=0)
    for i in range(3):
        queue.put(f"id{i}", "capture", lambda seq: b"z" * 100)
    queue.close()
    config = _write(tmp_path, _raw(tmp_path, kiosk={"state_dir": str(tmp_path)},
                                   queue={"path": str(queue_path), "reserve_bytes": 4096}))
    before = queue_path.stat().st_mtime_ns
    with StateLock(tmp_path):  # stands in for the running agent
        assert main(["queue", "stats", "--config", str(config), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["pending"] == 3 and stats["agent_pid"] == os.getpid()
    assert queue_path.stat().st_mtime_ns == before  # nothing written
    assert not (tmp_path / "queue.db.reserve").exists()  # opening the queue would have made it
    assert main(["queue", "stats", "--config", str(config), "--json"]) == 0  # free: opened normally
    assert json.loads(capsys.readouterr().out)["agent_pid"] is None
    # A file it cannot read is the agent's to judge: never moved aside from under it.
    for leftover in tmp_path.glob("queue.db*"):
        leftover.unlink()
    queue_path.write_bytes(b"not a database" * 100)
    with StateLock(tmp_path):
        assert main(["queue", "stats", "--config", str(config)]) == 1
    assert "while kiosk-agent pid" in capsys.readouterr().err
    assert queue_path.read_bytes() == b"not a database" * 100
    assert list(tmp_path.glob("queue.db.corrupt-*")) == []
