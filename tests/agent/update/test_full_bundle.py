"""A full bundle (the project's wheel and every dependency's, wsq compiled here) built and
installed with no shortcut: the release venv sees nothing but what the bundle carries.
It downloads OpenCV, numpy and mediapipe unless pip's cache has them, and took 98 s here even
from the cache: it runs under KIOSK_AGENT_SOAK=1 (`make soak`), not in `make test`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from agent.update.build import NODEPS_FILE
from agent.update.bundle import LOCK, machine
from tests.agent.update.kiosks import Bundles, Kiosk, kiosk_agent, project_copy
from tests.support.faces import portrait
from tests.support.paths import ROOT

pytestmark = pytest.mark.soak_only


def test_full_bundle_installs_offline_and_runs(kiosk: Kiosk, bundles: Bundles, tmp_path: Path) -> None:
    out = tmp_path / "full.bundle"
    src = project_copy(tmp_path / "src", "2.0.0")
    shutil.copy(ROOT / NODEPS_FILE, src)  # mediapipe, bundled without its declared dependencies
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
    # The face mesh's wheels and what it needs (landmarks extra), none of what mediapipe declares
    # besides: no jax, jaxlib, matplotlib, opencv-contrib-python (requirements-nodeps.txt).
    if machine() == "x86_64" and sys.version_info < (3, 13):
        assert any(n.startswith("wheels/mediapipe-0.10.18-") for n in names)
        assert any(n.startswith("wheels/protobuf-4.") for n in names)
    unwanted = ("jax-", "jaxlib-", "matplotlib-", "opencv_contrib_python-", "sentencepiece-", "sounddevice-")
    assert [n for n in names if n.startswith(tuple(f"wheels/{u}" for u in unwanted))] == []
    lock = {line.split("==")[0] for line in _member(out, LOCK).splitlines() if line}
    assert lock == {n[len("wheels/"):].split("-")[0] for n in names if n.startswith("wheels/")}
    kiosk.env.pop("PYTHONPATH")  # nothing from outside the bundle
    done = kiosk.update("apply", str(out))
    assert done.returncode == 0, done.stderr
    assert kiosk.running_version() == "2.0.0" and kiosk.unit_state()[0] == "active"
    if any(n.startswith("wheels/mediapipe-") for n in names):
        # The release's face mesh runs on what the bundle carries, nothing of mediapipe's
        # declared dependencies among them.
        np.save(tmp_path / "portrait.npy", portrait())
        probe = ("import json, sys, numpy\n"
                 "from agent.quality import face_mesh\n"
                 f"faces = face_mesh.load_face_mesh().find(numpy.load({str(tmp_path / 'portrait.npy')!r}))\n"
                 "print(json.dumps([[len(f) for f in faces], sorted(sys.modules)]))\n")
        ran = subprocess.run([str(kiosk.root / "current" / "venv" / "bin" / "python"), "-c", probe],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path, env=kiosk.env)
        assert ran.returncode == 0, ran.stderr
        found, modules = json.loads(ran.stdout.splitlines()[-1])
        assert found == [478] and not {"jax", "matplotlib"} & set(modules)


def _member(bundle: Path, name: str) -> str:
    with tarfile.open(bundle) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read().decode()
