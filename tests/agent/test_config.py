from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import ConfigError, json_schema, load_config
from cli.main import main
from tests.support.paths import ROOT

VALID = """
[kiosk]
id = "k1"

[mqtt]
host = "broker.example"
port = 8883
allow_plaintext = true

[devices.finger]
driver = "sim-finger"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def problems_of(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ or {})
    return info.value.problems


def test_valid_config_loads_with_driver_model(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID), {})
    assert config.mqtt.port == 8883
    assert type(config.devices["finger"]).__name__ == "SimFingerConfig"


def test_state_dir_is_one_setting_resolved_once(tmp_path: Path) -> None:
    # Default: /var/lib/kiosk-agent, and every state file inside it.
    config = load_config(write(tmp_path, VALID), {})
    state = Path("/var/lib/kiosk-agent")
    assert (config.state_dir, config.queue.path) == (state, state / "queue.db")
    assert config.remote.state_dir == state / "remote"
    assert config.registration.store_path == state / "registrations.db"
    # Named: everything follows it.
    config = load_config(write(tmp_path, VALID), {"KIOSK_AGENT_KIOSK__STATE_DIR": str(tmp_path / "s")})
    assert config.queue.path == tmp_path / "s" / "queue.db"
    assert config.remote.state_dir == tmp_path / "s" / "remote"
    assert config.registration.store_path == tmp_path / "s" / "registrations.db"
    # Older files that only name the queue keep their state beside it.
    queue = str(tmp_path / "q" / "queue.db")
    config = load_config(write(tmp_path, VALID), {"KIOSK_AGENT_QUEUE__PATH": queue})
    assert config.state_dir == tmp_path / "q" and config.remote.state_dir == tmp_path / "q" / "remote"


def test_every_bad_field_is_named(tmp_path: Path) -> None:
    text = VALID.replace("port = 8883", "port = 70000\nprotocol = \"4\"")
    problems = problems_of(write(tmp_path, text))
    assert "mqtt.port: must be between 1 and 65535" in problems
    assert any(p.startswith("mqtt.protocol:") for p in problems)


def test_unknown_key_lists_known_keys(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, VALID.replace("host =", "hots =")))
    assert any(p.startswith("mqtt.hots: unknown key; known keys here:") and "host" in p for p in problems)


def test_unknown_driver_and_bad_driver_field(tmp_path: Path) -> None:
    text = VALID + '\n[devices.cam]\ndriver = "nope"\n[devices.f2]\ndriver = "sim-finger"\nbogus = 1\n'
    problems = problems_of(write(tmp_path, text))
    assert any(p.startswith("devices.cam.driver: unknown driver 'nope'") for p in problems)
    assert any(p.startswith("devices.f2.bogus: unknown key") for p in problems)


def test_missing_kiosk_id_and_bad_id(tmp_path: Path) -> None:
    assert "kiosk.id: missing; this setting is required" in problems_of(
        write(tmp_path, VALID.replace('id = "k1"', "")))
    problems = problems_of(write(tmp_path, VALID.replace('"k1"', '"a/#"')))
    assert any(p.startswith("kiosk.id: must be") for p in problems)


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "[kiosk]\nid = \n"))
    assert len(problems) == 1 and "line 2" in problems[0] and "column" in problems[0]


def test_missing_file(tmp_path: Path) -> None:
    problems = problems_of(tmp_path / "absent.toml")
    assert "file not found" in problems[0]


def test_env_overrides(tmp_path: Path) -> None:
    env = {"KIOSK_AGENT_MQTT__PORT": "1884", "KIOSK_AGENT_KIOSK__ID": "van-7",
           "KIOSK_AGENT_DEVICES__FINGER__SEED": "9", "KIOSK_AGENT_QUEUE__PATH": "/tmp/q.db"}
    config = load_config(write(tmp_path, VALID), env)
    assert (config.mqtt.port, config.kiosk.id, str(config.queue.path)) == (1884, "van-7", "/tmp/q.db")
    assert config.devices["finger"].seed == 9  # type: ignore[attr-defined]
    assert "mqtt.port: must be between 1 and 65535" in problems_of(
        write(tmp_path, VALID), {"KIOSK_AGENT_MQTT__PORT": "0"})


def test_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    text = VALID.replace('port = 8883', f'port = 8883\nusername = "u"\npassword_file = "{secret}"')
    config = load_config(write(tmp_path, text), {})
    assert config.mqtt.resolved_password() == "s3cret"


def test_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, VALID)  # its key files are not there: the file alone is valid
    assert main(["check-config", "--no-files", str(good)]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(VALID.replace("8883", "0"))
    assert main(["check-config", str(bad)]) == 2
    assert "mqtt.port: must be between 1 and 65535" in capsys.readouterr().err
    assert main(["check-config", "--json", str(bad)]) == 2
    assert json.loads(capsys.readouterr().out)["valid"] is False


@pytest.mark.parametrize("name", ["demo.toml", "office-kiosk.toml", "mobile-van.toml"])
def test_shipped_examples_are_valid(name: str) -> None:
    path = ROOT / "config" / name  # written for a kiosk: its key files are not on this machine
    assert main(["check-config", "--no-files", str(path)]) == 0


def test_receiver_config_checked_with_its_own_model(capsys: pytest.CaptureFixture[str]) -> None:
    path = ROOT / "config" / "receiver.toml"
    assert main(["check-config", "--receiver", "--no-files", str(path)]) == 0
    assert main(["check-config", "--no-files", str(path)]) == 2  # not a kiosk config: no [kiosk]
    assert "kiosk: missing" in capsys.readouterr().err


def test_schema_covers_drivers() -> None:
    schema = json_schema()
    variants = schema["properties"]["devices"]["additionalProperties"]["oneOf"]
    assert {v["title"] for v in variants} >= {"SimFingerConfig", "SimCameraConfig"}
    shipped = json.loads((ROOT / "config" / "agent.schema.json").read_text())
    assert shipped == schema, "config/agent.schema.json is stale: run `make schema`"
