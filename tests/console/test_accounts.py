"""Console accounts and `kiosk-agent users`: scrypt hashes in a 0600 file, lockout kept in the
file, new passwords ending sessions, passwords never on the command line; the translation
catalogues; the blocking rules' gates."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import pytest

from agent.cli import main
from agent.console import accounts as accounts_module
from agent.console.accounts import SCRYPT, AccountError, Accounts
from agent.console.i18n import LANGUAGES, catalogue, placeholders
from agent.registration.gates import AwaitingApprovalGate, CentralUnreachedGate, FreeDiskGate
from tests.support.config import to_toml


def test_password_hashed_with_scrypt_file_private_lockout_persists(tmp_path: Path) -> None:
    path = tmp_path / "state" / "users.json"
    os.umask(0o022)  # as an administrator's shell would have it
    now = [1000.0]
    accounts = Accounts(path, max_failures=3, lockout_s=60, clock=lambda: now[0])
    accounts.add("ann", "supervisor", "a long secret 1")
    raw = path.read_text()
    assert "a long secret 1" not in raw and path.stat().st_mode & 0o777 == 0o600
    entry = json.loads(raw)["users"]["ann"]
    assert entry["kdf"] == "scrypt" and entry["n"] == SCRYPT["n"] >= 2**15
    assert len(base64.b64decode(entry["salt"])) == 16
    with pytest.raises(AccountError, match="at least"):
        accounts.add("bob", "officer", "short")
    with pytest.raises(AccountError, match="user name"):
        accounts.add("Bob Smith", "officer", "long enough pass")
    with pytest.raises(AccountError, match="exists"):
        accounts.add("ann", "officer", "long enough pass")
    assert accounts.sign_in("ann", "a long secret 1").account is not None
    assert accounts.sign_in("nobody", "a long secret 1").account is None
    for _ in range(2):
        assert accounts.sign_in("ann", "wrong wrong").locked_for == 0
    assert accounts.sign_in("ann", "wrong wrong").locked_for == 60
    # Another process (a restart, the CLI) sees the lock: it is in the file.
    again = Accounts(path, max_failures=3, lockout_s=60, clock=lambda: now[0])
    result = again.sign_in("ann", "a long secret 1")
    assert result.account is None and result.locked_for == 60
    now[0] += 61
    assert again.sign_in("ann", "a long secret 1").account is not None
    # A new password unlocks and changes the stamp (sessions signed in before it end).
    stamp = again.get("ann").stamp  # type: ignore[union-attr]
    again.passwd("ann", "another secret 2")
    assert again.get("ann").stamp != stamp  # type: ignore[union-attr]
    assert again.sign_in("ann", "a long secret 1").account is None
    assert again.sign_in("ann", "another secret 2").account is not None


def test_a_name_without_an_account_fails_and_locks_exactly_like_one(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A guesser learns nothing from "locked": a name with no account locks after the same
    failures, for the same time, as a real one (before, only real names ever said "locked")."""
    now = [1000.0]
    accounts = Accounts(tmp_path / "users.json", max_failures=3, lockout_s=60, clock=lambda: now[0])
    accounts.add("ann", "officer", "a long secret 1")
    answers = {name: [accounts.sign_in(name, "wrong wrong").locked_for for _ in range(5)]
               for name in ("ann", "nobody")}
    assert answers["ann"] == answers["nobody"] == [0, 0, 60, 60, 60]
    now[0] += 61
    assert [accounts.sign_in(n, "wrong wrong").locked_for for n in ("ann", "nobody")] == [0, 0]
    # Remembered names are bounded (1,024; 8 here: each try costs a scrypt hash): a flood of
    # made-up names does not grow the process.
    monkeypatch.setattr(accounts_module, "UNKNOWN_NAMES_KEPT", 8)
    for n in range(20):
        accounts.sign_in(f"made-up-{n}", "x")
    assert len(accounts._unknown) == 8 and "made-up-19" in accounts._unknown


def _kiosk_config(tmp_path: Path) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(to_toml({"kiosk": {"id": "k1", "state_dir": str(tmp_path / "state")},
                               "mqtt": {"allow_plaintext": True}}))
    return config


def test_users_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    config = _kiosk_config(tmp_path)
    secret = tmp_path / "pw"
    secret.write_text("officer password 1\n")
    assert main(["users", "add", "olive", "--password-file", str(secret), "--config", str(config)]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("supervisor password 2\n"))
    assert main(["users", "add", "sam", "--role", "supervisor", "--password-file", "-",
                 "--config", str(config)]) == 0
    prompts = iter(["typed password 33", "typed password 33"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(prompts))
    assert main(["users", "passwd", "olive", "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["users", "list", "--json", "--config", str(config)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(u["name"], u["role"]) for u in listed] == [("olive", "officer"), ("sam", "supervisor")]
    accounts = Accounts(tmp_path / "state" / "console-users.json")
    assert accounts.sign_in("olive", "typed password 33").account is not None
    # Different passwords at the two prompts: nothing changes.
    prompts = iter(["one password 11", "another pass 22"])
    assert main(["users", "passwd", "olive", "--config", str(config)]) == 1
    assert "differ" in capsys.readouterr().err
    assert accounts.sign_in("olive", "typed password 33").account is not None
    # No way to give a password on the command line (ps and shell history would keep it).
    with pytest.raises(SystemExit) as exit_:
        main(["users", "add", "eve", "--password", "x" * 12, "--config", str(config)])
    assert exit_.value.code == 2
    assert main(["users", "remove", "olive", "--config", str(config)]) == 0
    assert main(["users", "remove", "olive", "--config", str(config)]) == 1
    assert "no user olive" in capsys.readouterr().err


def test_catalogues_have_every_message_with_the_same_placeholders() -> None:
    english = catalogue("en")
    for language in LANGUAGES:
        texts = catalogue(language)
        assert set(texts) == set(english), language
        for key, text in english.items():
            assert placeholders(texts[key]) == placeholders(text), (language, key)


def test_gates(tmp_path: Path) -> None:
    assert AwaitingApprovalGate(lambda: 1, 2).check() is None
    refusal = AwaitingApprovalGate(lambda: 2, 2).check()
    assert refusal is not None and refusal.rule == "approvals_pending"
    assert AwaitingApprovalGate(lambda: 99, 0).check() is None  # 0: off
    now = 10 * 86400.0
    assert CentralUnreachedGate(lambda: None, 7, clock=lambda: now).check() is None
    assert CentralUnreachedGate(lambda: now - 6 * 86400, 7, clock=lambda: now).check() is None
    refusal = CentralUnreachedGate(lambda: now - 8 * 86400, 7, clock=lambda: now).check()
    assert refusal is not None and "8.0 days" in refusal.message and "connect" in refusal.action
    assert FreeDiskGate(tmp_path, 1).check() is None
    refusal = FreeDiskGate(tmp_path, 2**62).check()
    assert refusal is not None and refusal.rule == "low_disk"
