"""Console accounts and `kiosk-agent users`: scrypt hashes in a 0600 file, lockout kept in the
file, new passwords ending sessions, passwords never on the command line; the translation
catalogues; the blocking rules' gates."""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import pwd
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import ConfigError, validate_config
from agent.console import accounts as accounts_module
from agent.console.accounts import SCRYPT, AccountError, Accounts
from agent.console.i18n import LANGUAGES, catalogue, placeholders
from agent.registration.gates import AwaitingApprovalGate, CentralUnreachedGate, FreeDiskGate
from agent.remote.audit import RemoteStore
from tests.support.config import to_toml
from tests.support.paths import ROOT


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
    # Run under sudo: the audit names who ran sudo (root's word only: anyone else could set it).
    monkeypatch.setenv("SUDO_USER", "amina")
    assert main(["users", "remove", "sam", "--config", str(config)]) == 0
    me = f"cli:{pwd.getpwuid(os.getuid()).pw_name}"
    via_sudo = "cli:amina" if os.geteuid() == 0 else me

    # Every change, and every refused one, in the audit log the console writes to, with who
    # ran it; never a password. Listing is not a change.
    # Remote management is on (the default): the agent's audit log, where the console writes too.
    log = tmp_path / "state" / "remote" / "remote.db"
    store = RemoteStore(log)
    rows = [(e["operator"], e["command"], e["args"], e["result"]) for e in reversed(store.recent_audit(50))]
    store.close()
    assert rows == [
        (me, "users.add", {"name": "olive", "role": "officer"}, "ok"),
        (me, "users.add", {"name": "sam", "role": "supervisor"}, "ok"),
        (me, "users.passwd", {"name": "olive"}, "ok"),
        (me, "users.passwd", {"name": "olive"}, "error"),
        (me, "users.remove", {"name": "olive"}, "ok"),
        (me, "users.remove", {"name": "olive"}, "error"),
        (via_sudo, "users.remove", {"name": "sam"}, "ok"),
    ]
    raw = b"".join(f.read_bytes() for f in log.parent.glob("remote.db*"))
    for password in ("officer password 1", "supervisor password 2", "typed password 33", "another pass 22"):
        assert password.encode() not in raw


def test_users_cli_refuses_when_the_audit_cannot_be_written(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = _kiosk_config(tmp_path)
    (tmp_path / "state" / "remote" / "remote.db").mkdir(parents=True)  # not a database: cannot be opened
    secret = tmp_path / "pw"
    secret.write_text("officer password 1\n")
    assert main(["users", "add", "olive", "--password-file", str(secret), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "cannot open the audit log" in err and "nothing was changed" in err
    assert Accounts(tmp_path / "state" / "console-users.json").list() == []


def test_approval_required_with_the_console_off_is_refused(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Only the console approves: "required" without it would hold every registration for ever."""
    base = {"kiosk": {"id": "k1", "state_dir": str(tmp_path / "state")}, "mqtt": {"allow_plaintext": True}}
    with pytest.raises(ConfigError) as refused:
        validate_config(base | {"console": {"approval": "required"}}, "agent.toml")
    [problem] = refused.value.problems
    assert 'approval = "required" needs enabled = true' in problem and "console.enabled = true" in problem
    assert 'console.approval = "off"' in problem
    validate_config(base | {"console": {"approval": "required", "enabled": True}}, "agent.toml")
    validate_config(base | {"console": {"approval": "off"}}, "agent.toml")
    config = tmp_path / "agent.toml"
    config.write_text(to_toml(base | {"console": {"approval": "required"}}))
    assert main(["check-config", str(config), "--no-files"]) == 2
    assert "console.enabled = true" in capsys.readouterr().err


def test_catalogues_have_every_message_with_the_same_placeholders() -> None:
    english = catalogue("en")
    for language in LANGUAGES:
        texts = catalogue(language)
        assert set(texts) == set(english), language
        for key, text in english.items():
            assert placeholders(texts[key]) == placeholders(text), (language, key)


def gate_rule_ids() -> set[str]:
    """Every rule id a gate in the agent can refuse with: each class with a ``check`` method
    and a literal ``rule``, and every ``Refusal("...")`` with a literal id, found in the
    source itself, so a gate added anywhere later is covered without this list changing."""
    found: set[str] = set()
    for path in (ROOT / "agent").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                for stmt in node.body:
                    if ("check" in methods and isinstance(stmt, ast.Assign)
                            and any(isinstance(t, ast.Name) and t.id == "rule" for t in stmt.targets)
                            and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)):
                        found.add(stmt.value.value)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Refusal"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                found.add(node.args[0].value)
    return found


def test_every_rule_a_gate_can_refuse_with_has_a_title_in_every_catalogue() -> None:
    rules = gate_rule_ids()
    # The scan itself must find the gates it is meant to (the console's, the clock's, the area's).
    assert {"approvals_pending", "central_unreached", "low_disk", "clock_wrong", "outside_area"} <= rules
    for language in LANGUAGES:
        texts = catalogue(language)
        missing = sorted(r for r in rules if not texts.get(f"rule.{r}", "").strip())
        assert not missing, f"{language}.json has no title for rule(s) {missing}"
        # And no title for a rule no gate has (one left over from a renamed rule).
        unused = sorted(k for k in texts if k.startswith("rule.") and k[5:] not in rules | {"title", "do"})
        assert not unused, f"{language}.json has titles for rules no gate emits: {unused}"


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
