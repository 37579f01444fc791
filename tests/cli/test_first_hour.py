"""README.md's "The first hour", as a newcomer runs it: `kiosk-agent demo --api`, then one
registration through the local API with the token it wrote, ending as a complete
ANSI/NIST transaction on the receiver's side; Ctrl-C ends the demo with exit 0."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.local_api import Api
from tests.support.paths import ROOT
from tests.support.waiting import wait_until


def test_demo_api_serves_a_whole_registration(tmp_path: Path) -> None:
    work, err = tmp_path / "demo", tmp_path / "err.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with err.open("wb") as err_file:
        command = [sys.executable, "-m", "cli", "demo", "--api", "0", "--dir", str(work), "--json"]
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err_file)
    try:
        wait_until(lambda: "local API: " in err.read_text(), timeout_s=60, what="the demo's local API")
        address = re.search(r"local API: (http://127\.0\.0\.1:\d+)", err.read_text())
        assert address is not None, err.read_text()
        api = Api(address.group(1), (work / "api-token").read_text().strip())
        status, session = api.call("POST", "/v1/sessions", {"applicant_ref": "APP-1", "operator_id": "op-1"})
        assert status == 201, session
        while session.get("next"):
            status, done = api.call("POST", f"/v1/sessions/{session['id']}/capture")
            assert status == 200, done
            status, session = api.call("GET", f"/v1/sessions/{session['id']}")
        status, closed = api.call("POST", f"/v1/sessions/{session['id']}/complete")
        assert status == 200 and closed["state"] == "completed", closed
        registrations = work / "received" / "demo-kiosk" / "registrations"
        wait_until(lambda: (registrations / f"{session['id']}.complete.json").exists(), timeout_s=60,
                   what="the receiver's complete registration")
        assert (registrations / f"{session['id']}.an2").stat().st_size > 0
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.read_text()
    summary = json.loads(out)
    assert summary["captured"] >= 11 and summary["lost"] == 0 and summary["interrupted"] == "SIGINT"
