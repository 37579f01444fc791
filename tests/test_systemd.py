"""systemd integration: the notify protocol on a real datagram socket, the units, the install."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.daemon import Agent
from devtools.broker import MosquittoBroker
from tests.support.config import agent_config
from tests.support.waiting import wait_until

ROOT = Path(__file__).parent.parent


class NotifySocket:
    """What systemd would listen on: a Unix datagram socket collecting messages."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[str] = []

    def collect(self, seconds: float) -> list[str]:
        """Messages (one line each) received during the next ``seconds``."""
        got: list[str] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                got += self.sock.recv(4096).decode().splitlines()
            except TimeoutError:
                continue
        self.messages += got
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    path = tmp_path / "notify.sock"
    sock = NotifySocket(path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # 0.4 s: pings every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    yield sock
    sock.close()


def test_ready_status_watchdog_and_no_watchdog_when_hung(
        tmp_path: Path, broker: MosquittoBroker, notify: NotifySocket) -> None:
    agent = Agent(agent_config(tmp_path, broker.port, capture={"mode": "on-demand"}))
    stop = threading.Event()
    supervisor = threading.Thread(target=agent.supervise, args=(stop,), name="test-supervisor")
    release = threading.Event()
    try:
        agent.start()
        supervisor.start()
        wait_until(lambda: agent.link is not None and agent.link.connected, what="connected")
        first = notify.collect(1.0)
        assert "READY=1" in notify.messages
        assert any(m.startswith("STATUS=") and "finger online" in m for m in notify.messages)
        assert first.count("WATCHDOG=1") >= 3
        assert any(m.startswith("STATUS=connected;") for m in notify.messages)

        # Hang the MQTT loop: its work step blocks. The watchdog pings must stop.
        assert agent.publisher is not None
        agent.publisher.tick = lambda link: release.wait(30)  # type: ignore[method-assign]
        notify.collect(0.5)  # let the heartbeat go stale (0.2 s)
        assert "WATCHDOG=1" not in notify.collect(1.5)

        release.set()
        assert "WATCHDOG=1" in notify.collect(1.0), "pings resume once the loop turns again"
    finally:
        release.set()
        stop.set()
        if supervisor.is_alive():
            supervisor.join()
        agent.stop()
    assert "STOPPING=1" in notify.collect(0.3)


def test_no_notify_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.sd_notify import Notifier

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled and notifier.ready("x") is False
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_s == 30.0


@pytest.mark.parametrize("unit", ["kiosk-agent.service", "kiosk-agent-receiver.service"])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, unit: str) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: `make test` installs it (apt-get install systemd)"
    # verify checks that ExecStart exists: point it at this checkout's installed command.
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "kiosk-agent").exists()
    text = (ROOT / "systemd" / unit).read_text().replace("/opt/kiosk-agent/bin", str(bin_dir))
    (tmp_path / unit).write_text(text)
    result = subprocess.run([analyze, "verify", str(tmp_path / unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert unit not in result.stderr, result.stderr  # no warnings about our unit


def test_agent_unit_declares_what_the_service_needs() -> None:
    text = (ROOT / "systemd" / "kiosk-agent.service").read_text()
    for line in ["Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=kiosk-agent",
                 "RestartPreventExitStatus=2", "RuntimeDirectory=kiosk-agent",
                 "ConfigurationDirectory=kiosk-agent", "User=kiosk", "Group=kiosk",
                 "SupplementaryGroups=dialout video plugdev", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "DeviceAllow=char-usb_device rw", "MemoryMax="]:
        assert line in text


def test_units_stay_failed_on_a_config_error() -> None:
    """Exit 2 (a config problem) is not restarted; no ExecStartPre, which systemd restarts
    every RestartSec whatever RestartPreventExitStatus says (systemd issue 11868)."""
    for unit in ("kiosk-agent.service", "kiosk-agent-receiver.service"):
        text = (ROOT / "systemd" / unit).read_text()
        assert "RestartPreventExitStatus=2" in text and "\nExecStartPre=" not in text, unit
    # The documented socket's folder is the one the unit creates at each start.
    default = (ROOT / "config" / "kiosk-default.toml").read_text()
    assert '# unix_socket = "/run/kiosk-agent/api.sock"' in default
    assert "RuntimeDirectory=kiosk-agent\n" in (ROOT / "systemd" / "kiosk-agent.service").read_text()


def test_install_into_a_scratch_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    flat = root / "opt/kiosk-agent"  # what older versions installed: the venv was this folder
    (flat / "bin").mkdir(parents=True)
    (flat / "bin/kiosk-agent").write_text("#!/opt/kiosk-agent/bin/python\n")
    (flat / "pyvenv.cfg").write_text("home = /usr/bin\n")
    env = dict(os.environ, DESTDIR=str(root), PYTHON=sys.executable)
    result = subprocess.run(["sh", str(ROOT / "systemd" / "install.sh"), "install"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr

    def mode(rel: str) -> int:
        return stat.S_IMODE((root / rel).stat().st_mode)

    assert mode("etc/kiosk-agent") == 0o750 and mode("etc/kiosk-agent/agent.toml") == 0o640
    assert mode("var/lib/kiosk-agent") == 0o700
    assert mode("etc/systemd/system/kiosk-agent.service") == 0o644
    for unit in ("kiosk-agent-updater.service", "kiosk-agent-updater.path",
                 "kiosk-agent-update-recover.service"):
        assert mode(f"etc/systemd/system/{unit}") == 0o644
    assert mode("etc/udev/rules.d/60-kiosk-agent.rules") == 0o644
    assert mode("etc/udev/rules.d/61-kiosk-serial.rules") == 0o644
    for rel in ("usr/share/bash-completion/completions/kiosk-agent",
                "usr/share/zsh/vendor-completions/_kiosk-agent", "usr/share/man/man1/kiosk-agent.1"):
        assert mode(rel) == 0o644
    assert "05ba" in (root / "etc/udev/rules.d/60-kiosk-agent.rules").read_text()
    # A kiosk gets the kiosk's parts only: the central receiver is `install-central`.
    assert not (root / "etc/systemd/system/kiosk-agent-receiver.service").exists()
    assert not (root / "etc/kiosk-agent/receiver.toml").exists()
    # The releases layout (docs/updates.md): the version's own venv, `current` and `bin` links.
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    opt = root / "opt/kiosk-agent"
    assert os.readlink(opt / "current") == f"releases/{version}"
    assert os.readlink(opt / "bin") == "current/venv/bin"
    # The flat venv of an older install (planted below) is gone.
    assert "moved from the flat" in result.stdout and not (opt / "pyvenv.cfg").exists()
    assert (opt / "releases" / version / "manifest.json").is_file()  # complete, for the updater
    venv = opt / "current/venv"
    # Staged for /opt/kiosk-agent: no script names the staging root.
    assert (opt / "bin/kiosk-agent").read_text().splitlines()[0] == \
        f"#!/opt/kiosk-agent/releases/{version}/venv/bin/python"
    staged = [p.name for p in [*(venv / "bin").iterdir(), venv / "pyvenv.cfg"]
              if p.is_file() and str(root).encode() in p.read_bytes()]
    assert staged == []
    # The staging root's interpreter still runs it (python -m cli, from outside the source tree).
    check = subprocess.run([str(venv / "bin/python"), "-m", "cli", "check-config", "--no-files", "--json",
                            str(root / "etc/kiosk-agent/agent.toml")],
                           capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "@KIOSK_ID@" not in (root / "etc/kiosk-agent/agent.toml").read_text()
    # Ready for a registration app: the local API on, with the token install made.
    installed = tomllib.loads((root / "etc/kiosk-agent/agent.toml").read_text())
    assert installed["local_api"]["enabled"] is True and "registration" in installed
    assert installed["local_api"]["token_file"] == "/etc/kiosk-local-api/token"
    assert (root / "etc/kiosk-local-api/token").exists()

    # An upgrade keeps the config (and never touches the queue).
    (root / "etc/kiosk-agent/agent.toml").write_text(
        (root / "etc/kiosk-agent/agent.toml").read_text() + "\n# edited by the operator\n")
    (root / "var/lib/kiosk-agent/queue.db").write_bytes(b"queued captures")
    again = subprocess.run(["sh", str(ROOT / "systemd" / "install.sh"), "install"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "keeping existing" in again.stdout
    assert "edited by the operator" in (root / "etc/kiosk-agent/agent.toml").read_text()

    central = subprocess.run(["sh", str(ROOT / "systemd" / "install.sh"), "install-central"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert central.returncode == 0, central.stdout + central.stderr
    assert mode("etc/systemd/system/kiosk-agent-receiver.service") == 0o644
    assert mode("etc/kiosk-agent/receiver.toml") == 0o640

    gone = subprocess.run(["sh", str(ROOT / "systemd" / "install.sh"), "uninstall"], env=env,
                          capture_output=True, text=True)
    assert gone.returncode == 0
    assert not (root / "opt/kiosk-agent").exists()
    assert not (root / "etc/systemd/system/kiosk-agent.service").exists()
    assert not (root / "etc/systemd/system/kiosk-agent-updater.path").exists()
    assert not (root / "usr/share/man/man1/kiosk-agent.1").exists()
    assert (root / "var/lib/kiosk-agent/queue.db").read_bytes() == b"queued captures"
    assert (root / "etc/kiosk-agent/agent.toml").exists()
