"""`kiosk-agent capture` for a person: no Python `None` in its lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main
from tests.support.config import to_toml


@pytest.mark.parametrize("device, out_name", [("camera", "face.jpg"), ("finger", "finger.png")])
def test_capture_prints_no_none(tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str,
                                out_name: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(to_toml({"kiosk": {"id": "k"}, "mqtt": {"allow_plaintext": True},
                               "devices": {"camera": {"driver": "sim-camera"},
                                           "finger": {"driver": "sim-finger"}}}))
    out = tmp_path / out_name
    assert main(["capture", device, "--config", str(config), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "None" not in text and out.exists()
    assert f"quality:        not assessed by the driver (`kiosk-agent quality {out} --modality" in text
