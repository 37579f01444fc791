"""SIGKILL the agent at random moments while it captures and publishes, again and again."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from agent.config import load_config
from devtools.broker import MosquittoBroker, free_port
from receiver.service import Receiver
from tests.reliability.common import SOAK, committed_ids, integrity, rng
from tests.support.config import receiver_config
from tests.support.processes import (
    NotifySocket,
    catches,
    queue_ids,
    queued_while_running,
    spawn_agent,
    stored_ids,
    write_config,
)
from tests.support.waiting import wait_until

KILLS = 200 if SOAK else 20
STARTUP_SIGNALS = 40 if SOAK else 8


def test_sigkill_storm_loses_nothing(tmp_path: Path, broker: MosquittoBroker) -> None:
    random = rng("kill9")
    config_path = write_config(tmp_path, broker.port, level="DEBUG", finger_positions=[1])
    out = tmp_path / "out"
    receiver = Receiver(receiver_config(out, load_config(config_path, {})))
    receiver.start()
    log_path = tmp_path / "agent.log"
    queue = tmp_path / "queue.db"
    checks = []
    proc = None
    notify = None
    try:
        for _ in range(KILLS):
            proc = spawn_agent(config_path, log_path)
            # Random moments: during start-up, capture, commit, publish, acknowledgement.
            # Up to 3.5 s: the agent takes 1.5 to 2.5 s from spawn to its first commit (imports,
            # devices), so later kills land in capture, commit, publish and acknowledgement.
            time.sleep(random.uniform(0.6, 3.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            if queue.exists():
                checks.append(integrity(queue))
        # Restart once more without capturing: the backlog must drain to the receiver.
        text = config_path.read_text().replace('mode = "continuous"', 'mode = "on-demand"')
        config_path.write_text(text)
        notify = NotifySocket(tmp_path / "notify")
        proc = spawn_agent(config_path, log_path, notify)
        # "Backlog drained" can be true before the new agent has even loaded: wait for its
        # READY=1, as systemd would, so the SIGTERM below stops a running agent.
        notify.wait_for("READY=1")
        wait_until(lambda: queued_while_running(queue) == 0, timeout_s=120, what="backlog drained")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if notify is not None:
            notify.close()
        receiver.stop()
    committed = committed_ids(log_path.read_text())
    stored = stored_ids(out)
    print(f"kill9: {KILLS} SIGKILLs, {len(committed)} captures committed, {len(stored)} stored, "
          f"{receiver.counters.duplicates} duplicates de-duplicated, lost {len(committed - stored)}")
    assert len(committed) > KILLS, "captures were really taken between the kills"
    assert checks and set(checks) == {"ok"}, "integrity_check after every kill"
    assert committed <= stored, f"lost: {sorted(committed - stored)[:5]}"
    # Exactly once in storage: one file pair per id, however often it came over the wire.
    assert receiver.counters.stored == len(stored)
    assert integrity(queue) == "ok"


def test_sigterm_during_start_up_ends_cleanly(tmp_path: Path) -> None:
    """systemd may stop a unit that is still starting: at any moment of start-up (loading,
    opening the queue and devices, connecting to a broker that is not there) SIGTERM must
    end the agent with exit 0, nothing queued lost, the queue intact.

    The moments run from when the kernel shows our SIGTERM handler in place (SigCgt in
    /proc/PID/status): before it the interpreter itself is starting, no code of ours can
    run, and the signal's default ends the process, which systemd also counts as a clean
    stop. Timing from the spawn instead failed on a loaded CI machine, where 0.1 s after
    the spawn the interpreter had not reached our handler yet."""
    random = rng("sigterm-start-up")
    config_path = write_config(tmp_path, free_port(), max_captures=3)
    log_path = tmp_path / "agent.log"
    queue = tmp_path / "queue.db"
    delays = sorted(random.uniform(0.0, 2.4) for _ in range(STARTUP_SIGNALS))
    outcomes = []
    for delay in delays:
        before = queue_ids(queue) if queue.exists() else set()
        notify = NotifySocket(tmp_path / "notify")
        proc = spawn_agent(config_path, log_path, notify)
        try:
            wait_until(lambda p=proc: catches(p.pid, signal.SIGTERM) or p.poll() is not None,
                       30, 0.005, "the agent's SIGTERM handler")
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            outcomes.append((round(delay, 2), proc.wait(30)))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            notify.close()
        assert before <= (queue_ids(queue) if queue.exists() else set()), "nothing queued is lost"
        if queue.exists():
            assert integrity(queue) == "ok"
    assert [code for _, code in outcomes] == [0] * len(delays), f"exit codes by delay: {outcomes}"
    assert "Traceback" not in log_path.read_text()
