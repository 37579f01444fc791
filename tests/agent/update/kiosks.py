"""Fixtures for the updater: release keys, real bundles of this project at other versions, a
release tree in a temporary root, and the systemctl stand-in that runs real agent processes.

The shortcut, stated plainly: the bundles these tests build carry the project's own wheel
only (``update build --system-dependencies``), and the release venvs are created with
``--system-site-packages``. The dependencies (numpy, OpenCV, pydantic, ...) reach them through
PYTHONPATH: a folder of symlinks to this checkout's .venv site-packages, minus the project
itself, standing in for the system's site-packages. Everything else is real: pip builds the
wheels, the updater creates venvs, pip installs offline with --require-hashes, and the agent
runs from releases/<version>/venv. A full bundle with every dependency's wheel is built and
installed only under KIOSK_AGENT_SOAK=1 (test_full_bundle.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.transport.durable_queue import SCHEMA_VERSION
from tests.support.paths import ROOT
from tests.support.processes import write_config

STANDIN = Path(__file__).with_name("systemctl_standin.py")
SOURCES = ("agent", "drivers", "receiver", "devtools", "cli")


def project_copy(dest: Path, version: str, *, broken_run: bool = False, queue_schema: int = 0) -> Path:
    """This project's source at another version; ``broken_run`` makes `run` exit at once
    (a release that installs and passes its config check but never becomes ready);
    ``queue_schema`` changes the queue's schema number."""
    dest.mkdir(parents=True)
    for name in SOURCES:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "README.md", dest)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'version = "0.1.0"' in pyproject
    (dest / "pyproject.toml").write_text(pyproject.replace('version = "0.1.0"', f'version = "{version}"', 1))
    if broken_run:
        cli = dest / "agent" / "cli.py"
        text = cli.read_text()
        marker = "def cmd_run(args: argparse.Namespace) -> int:\n"
        assert marker in text
        cli.write_text(text.replace(marker, marker + "    raise SystemExit(1)\n", 1))
    if queue_schema:
        queue = dest / "agent" / "transport" / "queue_schema.py"
        text = queue.read_text()
        current = f"\nSCHEMA_VERSION = {SCHEMA_VERSION}\n"
        assert current in text
        queue.write_text(text.replace(current, f"\nSCHEMA_VERSION = {queue_schema}\n", 1))
    return dest


def kiosk_agent(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
                cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd or ROOT)


@pytest.fixture(scope="session")
def deps_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in for the system's site-packages: the dependencies, not the project."""
    site = Path(next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix)))
    dest = tmp_path_factory.mktemp("deps-site")
    for entry in site.iterdir():
        name = entry.name.lower()
        # pip stays: Debian's python3-pip, which release venvs then use (agent/update/updater.py).
        if name.startswith(("kiosk_agent", "__editable__", "setuptools", "_distutils_hack",
                            "distutils-precedence")):
            continue
        (dest / entry.name).symlink_to(entry)
    return dest



@dataclass
class Bundles:
    key: Path
    other_key: Path
    dir: Path

    def __getitem__(self, name: str) -> Path:
        return self.dir / f"{name}.bundle"


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    """Bundles of 1.0.0, 1.1.0, 1.3.0 (good; from 1.1.0 on), 1.2.0 (never ready), 1.1.0 signed by
    an unknown key, 1.2.5 (a new queue schema, not declared reversible)."""
    base = tmp_path_factory.mktemp("bundles")
    key, other = base / "release.key", base / "stranger.key"
    for k in (key, other):
        done = kiosk_agent("update", "release-key", str(k))
        assert done.returncode == 0, done.stderr
    built = Bundles(key, other, base)
    for name, version, signer, broken, min_from in (
            ("v1", "1.0.0", key, False, "1.0.0"), ("v2", "1.1.0", key, False, "1.0.0"),
            ("bad", "1.2.0", key, True, "1.0.0"), ("v3", "1.3.0", key, False, "1.1.0"),
            ("stranger", "1.1.0", other, False, "1.0.0"), ("schema", "1.2.5", key, False, "1.0.0")):
        src = project_copy(base / f"src-{name}", version, broken_run=broken,
                           queue_schema=SCHEMA_VERSION + 1 if name == "schema" else 0)
        done = kiosk_agent("update", "build", "--key", str(signer), "--out", str(built[name]),
                           "--project", str(src), "--system-dependencies", "--min-from", min_from,
                           cwd=base)
        assert done.returncode == 0, done.stderr
    return built


@dataclass
class Kiosk:
    root: Path  # the release tree (DESTDIR/opt/kiosk-agent)
    config: Path
    unit: Path
    env: dict[str, str]
    systemctl: Path
    port: int = 0  # the broker's

    def update(self, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if kill_at:
            env["KIOSK_AGENT_UPDATE_KILL_AT"] = kill_at
        extra = ["--systemctl", str(self.systemctl)] if args[0] != "status" else []
        return kiosk_agent("update", *args, "--config", str(self.config), "--root", str(self.root), *extra,
                           env=env)

    def status(self) -> dict:
        done = self.update("status", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def unit_state(self) -> tuple[str, str]:
        done = subprocess.run([str(self.systemctl), "show", "-p", "ActiveState", "-p", "StatusText", "x"],
                              capture_output=True, text=True, env=self.env, check=True)
        fields = dict(line.split("=", 1) for line in done.stdout.splitlines())
        return fields["ActiveState"], fields["StatusText"]

    def running_version(self) -> str:
        """The version the unit's command runs now, asked of the release ``current`` names."""
        python = self.root / "current" / "venv" / "bin" / "python"
        done = subprocess.run([str(python), "-c", "import agent; print(agent.__version__)"],
                              capture_output=True, text=True, env=self.env, cwd=self.unit, check=True)
        return done.stdout.strip()


@pytest.fixture
def kiosk(tmp_path: Path, broker, deps_site: Path, bundles: Bundles) -> Iterator[Kiosk]:
    root = tmp_path / "destdir" / "opt" / "kiosk-agent"
    unit = tmp_path / "unit"
    unit.mkdir()
    config = write_config(tmp_path, broker.port, kiosk_id="kiosk-u1", mode="on-demand")
    with config.open("a") as f:
        f.write(f'\n[update]\nrelease_keys = ["{bundles.key}.pub"]\nhealth_timeout_s = 20\n'
                f'root = "{root}"\n'
                # The updater's outcome is announced on a telemetry turn: soon, in tests.
                '[telemetry]\ninterval_s = 0.5\n')
    (unit / "exec.json").write_text(json.dumps({
        "argv": [str(root / "current" / "venv" / "bin" / "python"), "-m", "cli", "run",
                 "--config", str(config)],
        "cwd": str(unit)}))
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(f"#!/bin/sh\nexec {sys.executable} {STANDIN} \"$@\"\n")
    systemctl.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(deps_site), "STANDIN_UNIT_DIR": str(unit)}
    env.pop("KIOSK_AGENT_CONFIG", None)
    k = Kiosk(root, config, unit, env, systemctl, broker.port)
    try:
        yield k
    finally:
        subprocess.run([str(systemctl), "stop", "x"], env=env, timeout=60)


class EventWatcher:
    """An operator's view of the kiosk's events and telemetry topics, on the real broker."""

    def __init__(self, kiosk: Kiosk) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._lock = threading.Lock()
        self._seen: list[tuple[str, dict]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", kiosk.port)
        self.client.subscribe([("kiosk/kiosk-u1/events", 1), ("kiosk/kiosk-u1/telemetry", 1)])
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self._seen.append((message.topic.rsplit("/", 1)[-1], json.loads(message.payload)))

    def seen(self, leaf: str) -> list[dict]:
        with self._lock:
            return [body for topic, body in self._seen if topic == leaf]

    def wait(self, predicate: Callable[[dict], bool], leaf: str = "events", timeout_s: float = 30) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            matches = [body for body in self.seen(leaf) if predicate(body)]
            if matches:
                return matches[0]
            time.sleep(0.1)
        raise AssertionError(f"no matching message on {leaf} within {timeout_s} s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
