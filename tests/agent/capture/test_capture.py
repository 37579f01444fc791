"""Device workers and the capture service with the simulated drivers and a real queue."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.capture.service import CaptureService
from agent.capture.workers import DeviceWorker
from agent.security.keys import load_decryption_key, load_encryption_public, load_kiosk_keys, load_signing_key
from agent.security.sealing import Opener, Sealer
from agent.transport.backoff import Backoff
from agent.transport.durable_queue import DurableQueue, QueueFull
from agent.transport.protocol import decode_capture
from drivers import CaptureRetry, TransientDeviceError, driver_class
from tests.support.config import agent_config, keys_for
from tests.support.waiting import wait_until


def service(tmp_path: Path, faults: list[str], **queue: int) -> tuple[CaptureService, DeviceWorker]:
    config = agent_config(tmp_path, 1883, capture={"mode": "on-demand", "max_attempts": 3},
                          devices={"finger": {"driver": "sim-finger", "seed": 2, "faults": faults}},
                          queue={"min_free_bytes": 0, **queue})
    dev = config.devices["finger"]
    worker = DeviceWorker("finger", driver_class(dev.driver)("finger", dev), reopen_min_s=0.05,
                          reopen_max_s=0.1)
    q = DurableQueue(config.queue.path, max_bytes=config.queue.max_bytes, min_free_bytes=0)
    sealer = Sealer(load_signing_key(config.security.kiosk_key),
                    load_encryption_public(config.security.central_public_key))
    worker.start()
    return CaptureService(config, q, {"finger": worker}, sealer), worker


def open_item(tmp_path: Path, payload: bytes) -> bytes:
    """The central side's view of a queued payload: decrypted and verified."""
    keys = keys_for(tmp_path, "kiosk-t1")
    opener = Opener(load_decryption_key(keys.central_key), load_kiosk_keys(keys.kiosks_dir))
    return opener.open(payload)[1]


def stop(svc: CaptureService, worker: DeviceWorker) -> None:
    worker.stop()
    svc.queue.close()


def test_person_fixable_retries_then_commit(tmp_path: Path) -> None:
    svc, worker = service(tmp_path, ["no-finger", "too-messy"])
    try:
        outcome = svc.capture("finger", position=7).result(30)
        assert outcome.attempts == 3 and outcome.position == 7
        (item,) = svc.queue.next_batch(0, 10)
        record = decode_capture(open_item(tmp_path, item.payload))
        assert record.id == outcome.id and record.seq == item.seq and record.position == 7
        assert record.device_serial.startswith("SIM-") and record.kiosk_id == "kiosk-t1"
    finally:
        stop(svc, worker)


def test_retries_exhausted_reach_the_caller(tmp_path: Path) -> None:
    svc, worker = service(tmp_path, ["no-finger"] * 3)
    try:
        with pytest.raises(CaptureRetry, match="place your finger"):
            svc.capture("finger").result(30)
        assert svc.queue.totals() == (0, 0) and svc.captured == 0
    finally:
        stop(svc, worker)


def test_unplugged_device_goes_offline_and_comes_back(tmp_path: Path) -> None:
    svc, worker = service(tmp_path, ["disconnect"])
    try:
        with pytest.raises(TransientDeviceError):
            svc.capture("finger").result(30)
        assert worker.status().state == "offline" and "unplugged" in worker.status().error
        # The worker reopens it by itself (idle retry with backoff); the agent carries on.
        wait_until(lambda: worker.status().state == "online", timeout_s=10, what="device back online")
        assert svc.capture("finger").result(30).attempts == 1
    finally:
        stop(svc, worker)
    assert worker.status().state == "stopped"


def test_full_queue_refuses_capture_and_keeps_the_rest(tmp_path: Path) -> None:
    svc, worker = service(tmp_path, [], max_bytes=1024 * 1024)
    try:
        taken = 0
        with pytest.raises(QueueFull, match="queue.max_bytes"):
            for _ in range(100):
                svc.capture("finger").result(30)
                taken += 1
        assert taken > 0 and svc.queue.totals()[0] == taken == svc.captured and svc.refused == 1
        assert worker.status().state == "online", "a full queue is not a device fault"
    finally:
        stop(svc, worker)


def test_backoff_full_jitter_is_bounded_and_resets() -> None:
    backoff = Backoff(1.0, 8.0, random.Random(4))
    delays = [backoff.next_delay() for _ in range(50)]
    assert all(0 <= d <= 8.0 for d in delays)
    assert max(delays[:1]) <= 1.0 and max(delays[10:]) > 4.0
    assert len({round(d, 6) for d in delays}) == 50, "jitter: no two kiosks in lockstep"
    backoff.reset()
    assert backoff.next_delay() <= 1.0
