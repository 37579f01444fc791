"""SIGKILL the agent at random moments while it captures and publishes, again and again."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from agent.config import load_config
from devtools.broker import MosquittoBroker
from receiver.service import Receiver
from tests.reliability.common import SOAK, committed_ids, integrity, rng
from tests.support.config import receiver_config
from tests.support.processes import queued_while_running, spawn_agent, stored_ids, write_config
from tests.support.waiting import wait_until

KILLS = 200 if SOAK else 50


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
    try:
        for _ in range(KILLS):
            proc = spawn_agent(config_path, log_path)
            # Random moments: during start-up, capture, commit, publish, acknowledgement.
            time.sleep(random.uniform(0.6, 2.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            if queue.exists():
                checks.append(integrity(queue))
        # Restart once more without capturing: the backlog must drain to the receiver.
        text = config_path.read_text().replace('mode = "continuous"', 'mode = "on-demand"')
        config_path.write_text(text)
        proc = spawn_agent(config_path, log_path)
        wait_until(lambda: queued_while_running(queue) == 0, timeout_s=120, what="backlog drained")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
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
