"""Device workers and the capture service with the simulated drivers and a real queue."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.capture.attempts import Verdict, attempt_capture
from agent.capture.service import CaptureService
from agent.capture.workers import DeviceWorker
from agent.security.keys import load_decryption_key, load_encryption_public, load_kiosk_keys, load_signing_key
from agent.security.sealing import Opener, Sealer
from agent.transport.backoff import Backoff
from agent.transport.durable_queue import DurableQueue, QueueFull
from agent.transport.protocol import decode_capture
from drivers import (
    CapturedImage,
    CaptureRequest,
    CaptureRetry,
    Driver,
    PermanentDeviceError,
    TransientDeviceError,
    driver_class,
)
from drivers.sim_finger import SimFingerConfig
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
    return CaptureService(config.kiosk, config.capture, q, {"finger": worker}, sealer), worker


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


def test_a_broken_device_is_reported_as_permanent_until_fixed(tmp_path: Path) -> None:
    """A device fault a person must fix stays permanent: the next request is not told to
    wait for the device to come back (it will not, by itself)."""
    svc, worker = service(tmp_path, ["broken"])
    try:
        with pytest.raises(PermanentDeviceError, match="replace the device"):
            svc.capture("finger").result(30)
        assert worker.status().state == "failed"
        with pytest.raises(PermanentDeviceError, match="is failed"):
            svc.capture("finger").result(30)
    finally:
        stop(svc, worker)


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


def sim_finger(faults: list[str]) -> Driver:
    driver = driver_class("sim-finger")("finger", SimFingerConfig(seed=4, faults=faults))
    driver.open()
    return driver


def test_attempts_keep_the_first_image_without_a_judge() -> None:
    driver = sim_finger(["no-finger", "ok"])
    retries: list[tuple[int, str]] = []
    kept = attempt_capture(lambda: driver.capture(CaptureRequest(position=2)), 3,
                           on_retry=lambda n, retry: retries.append((n, retry.reason)))
    assert kept.attempts == 2 and kept.image.position == 2 and kept.verdict.passed
    assert retries == [(1, "no finger")]


def test_a_judge_keeps_the_best_or_stops_at_the_first_pass() -> None:
    scores = iter([30.0, 70.0, 50.0, 90.0])
    seen: list[int] = []

    def judge(image: CapturedImage) -> Verdict[str]:
        score = next(scores)
        return Verdict(score >= 80, score, f"scored {score:g}")

    driver = sim_finger([])

    def take() -> CapturedImage:
        return driver.capture(CaptureRequest(position=1))

    kept = attempt_capture(take, 3, judge, on_judged=lambda n, image, verdict: seen.append(n))
    assert kept.attempts == 3 and seen == [1, 2, 3]
    assert not kept.verdict.passed and kept.verdict.detail == "scored 70", "the best of three, not the last"
    kept = attempt_capture(take, 3, judge)
    assert kept.attempts == 1 and kept.verdict.passed and kept.verdict.detail == "scored 90"


def test_attempts_end_at_once_on_a_device_fault() -> None:
    driver = sim_finger(["no-finger", "disconnect", "ok"])
    attempts: list[int] = []
    with pytest.raises(TransientDeviceError, match="unplugged"):
        attempt_capture(lambda: driver.capture(CaptureRequest()), 3, on_attempt=attempts.append)
    assert attempts == [1, 2]


def test_backoff_full_jitter_is_bounded_and_resets() -> None:
    backoff = Backoff(1.0, 8.0, random.Random(4))
    delays = [backoff.next_delay() for _ in range(50)]
    assert all(0 <= d <= 8.0 for d in delays)
    assert max(delays[:1]) <= 1.0 and max(delays[10:]) > 4.0
    assert len({round(d, 6) for d in delays}) == 50, "jitter: no two kiosks in lockstep"
    backoff.reset()
    assert backoff.next_delay() <= 1.0
