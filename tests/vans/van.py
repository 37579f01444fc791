"""A van that registered people offline: a real agent with simulated devices ran a whole
registration through the local API with no broker reachable, so its queue holds the sealed
captures and the manifest. Made once per test module (the registration takes seconds) and
copied for each test, with the configs the command line reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from agent.config import validate_config
from agent.daemon import Agent
from agent.security.keys import RECEIPT_KEY_NAME, provision
from cli.main import main
from devtools.broker import free_port
from tests.support.config import to_toml
from tests.support.local_api import Api, local_api_section

KIOSK = "van-07"
APPLICANT = "APP-VAN-0042"


def kiosk_raw(root: Path, port: int) -> dict[str, Any]:
    keys = root / "keys"
    return {
        "kiosk": {"id": KIOSK, "site": "Mobile unit 7", "state_dir": str(root / "state")},
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.1, "reconnect_max_s": 1.0,
                 "receipt_timeout_s": 5.0, "allow_plaintext": True},
        "security": {"kiosk_key": str(keys / "kiosk.key"),
                     "central_public_key": str(keys / "central.key.pub"),
                     "receipt_keys": [str(keys / f"{RECEIPT_KEY_NAME}.pub")]},
        "queue": {"path": str(root / "state" / "queue.db"), "min_free_bytes": 0},
        "capture": {"mode": "on-demand"},
        "devices": {"finger": {"driver": "sim-finger", "seed": 11},
                    "camera": {"driver": "sim-camera", "seed": 2}},
        "registration": {"max_attempts": 3},
        "local_api": local_api_section(root),
    }


def receiver_raw(root: Path, out: Path, port: int, name: str = "office-1") -> dict[str, Any]:
    keys = root / "keys"
    return {"mqtt": {"host": "127.0.0.1", "port": port, "allow_plaintext": True},
            "receiver": {"output_dir": str(out), "name": name,
                         "central_private_key": str(keys / "central.key"),
                         "receipt_signing_key": str(keys / RECEIPT_KEY_NAME),
                         "kiosk_keys_dir": str(keys / "kiosks")}}


#: Where the template's registration was taken (the emulated receiver's fix).
WHERE = (-1.2921, 36.8219)
#: What the template's queue holds: ten fingers, the face and its token image, and the manifest.
ITEMS = 13


def make_template(root: Path) -> str:
    """Keys, and a queue holding one whole registration taken offline, with a GNSS fix; its id."""
    from tests.emulators.nmea import NmeaEmulator
    from tests.support.waiting import wait_until

    provision(root / "keys", KIOSK)
    raw = kiosk_raw(root, free_port())  # nothing listens there
    with NmeaEmulator() as gps:
        gps.fix(*WHERE)
        raw["position"] = {"source": "nmea", "port": gps.path}
        agent = Agent(validate_config(raw, "van"))
        agent.start()
        try:
            wait_until(lambda: agent.position is not None and agent.position.current()[0] is not None,
                       what="a GNSS fix")
            return _register(agent)
        finally:
            agent.stop()


def _register(agent: Agent) -> str:
    """One whole registration through the local API, as the registration app runs it."""
    api = Api.for_agent(agent)
    sid = api.ok("POST", "/v1/sessions", {"applicant_ref": APPLICANT, "operator_id": "officer-1182"})["id"]
    while api.ok("GET", f"/v1/sessions/{sid}")["next"] is not None:
        api.ok("POST", f"/v1/sessions/{sid}/capture")
    assert api.ok("POST", f"/v1/sessions/{sid}/complete")["state"] == "completed"
    return sid


class Van:
    """One test's copy of the van, with its config files and the drive and central folders."""

    def __init__(self, template: Path, tmp_path: Path, registration_id: str) -> None:
        self.root = tmp_path / "van"
        shutil.copytree(template, self.root)
        self.registration_id = registration_id
        self.port = free_port()
        self.drive = tmp_path / "drive"
        self.drive.mkdir()
        self.out = tmp_path / "central"
        self.config = self.root / "agent.toml"
        self.config.write_text(to_toml(kiosk_raw(self.root, self.port)))
        self.central = tmp_path / "receiver.toml"
        self.central.write_text(to_toml(receiver_raw(self.root, self.out, self.port)))

    @property
    def folder(self) -> Path:
        return self.drive / "kiosk-media" / KIOSK

    def items(self) -> list[Path]:
        return sorted((self.folder / "items").glob("*.kas"))

    def agent_config(self, port: int | None = None):  # type: ignore[no-untyped-def]
        return validate_config(kiosk_raw(self.root, port or self.port), "van")


def run(capsys: Any, *args: str) -> tuple[int, dict[str, Any], str]:
    """``kiosk-agent ARGS --json``: exit code, the JSON summary, stderr."""
    code = main([*args, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def export(van: Van, capsys: Any, drive: Path | None = None) -> tuple[int, dict[str, Any], str]:
    return run(capsys, "export", "--config", str(van.config), "--to", str(drive or van.drive))


def central_import(van: Van, capsys: Any, drive: Path | None = None) -> tuple[int, dict[str, Any], str]:
    return run(capsys, "receiver", "import", str(drive or van.drive), "--config", str(van.central))


def import_receipts(van: Van, capsys: Any, drive: Path | None = None) -> tuple[int, dict[str, Any], str]:
    return run(capsys, "import-receipts", str(drive or van.drive), "--config", str(van.config))
