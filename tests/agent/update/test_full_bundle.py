"""A full bundle (the project's wheel and every dependency's, wsq compiled here) built and
installed with no shortcut: the release venv sees nothing but what the bundle carries.
It downloads OpenCV and numpy (about 90 MB) unless pip's cache has them: ~35 s here."""

from __future__ import annotations

import tarfile
from pathlib import Path

from agent.update.bundle import machine
from tests.agent.update.kiosks import Bundles, Kiosk, kiosk_agent, project_copy


def test_full_bundle_installs_offline_and_runs(kiosk: Kiosk, bundles: Bundles, tmp_path: Path) -> None:
    out = tmp_path / "full.bundle"
    src = project_copy(tmp_path / "src", "2.0.0")
    done = kiosk_agent("update", "build", "--key", str(bundles.key), "--out", str(out), "--project", str(src),
                       "--min-from", "1.0.0", cwd=tmp_path, timeout=1800)
    assert done.returncode == 0, done.stderr
    other = "aarch64" if machine() == "x86_64" else "x86_64"
    refused = kiosk_agent("update", "build", "--key", str(bundles.key), "--out", str(tmp_path / "x.bundle"),
                          "--project", str(src), "--platform", other, cwd=tmp_path, timeout=1800)
    assert refused.returncode == 1 and "wsq ships only source" in refused.stderr
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert any(n.startswith("wheels/opencv_python_headless-") for n in names)
    assert any(n.startswith("wheels/wsq-") for n in names)
    kiosk.env.pop("PYTHONPATH")  # nothing from outside the bundle
    done = kiosk.update("apply", str(out))
    assert done.returncode == 0, done.stderr
    assert kiosk.running_version() == "2.0.0" and kiosk.unit_state()[0] == "active"
