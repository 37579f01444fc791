"""Operator keys never belong to the kiosk: `keys init` hands only the kiosk's own key to the
service user, and the agent refuses to start (exit 2) when the service user could read an
operator's private key. Real files, real owners and modes (the tests run as root), the
real command line and a real agent process."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from agent.security import keys
from agent.security.key_access import Account, exposure
from cli.main import main
from devtools.broker import free_port
from tests.support.paths import ROOT
from tests.support.remote_kiosk import kiosk_raw

#: A real user other than root that the tests can hand files to (Debian's "nobody").
NOBODY = pwd.getpwnam("nobody")


def owner(path: Path) -> int:
    return path.stat().st_uid


def test_keys_init_hands_only_the_kiosks_own_key_to_the_service_user(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert os.geteuid() == 0, "run as root, as `sudo kiosk-agent keys init` is"
    # Older versions read the service user from here at call time; a real user stands in.
    monkeypatch.setattr(keys, "SERVICE_USER", "nobody")
    operator = tmp_path / "support" / "ada.key"
    assert main(["keys", "init", "--operator", str(operator)]) == 0
    for path in (operator.parent, operator, keys.public_path(operator)):
        assert owner(path) == 0, f"{path} was handed to the service user"
    assert operator.stat().st_mode & 0o777 == 0o600
    # The kiosk's own key goes to the configured service user, with the folder made for it...
    kiosk_key = tmp_path / "state" / "keys" / "kiosk.key"
    raw = kiosk_raw(tmp_path, 1883)
    raw["security"] = {**raw["security"], "kiosk_key": str(kiosk_key), "service_user": "nobody"}
    config = tmp_path / "agent.toml"
    config.write_text(tomli_w.dumps(raw))
    assert main(["keys", "init", "--config", str(config)]) == 0
    for path in (kiosk_key.parent, kiosk_key, keys.public_path(kiosk_key)):
        assert owner(path) == NOBODY.pw_uid, path
    # ...but never a folder that was there before (the service user could replace its files).
    etc = tmp_path / "etc"
    etc.mkdir()
    raw["security"]["kiosk_key"] = str(etc / "kiosk.key")
    config.write_text(tomli_w.dumps(raw))
    assert main(["keys", "init", "--config", str(config)]) == 0
    assert owner(etc / "kiosk.key") == NOBODY.pw_uid and owner(etc) == 0
    capsys.readouterr()


#: (owner uid, group gid, mode) of an operator's private key -> readable by the service user?
#: The service user below: uid 4242, in group 4343 (numbers no account here has).
CASES = [
    ((4242, 0, 0o600), "owned by svc"),
    ((4242, 0, 0o000), "owned by svc"),  # the owner can chmod it back at any time
    ((0, 4343, 0o640), "readable by group 4343"),
    ((0, 0, 0o604), "readable by every user"),
    ((0, 4343, 0o600), None),
    ((0, 0, 0o640), None),  # a group the service user is not in
    ((0, 0, 0o600), None),
]


@pytest.mark.parametrize("ownership, expected", CASES)
def test_exposure_is_judged_by_owner_and_mode_not_by_who_asks(
        tmp_path: Path, ownership: tuple[int, int, int], expected: str | None) -> None:
    uid, gid, mode = ownership
    path = tmp_path / "ada.key"
    keys.create_signing_key(path)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    # This process is root and could open every one of them; that is not the question.
    why = exposure(path, [Account("svc", 4242, frozenset({4242, 4343}))])
    assert (why is None) if expected is None else (why is not None and expected in why), why


def _kiosk_with_operator_key(tmp_path: Path, uid: int, gid: int, mode: int) -> Path:
    """A kiosk config whose service user is "nobody" and whose operator ada's private key
    (beside the .pub the config lists) has the given owner and mode."""
    raw = kiosk_raw(tmp_path, free_port())  # no broker: a refusing agent never needs one
    raw["security"] = {**raw["security"], "service_user": "nobody"}
    private = tmp_path / "operators" / "ada.key"
    os.chown(private, uid, gid)
    os.chmod(private, mode)
    config = tmp_path / "agent.toml"
    config.write_text(tomli_w.dumps(raw))
    return config


@pytest.mark.parametrize("uid, gid, mode", [
    (NOBODY.pw_uid, 0, 0o600),  # handed to the service user, as `keys init --operator` once did
    (0, NOBODY.pw_gid, 0o640),  # readable through the service user's group
    (0, 0, 0o644),  # readable by everyone
])
def test_the_agent_refuses_to_start_when_its_user_could_read_an_operator_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], uid: int, gid: int, mode: int) -> None:
    config = _kiosk_with_operator_key(tmp_path, uid, gid, mode)
    assert main(["check-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "remote.operators.ada.public_key" in err and str(tmp_path / "operators" / "ada.key") in err
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the agent started with an operator key its service user could read")
    assert proc.returncode == 2, stderr.decode()
    assert b"remote.operators.ada.public_key" in stderr and b"must not be readable" in stderr


@pytest.mark.parametrize("uid, gid, mode", [(0, 0, 0o600), (0, NOBODY.pw_gid, 0o600), (0, 0, 0o640)])
def test_a_root_only_operator_key_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              uid: int, gid: int, mode: int) -> None:
    config = _kiosk_with_operator_key(tmp_path, uid, gid, mode)
    assert main(["check-config", str(config)]) == 0, capsys.readouterr().err
