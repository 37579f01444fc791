"""Files the agent reads at start, as someone may have left them: a FIFO, a device.

The preflight (``check-config`` and ``run``) loaded the key files, the broker password file
and the TLS files with a plain read: a FIFO put there blocked it for good (check-config and
the unit's start hung), and a symlink to /dev/zero read until memory ran out. Each is now a
problem naming its setting, and nothing is read from it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.preflight import problems_and_warnings
from tests.support.config import agent_config


class Hung(Exception):
    pass


@pytest.fixture
def alarm() -> Iterator[None]:
    def expired(*_: object) -> None:
        raise Hung("the preflight hung on a file")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _fifo(path: Path) -> None:
    if path.exists():
        path.unlink()
    os.mkfifo(path, 0o600)


CASES: dict[str, tuple[dict[str, Any], Callable[[Path], Path], str]] = {
    "kiosk key": ({}, lambda t: t / "keys" / "kiosk.key", "security.kiosk_key"),
    "central key": ({}, lambda t: t / "keys" / "central.key.pub", "security.central_public_key"),
    "receipt key": ({}, lambda t: t / "keys" / "receipt-signing.key.pub", "security.receipt_keys"),
    "password file": ({"username": "u", "password_file": "PW"}, lambda t: t / "PW", "mqtt.password_file"),
    "TLS CA": ({"tls": {"enabled": True, "ca_file": "CA"}}, lambda t: t / "CA", "mqtt.tls.ca_file"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_fifo_in_place_of_a_file_is_a_problem_not_a_hang(tmp_path: Path, alarm: None, case: str) -> None:
    mqtt, where, setting = CASES[case]
    mqtt = {k: (str(tmp_path / v) if v in ("PW", "CA") else
                {kk: str(tmp_path / vv) if vv == "CA" else vv for kk, vv in v.items()} if isinstance(v, dict)
                else v) for k, v in mqtt.items()}
    config = agent_config(tmp_path, 1883, kiosk={"id": "kiosk-t1", "state_dir": str(tmp_path / "state")},
                          mqtt=mqtt)
    _fifo(where(tmp_path))
    problems, _ = problems_and_warnings(config)
    assert any(setting in p and "not a regular file" in p for p in problems), problems


def test_a_key_linked_to_a_device_is_a_problem(tmp_path: Path, alarm: None) -> None:
    config = agent_config(tmp_path, 1883, kiosk={"id": "kiosk-t1", "state_dir": str(tmp_path / "state")})
    key = tmp_path / "keys" / "kiosk.key"
    key.unlink()
    key.symlink_to("/dev/zero")
    problems, _ = problems_and_warnings(config)
    assert any("security.kiosk_key" in p and "not a regular file" in p for p in problems), problems


def test_regular_files_still_pass(tmp_path: Path) -> None:
    config = agent_config(tmp_path, 1883, kiosk={"id": "kiosk-t1", "state_dir": str(tmp_path / "state")})
    assert problems_and_warnings(config)[0] == []
