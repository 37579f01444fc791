"""`kiosk-agent devices`, `devices scan` and `capture`, against the wire-level emulators and the
simulators. None of them needs keys or a broker: the configs here point at key files that
do not exist."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from cli.main import main
from drivers import serial_scan
from drivers.png_phys import read_phys
from tests.emulators.gt521f import Gt521fEmulator
from tests.emulators.zfm import ZfmEmulator
from tests.support.config import to_toml
from tests.support.faces import SMILE_ALLOWED, portrait

FAST: dict[str, Any] = {"poll_interval_s": 0.002, "probe_timeout_s": 0.05, "reply_timeout_s": 0.15}


@pytest.fixture
def zfm() -> Iterator[ZfmEmulator]:
    with ZfmEmulator() as emu:
        yield emu


@pytest.fixture
def gt() -> Iterator[Gt521fEmulator]:
    with Gt521fEmulator(capacity=200) as emu:
        yield emu


@pytest.fixture(autouse=True)
def no_default_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the ports a test names: a developer's real /dev/ttyUSB0 is not part of the test.
    monkeypatch.setattr(serial_scan, "DEFAULT_PATTERNS", ())


def write_config(tmp_path: Path, devices: dict[str, Any], **sections: Any) -> Path:
    raw = {"kiosk": {"id": "k1"}, "mqtt": {"allow_plaintext": True},
           "security": {"kiosk_key": str(tmp_path / "missing.key"),
                        "central_public_key": str(tmp_path / "missing.pub")},
           "capture": {"max_attempts": 2}, **sections, "devices": devices}
    path = tmp_path / "agent.toml"
    path.write_text(to_toml(raw))
    return path


def read_png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize("args", [["devices"], ["devices", "scan"], ["capture"]], ids=" ".join)
def test_help(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--help"])
    assert exit_info.value.code == 0
    assert "usage: kiosk-agent " + " ".join(args) in capsys.readouterr().out


def test_devices_lists_states(tmp_path: Path, zfm: ZfmEmulator, gt: Gt521fEmulator,
                              capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, {
        "finger": {"driver": "zfm", "port": zfm.port, **FAST},
        "finger2": {"driver": "gt521f", "port": gt.port, **FAST},
        "sim": {"driver": "sim-finger"},
        "gone": {"driver": "zfm", "port": str(tmp_path / "ttyUSB7"), **FAST},
        "spare": {"driver": "zfm", "port": "/dev/ttyUSB9", "enabled": False},
    })
    assert main(["devices", "--config", str(config), "--json"]) == 1  # "gone" is offline
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["devices"]}
    assert rows["finger"]["state"] == "online" and rows["finger"]["model"] == "ZFM-EMU"
    assert rows["finger2"]["state"] == "online" and rows["finger2"]["model"] == "GT-521F32"
    assert rows["sim"]["state"] == "online" and rows["sim"]["modality"] == "finger"
    assert rows["gone"]["state"] == "offline" and "not there" in rows["gone"]["error"]
    assert rows["spare"]["state"] == "disabled"
    # Probing is read-only: no image taken, no LED switched, no baud changed.
    assert "GenImg" not in zfm.commands
    assert gt.led_log == [] and gt.baud == 9600

    assert main(["devices", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "finger       zfm         online   ZFM-EMU serial EMU00000 on " + zfm.port in out


def test_devices_with_a_wrong_password_is_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ZfmEmulator(password=99) as emu:
        config = write_config(tmp_path, {"finger": {"driver": "zfm", "port": emu.port, **FAST}})
        assert main(["devices", "--config", str(config), "--json"]) == 1
    row = json.loads(capsys.readouterr().out)["devices"][0]
    assert row["state"] == "failed" and "devices.finger.password" in row["error"]


def test_devices_scan_finds_both_families(tmp_path: Path, zfm: ZfmEmulator, gt: Gt521fEmulator,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, {"finger": {"driver": "zfm", "port": zfm.port}})
    code = main(["devices", "scan", "--config", str(config), "--port", gt.port, "--port", "loop://",
                 "--probe-timeout", "0.05", "--json"])
    assert code == 0
    ports = {r["port"]: r for r in json.loads(capsys.readouterr().out)["ports"]}
    assert ports[zfm.port]["driver"] == "zfm" and ports[zfm.port]["serial"] == "EMU00000"
    assert ports[gt.port]["driver"] == "gt521f" and ports[gt.port]["model"] == "GT-521F32"
    assert ports["loop://"]["found"] is False and "no ZFM" in ports["loop://"]["error"]
    assert gt.led_log == [] and "GenImg" not in zfm.commands

    assert main(["devices", "--json", "scan", "--port", zfm.port, "--probe-timeout", "0.05"]) == 0
    assert json.loads(capsys.readouterr().out)["ports"][0]["driver"] == "zfm"
    assert main(["devices", "scan", "--port", gt.port, "--probe-timeout", "0.05"]) == 0
    assert f"{gt.port}: gt521f GT-521F32 serial " in capsys.readouterr().out


def test_capture_zfm_writes_a_grey_png_with_its_resolution(tmp_path: Path, zfm: ZfmEmulator,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, {"finger": {"driver": "zfm", "port": zfm.port, **FAST}})
    out = tmp_path / "print.png"
    assert main(["capture", "finger", "--config", str(config), "--out", str(out), "--json",
                 "--position", "3"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert (meta["width"], meta["height"], meta["ppi"], meta["position"]) == (256, 288, 500, 3)
    assert meta["model"] == "ZFM-EMU" and meta["bytes"] == out.stat().st_size
    pixels = read_png(out)
    assert pixels.dtype == np.uint8 and pixels.ndim == 2
    assert np.array_equal(pixels, zfm.expected_image())
    assert read_phys(out.read_bytes()) == (19685, 19685, 1)  # 500 ppi in pixels per metre


def test_capture_gt521f(tmp_path: Path, gt: Gt521fEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, {"finger": {"driver": "gt521f", "port": gt.port, **FAST}})
    out = tmp_path / "print.png"
    assert main(["capture", "finger", "--config", str(config), "--out", str(out)]) == 0
    assert "ppi:            450" in capsys.readouterr().out
    assert np.array_equal(read_png(out), gt.image)
    assert read_phys(out.read_bytes()) == (17717, 17717, 1)
    assert not gt.led


def test_capture_simulated_devices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, {"finger": {"driver": "sim-finger", "width": 128, "height": 160},
                                     "face": {"driver": "sim-camera"}})
    out = tmp_path / "sim.png"
    assert main(["capture", "finger", "--config", str(config), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ppi"] == 500
    assert read_png(out).shape == (160, 128) and read_phys(out.read_bytes()) == (19685, 19685, 1)
    jpeg = tmp_path / "face.jpg"
    assert main(["capture", "face", "--config", str(config), "--out", str(jpeg), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["format"] == "jpeg" and jpeg.read_bytes()[:2] == b"\xff\xd8"  # as the camera gave it


def test_capture_from_a_camera_is_judged_with_the_configs_thresholds(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    still = tmp_path / "portrait.png"
    cv2.imwrite(str(still), portrait())
    camera = {"driver": "opencv", "source": str(still), "warmup_frames": 0}
    face = {"min_eye_distance_px": 200, **SMILE_ALLOWED}  # she smiles: tests/support/faces.py
    config = write_config(tmp_path, {"camera": camera}, quality={"face": face})
    out = tmp_path / "face.jpg"
    assert main(["capture", "camera", "--config", str(config), "--out", str(out), "--json"]) == 0
    detail = json.loads(capsys.readouterr().out)["quality_detail"]
    assert [c["name"] for c in detail["checks"] if not c["passed"]] == ["eye_distance"]
    assert detail["token_image"] is True and "judged" not in detail


def test_capture_no_finger_exits_1_with_the_hint(tmp_path: Path, zfm: ZfmEmulator,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    zfm.inject(no_finger=10**6)
    config = write_config(tmp_path, {"finger": {"driver": "zfm", "port": zfm.port, **FAST}})
    out = tmp_path / "print.png"
    assert main(["capture", "finger", "--config", str(config), "--out", str(out), "--timeout", "0.05"]) == 1
    err = capsys.readouterr().err
    assert "attempt 2/2: no finger (tell the person: place your finger" in err
    assert not out.exists()


def test_capture_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, {"finger": {"driver": "zfm", "port": str(tmp_path / "nope"), **FAST}})
    assert main(["capture", "thumb", "--config", str(config), "--out", str(tmp_path / "x.png")]) == 2
    assert "no device 'thumb' in the config; configured: finger" in capsys.readouterr().err
    assert main(["capture", "finger", "--config", str(config), "--out", str(tmp_path / "x.png")]) == 1
    assert "is not there" in capsys.readouterr().err


def test_a_port_the_agent_holds_is_reported_busy(tmp_path: Path, zfm: ZfmEmulator,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from drivers.zfm import ZfmConfig, ZfmDriver

    holder = ZfmDriver("finger", ZfmConfig(port=zfm.port, **FAST))
    holder.open()
    try:
        assert main(["devices", "scan", "--port", zfm.port, "--probe-timeout", "0.05", "--json"]) == 0
    finally:
        holder.close()
    result = json.loads(capsys.readouterr().out)["ports"][0]
    assert result["found"] is False and "busy" in result["error"]
    assert zfm.commands.count("VfyPwd") == 1  # the holder's; the scan sent nothing
