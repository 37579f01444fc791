"""Power loss under the real agent: ``python -m agent run`` captures continuously with its
state folder on crashfs (tests/support/crashfs) and sends to a real mosquitto and
receiver, which acknowledge, so the agent deletes as it goes. Power is cut at random
moments; each image must hold every capture the agent logged as committed before the cut,
unless the receiver has it (it is deleted only after the receiver's receipt). The last
image is then given to a new agent process, which must deliver what it holds."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from agent.config import load_config
from agent.transport.durable_queue import DurableQueue
from devtools.broker import MosquittoBroker
from receiver.service import Receiver
from tests.reliability.common import SOAK, committed_ids, rng
from tests.support.config import receiver_config
from tests.support.crashfs.runner import Cut, Ledger, cut_while_running
from tests.support.processes import NotifySocket, queued_while_running, spawn_agent, stored_ids, write_config
from tests.support.waiting import wait_until

CUTS = 100 if SOAK else 12
# The soak's cuts take longer than the suite's 300 s per test.
pytestmark = pytest.mark.timeout(3600 if SOAK else 300)


class AgentRun:
    """The agent as a reporter: its DEBUG line "capture X committed" is logged after the
    queue's commit returned."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self.ledger = Ledger()
        self._read = 0
        self.proc = spawn_agent(config, log)

    def poll(self) -> Ledger:
        with open(self.log, "rb") as fh:
            fh.seek(self._read)
            text = fh.read()
        complete = text[:text.rfind(b"\n") + 1]
        self._read += len(complete)
        for item_id in committed_ids(complete.decode(errors="replace")):
            self.ledger.add(f"committed {item_id}")
        if self.proc.poll() is not None:
            raise AssertionError(f"the agent stopped ({self.proc.returncode}): "
                                 f"{self.log.read_text()[-3000:]}")
        return self.ledger

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGKILL)  # the power is gone: nothing gets to clean up
        self.proc.wait(10)


def test_agent_loses_no_committed_capture_to_power_cuts(tmp_path: Path, broker: MosquittoBroker) -> None:
    workdir = tmp_path / "run"
    state = workdir / "mnt" / "state"  # crashfs mounts at workdir/mnt; the agent makes state/
    config_path = write_config(tmp_path, broker.port, level="DEBUG", finger_positions=[1])
    text = config_path.read_text()
    config_path.write_text(text.replace(str(tmp_path / "queue.db"), str(state / "queue.db")))
    out = tmp_path / "out"
    receiver = Receiver(receiver_config(out, load_config(config_path, {})))
    receiver.start()
    last = tmp_path / "last-image"
    last_must: set[str] = set()

    def check(cut: Cut) -> list[str]:
        must = set(cut.before.get("committed"))
        delivered = stored_ids(out)  # read after the cut: a capture leaves the queue only after this
        problems = []
        for image in cut.images:
            where = f"cut {cut.number} ({image.name})"
            queue = DurableQueue(image / "state" / "queue.db", max_bytes=1 << 40, min_free_bytes=0)
            try:
                if queue.quarantined is not None:
                    problems.append(f"{where}: the queue was moved aside: {queue.quarantined['error']}")
                if (verdict := queue.integrity_check()) != "ok":
                    problems.append(f"{where}: integrity_check says {verdict}")
                present = {item.id for item in queue.next_batch(0, 1 << 30)}
            finally:
                queue.close()
            if lost := sorted(must - present - delivered):
                problems.append(f"{where}: lost {len(lost)} of {len(must)} committed captures, "
                                f"e.g. {lost[:2]}")
        last_must.clear()
        last_must.update(must)
        subprocess.run(["rm", "-rf", str(last)], check=True)
        subprocess.run(["cp", "-a", str(cut.images[0]), str(last)], check=True)  # the durable image
        return problems

    try:
        problems, ledger, counts = cut_while_running(
            workdir, lambda mount: AgentRun(config_path, tmp_path / "agent.log"), CUTS,
            rng("power-loss agent"), check, pause=(0.1, 0.6))
        found = [p for cut in problems.values() for p in cut]
        assert not found, "\n".join(found[:20])
        committed = set(ledger.get("committed"))
        assert len(committed) > CUTS, "the agent really captured between the cuts"
        # The last image, to a new agent (on the real disk now): it delivers all it holds.
        resumed = _resume(tmp_path, config_path, last, state)
        wait_until(lambda: queued_while_running(last / "state" / "queue.db") == 0, timeout_s=120,
                   what="the last image's backlog delivered")
        resumed.send_signal(signal.SIGTERM)
        assert resumed.wait(30) == 0
        missing = last_must - stored_ids(out)
        assert not missing, f"the last image did not deliver {sorted(missing)[:3]}"
    finally:
        receiver.stop()
    print(f"power-loss agent: {CUTS} cuts, {2 * CUTS} images, {len(committed)} captures committed, "
          f"{len(stored_ids(out))} stored at the receiver, {counts['fsync']} fsyncs and "
          f"{counts['fsyncdir']} directory fsyncs seen; none lost; the last image delivered in full")


def _resume(tmp_path: Path, config_path: Path, image: Path, state: Path) -> subprocess.Popen[bytes]:
    """A new agent, not capturing, on the image's state folder; returned once ready."""
    text = config_path.read_text().replace('mode = "continuous"', 'mode = "on-demand"')
    resumed = tmp_path / "resumed.toml"
    resumed.write_text(text.replace(str(state), str(image / "state")))
    notify = NotifySocket(tmp_path / "notify")
    try:
        proc = spawn_agent(resumed, tmp_path / "resumed.log", notify)
        notify.wait_for("READY=1")
    finally:
        notify.close()
    return proc
