"""A stand-in for ``systemctl`` on machines without systemd as PID 1, for the updater's tests.

It does what systemd does for a Type=notify unit, with real processes: ``restart`` stops the
running agent (SIGTERM), starts the unit's command through the ``current`` symlink with
$NOTIFY_SOCKET pointing at a datagram socket it owns, and returns once the agent said READY=1
(exit 0) or died (exit 1). ``show`` prints ActiveState and the latest STATUS= text, as
``systemctl show -p ActiveState -p StatusText`` does. The unit's folder ($STANDIN_UNIT_DIR)
holds exec.json (argv, cwd), the state, the status text and the agent's log.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

UNIT_DIR = Path(os.environ.get("STANDIN_UNIT_DIR", "."))


def _write(name: str, text: str) -> None:
    tmp = UNIT_DIR / f".{name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, UNIT_DIR / name)


def _read(name: str, default: str = "") -> str:
    try:
        return (UNIT_DIR / name).read_text()
    except FileNotFoundError:
        return default


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop() -> None:
    pid = int(_read("supervisor.pid", "0") or 0)
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 40
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    _write("state", "inactive")


def start() -> int:
    _write("state", "activating")
    _write("status", "")
    log = (UNIT_DIR / "agent.log").open("ab")
    proc = subprocess.Popen([sys.executable, __file__, "supervise"], stdout=log, stderr=log,
                            start_new_session=True, env=os.environ)
    _write("supervisor.pid", str(proc.pid))
    deadline = time.monotonic() + float(os.environ.get("STANDIN_START_TIMEOUT", "60"))
    while time.monotonic() < deadline:
        state = _read("state")
        if state in ("active", "failed"):
            return 0 if state == "active" else 1
        time.sleep(0.05)
    return 1


def supervise() -> None:
    spec = json.loads(_read("exec.json"))
    path = UNIT_DIR / "notify.sock"
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    agent = subprocess.Popen(spec["argv"], cwd=spec["cwd"], env={**os.environ, "NOTIFY_SOCKET": str(path)})
    while True:
        if stopping:
            agent.terminate()
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
            _write("state", "inactive")
            return
        if agent.poll() is not None:
            _write("state", "failed")
            return
        try:
            data = sock.recv(65536).decode(errors="replace")
        except TimeoutError:
            continue
        for line in data.splitlines():
            if line == "READY=1":
                _write("state", "active")
            elif line.startswith("STATUS="):
                _write("status", line[len("STATUS="):])


def show() -> None:
    print(f"ActiveState={_read('state', 'inactive')}\nStatusText={_read('status')}")


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "restart":
        stop()
        sys.exit(start())
    elif command == "stop":
        stop()
    elif command == "show":
        show()
    elif command == "supervise":
        supervise()
    else:
        sys.exit(f"systemctl stand-in: {command} not supported")
