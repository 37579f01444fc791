"""The updater's units: systemd-analyze verify, and the promises the updater relies on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT

UNITS = ("kiosk-agent-updater.service", "kiosk-agent-updater.path", "kiosk-agent-update-recover.service")


def test_updater_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: `make test` installs it (apt-get install systemd)"
    # verify checks that ExecStart exists: point it at this checkout's installed command.
    bin_dir = Path(sys.executable).parent
    for unit in UNITS:
        text = (ROOT / "systemd" / unit).read_text()
        text = text.replace("/opt/kiosk-agent/current/venv/bin", str(bin_dir))
        (tmp_path / unit).write_text(text)
    result = subprocess.run([analyze, "verify", *(str(tmp_path / u) for u in UNITS)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for unit in UNITS:
        assert unit not in result.stderr, result.stderr  # no warnings about our units


def test_the_updater_is_privileged_and_the_agent_is_not() -> None:
    updater = (ROOT / "systemd" / "kiosk-agent-updater.service").read_text()
    assert "User=" not in updater and "ReadWritePaths=/opt/kiosk-agent /var/lib/kiosk-agent" in updater
    assert "update apply --pending" in updater
    path = (ROOT / "systemd" / "kiosk-agent-updater.path").read_text()
    assert "PathExists=/var/lib/kiosk-agent/updates/pending.json" in path  # agent/update/spool.py
    # verify does not check that the started unit exists: this does.
    assert "\nUnit=kiosk-agent-updater.service\n" in path
    recover = (ROOT / "systemd" / "kiosk-agent-update-recover.service").read_text()
    assert "Before=kiosk-agent.service" in recover and "update recover" in recover
    agent = (ROOT / "systemd" / "kiosk-agent.service").read_text()
    assert "ProtectSystem=strict" in agent and "User=kiosk" in agent
