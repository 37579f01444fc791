"""`kiosk-agent demo` stopped part-way, as a terminal's Ctrl-C or systemd's SIGTERM stops it:
the private broker outlives the agent (its own process group), the temporary folders go, a
summary comes out, and captures still queued are counted as queued, not lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.paths import ROOT
from tests.support.waiting import wait_until


def _processes_under(folder: Path) -> list[int]:
    """Live processes whose command line names ``folder`` (the private mosquitto's config)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(folder).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("sig, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c to the terminal's group", "sigterm"])
def test_demo_stops_cleanly(tmp_path: Path, sig: signal.Signals, to_group: bool) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    err = tmp_path / "err.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(scratch))
    with err.open("wb") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "demo", "--count", "100000", "--rate", "20",
                                 "--json"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err_file,
                                start_new_session=True)  # its own group, as a shell's job
    try:
        wait_until(lambda: "captured " in err.read_text(), timeout_s=60, what="the demo's first progress")
        assert _processes_under(scratch), "the demo's private mosquitto is not running"
        time.sleep(0.5)
        if to_group:
            os.killpg(proc.pid, sig)  # what Ctrl-C does: the whole foreground group
        else:
            proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + sig, err.read_text()
    summary = json.loads(out)
    assert summary["interrupted"] == sig.name and summary["complete"] is False
    assert summary["captured"] > 0 and summary["lost"] == 0
    assert summary["acknowledged"] + summary["queued"] == summary["captured"]
    assert f"{sig.name}: stopping the agent, then the receiver, then the broker" in err.read_text()
    assert "Traceback" not in err.read_text()
    assert list(scratch.iterdir()) == []  # the demo's folder and the broker's, removed
    assert _processes_under(scratch) == []


def test_summary_line_says_queued_captures_are_not_lost() -> None:
    from devtools.demo import _summary_line

    line = _summary_line({"captured": 10, "acknowledged": 7, "queued": 3, "lost": 0,
                          "duplicates_seen_by_receiver": 0, "seconds": 2.0, "captures_per_s": 5.0,
                          "interrupted": "SIGINT", "kept_in": None})
    assert line.startswith("stopped by SIGINT: captured 10, acknowledged 7, queued 3, lost 0")
    assert "the 3 queued captures were not lost: discarded with the temporary folder" in line
