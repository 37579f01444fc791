from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent import __version__
from cli.main import build_parser, main
from tests.support.config import to_toml
from tests.support.paths import ROOT

COMMANDS = [["run"], ["demo"], ["receiver"], ["check-config"], ["config-schema"], ["queue"],
            ["queue", "stats"], ["keys"], ["keys", "init"], ["keys", "show"], ["keys", "enrol"],
            ["devices"], ["devices", "scan"], ["capture"], ["quality"], ["quality", "stats"],
            ["quality", "check"], ["remote"], ["update"],
            ["update", "build"], ["update", "release-key"], ["update", "apply"], ["update", "status"],
            ["update", "recover"], ["export"], ["import-receipts"],
            ["users"], ["users", "add"], ["users", "passwd"], ["users", "list"], ["users", "remove"]]


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
    out = subprocess.run([sys.executable, "-m", "cli", "--version"], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == f"kiosk-agent {__version__}"


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--count", "0"])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
    assert main(["demo", "--broker", "nonsense"]) == 2


def test_queue_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.transport.durable_queue import DurableQueue

    queue_path = tmp_path / "q.db"
    config = tmp_path / "agent.toml"
    config.write_text(to_toml({"kiosk": {"id": "k"}, "mqtt": {"allow_plaintext": True},
                               "queue": {"path": str(queue_path)}}))
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


def test_keys_init_show_enrol(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kiosk_cfg = tmp_path / "agent.toml"
    kiosk_cfg.write_text(to_toml({"kiosk": {"id": "k7"}, "mqtt": {"allow_plaintext": True},
                                  "security": {"kiosk_key": str(tmp_path / "k" / "kiosk.key")}}))
    central_cfg = tmp_path / "receiver.toml"
    central_cfg.write_text(to_toml({"mqtt": {"allow_plaintext": True},
                                    "receiver": {"central_private_key": str(tmp_path / "c" / "central.key"),
                                                 "kiosk_keys_dir": str(tmp_path / "kiosks")}}))
    assert main(["keys", "init", "--config", str(kiosk_cfg), "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["fingerprint"].startswith("SHA256:") and "BEGIN PUBLIC KEY" in created["public_key_pem"]
    assert main(["keys", "init", "--config", str(kiosk_cfg)]) == 1  # never overwrites
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["keys", "show", "--config", str(kiosk_cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fingerprint"] == created["fingerprint"]
    assert main(["keys", "init", "--central", "--config", str(central_cfg)]) == 0
    capsys.readouterr()
    assert main(["keys", "enrol", "--config", str(central_cfg), "--kiosk-id", "k7",
                 created["public_key_file"]]) == 0
    assert created["fingerprint"] in capsys.readouterr().out
    assert (tmp_path / "kiosks" / "k7.pub").exists()
    # A central (X25519) key is not a kiosk key: enrolment refuses it.
    assert main(["keys", "enrol", "--config", str(central_cfg), "--kiosk-id", "k8",
                 str(tmp_path / "c" / "central.key.pub")]) == 1
    assert "not an Ed25519 public key" in capsys.readouterr().err
    assert main(["keys", "enrol", "--config", str(central_cfg), "--kiosk-id", "a/b",
                 created["public_key_file"]]) == 2


@pytest.mark.parametrize("args", [["--help"], ["check-config", "--help"], ["queue", "--help"]])
def test_help_loads_no_image_library_nor_the_daemon(args: list[str]) -> None:
    """Helping a person costs no OpenCV, numpy or agent components: with them `--help` took
    1.5 s and 86 MB here (about 1.0 s and 51 MB without), several seconds on a Pi. A new
    process, since this one has them all loaded already."""
    code = ("import sys\nfrom cli.main import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('cv2', 'numpy', 'mediapipe', 'agent.daemon', 'receiver.service') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "usage: kiosk-agent" in out
    assert out.strip().splitlines()[-1] == "[]"
