"""``kiosk-agent remote rollout`` against three real kiosk agents on a real mosquitto, fetching
from a real HTTPS server; a stand-in for the root updater takes each handed-over bundle and
writes the result the real updater writes (committed, or rolled back), which each kiosk then
announces as its ``update_result`` event."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from agent.update.spool import PENDING, PENDING_BUNDLE, spool_dir, write_result
from devtools.broker import MosquittoBroker
from tests.support.config import security_section
from tests.support.remote_kiosk import kiosk_raw, start_kiosk
from tests.support.update_server import BUNDLE, update_server

KIOSKS = ("kiosk-a", "kiosk-b", "kiosk-c")
GOOD = hashlib.sha256(BUNDLE).hexdigest()


class StandInUpdater:
    """What kiosk-agent-updater.path + the updater do, minus the install: take the pending
    bundle and leave the outcome ``plan`` names for that kiosk ("silent": never answer)."""

    def __init__(self, spools: dict[str, Path]) -> None:
        self.spools = spools
        self.plan: dict[str, str] = {}
        self.taken: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="standin-updater", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        counter = 0
        while not self._stop.wait(0.1):
            for kiosk, spool in self.spools.items():
                if not (spool / PENDING).exists() or self.plan.get(kiosk, "committed") == "silent":
                    continue
                assert (spool / PENDING_BUNDLE).read_bytes() == BUNDLE
                (spool / PENDING).unlink()
                (spool / PENDING_BUNDLE).unlink()
                self.taken.append(kiosk)
                outcome = self.plan.get(kiosk, "committed")
                counter += 1
                write_result(spool, {"ok": outcome == "committed", "version": "1.2.0", "outcome": outcome,
                                     "reason": "healthy" if outcome == "committed" else
                                     "1.2.0 failed its health gate and was rolled back to 1.1.0",
                                     "id": f"{kiosk}-{counter}", "at": 0})

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def fleet(tmp_path: Path, broker: MosquittoBroker) -> Iterator[tuple[StandInUpdater, Path, int]]:
    with update_server(tmp_path) as (port, ca_file), contextlib.ExitStack() as stack:
        operators: dict[str, Any] | None = None
        for kiosk in KIOSKS:
            home = tmp_path / kiosk
            home.mkdir()
            raw = kiosk_raw(home, broker.port,
                            update={"allowed_hosts": ["127.0.0.1"], "ca_file": str(ca_file)})
            raw["kiosk"]["id"] = kiosk
            raw["security"] = security_section(home, kiosk)
            operators = operators or raw["remote"]["operators"]
            raw["remote"]["operators"] = operators  # one operator key for the whole fleet
            agent = start_kiosk(home, raw)
            stack.callback(agent.stop)
        updater = StandInUpdater({k: spool_dir(tmp_path / k) for k in KIOSKS})
        stack.callback(updater.close)
        op_cfg = tmp_path / "operator.toml"
        op_cfg.write_text(tomli_w.dumps({
            "operator": {"name": "ada", "key": str(tmp_path / KIOSKS[0] / "operators" / "ada.key")},
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "allow_plaintext": True}}))
        yield updater, op_cfg, port


def _rollout(op_cfg: Path, port: int, *extra: str) -> int:
    from cli.main import main

    return main(["remote", "rollout", f"https://127.0.0.1:{port}/kiosk-agent-1.2.0.bundle",
                 "--config", str(op_cfg), *extra])


def test_rollout_stops_at_the_failure_threshold(fleet, capsys) -> None:  # type: ignore[no-untyped-def]
    updater, op_cfg, port = fleet
    updater.plan["kiosk-b"] = "rolled_back"
    code = _rollout(op_cfg, port, "--sha256", GOOD, "--kiosks", "kiosk-a,kiosk-b,kiosk-c", "--batch", "1",
                    "--max-failures", "0", "--timeout", "20")
    out = capsys.readouterr().out
    assert code == 1, out
    assert "kiosk-a" in out and "committed" in out and "rolled_back" in out and "health gate" in out
    assert "stopped: 1 failures" in out and "1 of 3 kiosks updated, 1 failed, 1 not attempted" in out
    assert updater.taken == ["kiosk-a", "kiosk-b"]  # kiosk-c was never sent the update

    # Every online kiosk, two at a time, for scripts; a swapped bundle is refused by each kiosk
    # before its updater sees it, and a third failure is one more than the threshold allows.
    updater.plan.clear()
    code = _rollout(op_cfg, port, "--sha256", "1" * 64, "--all-online", "--batch", "2",
                    "--max-failures", "1", "--timeout", "20", "--json")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    states = {r["kiosk"]: r["state"] for r in lines if "kiosk" in r}
    assert states == {"kiosk-a": "refused", "kiosk-b": "refused"}, lines
    assert lines[-1]["updated"] == 0 and lines[-1]["failed"] == 2 and lines[-1]["kiosks"] == 3
    assert updater.taken == ["kiosk-a", "kiosk-b"]


def test_rollout_succeeds_and_times_out(fleet, capsys) -> None:  # type: ignore[no-untyped-def]
    updater, op_cfg, port = fleet
    code = _rollout(op_cfg, port, "--sha256", GOOD, "--all-online", "--batch", "2", "--max-failures", "0",
                    "--timeout", "20", "--json")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0, lines
    assert [r["batch"] for r in lines if "batch" in r] == [1, 2]
    finals = {r["kiosk"]: r for r in lines if r.get("state") == "committed"}
    assert sorted(finals) == list(KIOSKS) and all(r["version"] == "1.2.0" for r in finals.values())
    assert lines[-1]["updated"] == 3
    # An updater that never answers: the kiosk accepted, then nothing; a failure after --timeout.
    updater.plan["kiosk-a"] = "silent"
    code = _rollout(op_cfg, port, "--sha256", GOOD, "--kiosks", "kiosk-a", "--timeout", "3")
    out = capsys.readouterr().out
    assert code == 1 and "accepted" in out and "timeout" in out, out
