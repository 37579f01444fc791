"""Hot-plug (agent/capture/hotplug.py): emulated USB scanners plugged in and out of an emulated bus,
serial ports appearing and vanishing as ptys, workers going offline and coming back, events,
and the whole agent running through it."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import usb.core

from agent.capture import hotplug
from agent.capture.hotplug import HotplugMonitor
from agent.capture.workers import DeviceWorker
from agent.daemon import Agent
from agent.transport.backoff import Backoff
from drivers import CaptureRequest, usb_scan
from drivers.usb_scan import UsbEnumerator
from drivers.zfm import ZfmConfig, ZfmDriver
from tests.emulators.uru4000_backend import EmulatedBus, EmulatedScanner, gradient_image
from tests.emulators.zfm import ZfmEmulator
from tests.support.config import agent_config
from tests.support.uru4000 import FAST, decode_png, make_driver
from tests.support.waiting import wait_until

ZFM_FAST: dict[str, Any] = {"poll_interval_s": 0.002, "probe_timeout_s": 0.05, "reply_timeout_s": 0.15}


class _Longest(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


def slow_to_reopen(worker: DeviceWorker) -> DeviceWorker:
    """A worker that on its own would not try again for an hour: only hot-plug brings it back soon."""
    worker._backoff = Backoff(3600, 3600, rng=_Longest())
    return worker


@pytest.fixture
def scanner() -> EmulatedScanner:
    return EmulatedScanner(image=gradient_image())


@pytest.fixture
def bus(scanner: EmulatedScanner) -> EmulatedBus:
    return EmulatedBus(scanner)


@pytest.fixture
def worker(bus: EmulatedBus) -> Iterator[DeviceWorker]:
    w = slow_to_reopen(DeviceWorker("finger", make_driver(bus)))
    w.start()
    assert w.wait_first_open(5) and w.state == "online"
    yield w
    w.stop()


def monitor_for(workers: dict[str, DeviceWorker], bus: EmulatedBus, events: list[dict[str, Any]],
                **kwargs: Any) -> HotplugMonitor:
    return HotplugMonitor(workers, on_event=events.append, usb_scan=UsbEnumerator(bus).scan, **kwargs)


def test_usb_scanner_unplugged_and_replugged(bus: EmulatedBus, scanner: EmulatedScanner,
                                             worker: DeviceWorker) -> None:
    events: list[dict[str, Any]] = []
    monitor = monitor_for({"finger": worker}, bus, events)
    assert monitor.poll() == [] and monitor.watched()  # the baseline is not news

    bus.unplug(scanner)
    (removed,) = monitor.poll()
    assert removed == {"event": "device_removed", "bus": "usb", "devices": ["finger"], "driver": "uru4000",
                       "model": "U.are.U 4000B/4500", "usb_id": "05ba:000a", "usb_port": "1-1.4",
                       "serial": "EMU0001"}
    wait_until(lambda: worker.state == "offline", 5, what="offline after unplug")
    assert "unplugged" in worker.error
    assert monitor.poll() == []

    bus.plug(scanner)
    (added,) = monitor.poll()
    assert added["event"] == "device_added" and added["devices"] == ["finger"]
    wait_until(lambda: worker.state == "online", 5, what="reopened by hot-plug, not by backoff")
    png = worker.submit(lambda d: d.capture(CaptureRequest())).result(5).image
    assert np.array_equal(decode_png(png), scanner.image)
    assert events == [removed, added]


def test_a_scanner_nobody_configured_is_reported_but_changes_nothing(bus: EmulatedBus) -> None:
    worker = DeviceWorker("finger", make_driver(bus, usb_id="05ba:000a"))
    events: list[dict[str, Any]] = []
    monitor = monitor_for({"finger": worker}, bus, events)
    monitor.poll()
    stranger = bus.plug(EmulatedScanner(product_id=0x0007, serial="ZZZ", port_numbers=(3,)))
    (added,) = monitor.poll()
    assert (added["event"], added["devices"], added["usb_id"], added["usb_port"]) == (
        "device_added", [], "05ba:0007", "1-3")
    bus.unplug(stranger)
    (removed,) = monitor.poll()
    assert removed["event"] == "device_removed" and removed["serial"] == "ZZZ"
    assert worker._jobs.empty() and events == [added, removed]  # the worker was told nothing


def test_serial_selection_only_matches_its_own_scanner(scanner: EmulatedScanner) -> None:
    other = EmulatedScanner(serial="OTHER", port_numbers=(1, 5))
    bus = EmulatedBus(scanner, other)
    w = slow_to_reopen(DeviceWorker("finger", make_driver(bus, serial="EMU0001")))
    w.start()
    try:
        assert w.wait_first_open(5) and w.state == "online"
        events: list[dict[str, Any]] = []
        monitor = monitor_for({"finger": w}, bus, events)
        monitor.poll()
        bus.unplug(other)
        assert [e["devices"] for e in monitor.poll()] == [[]]
        assert w.state == "online"
        bus.unplug(scanner)
        assert [e["devices"] for e in monitor.poll()] == [["finger"]]
        wait_until(lambda: w.state == "offline", 5, what="offline")
    finally:
        w.stop()


def test_serial_port_vanishing_and_returning(tmp_path: Path) -> None:
    link = tmp_path / "kiosk-finger0"
    emulator = ZfmEmulator(link=link).start()
    w = slow_to_reopen(DeviceWorker("finger", ZfmDriver("finger", ZfmConfig(port=str(link), **ZFM_FAST))))
    w.start()
    try:
        assert w.wait_first_open(5) and w.state == "online"
        events: list[dict[str, Any]] = []
        monitor = HotplugMonitor({"finger": w}, on_event=events.append, usb_scan=lambda: [])
        monitor.poll()
        emulator.unplug()
        assert monitor.poll() == [{"event": "device_removed", "bus": "serial", "devices": ["finger"],
                                   "port": str(link)}]
        wait_until(lambda: w.state == "offline", 5, what="offline")
        emulator = ZfmEmulator(link=link).start()
        assert [e["event"] for e in monitor.poll()] == ["device_added"]
        wait_until(lambda: w.state == "online", 5, what="reopened by hot-plug")
    finally:
        w.stop()
        emulator.stop()


def test_url_ports_and_simulated_devices_are_not_watched(bus: EmulatedBus) -> None:
    from drivers.sim_finger import SimFingerConfig, SimFingerDriver

    workers = {"net": DeviceWorker("net", ZfmDriver("net", ZfmConfig(port="socket://10.0.0.9:4001"))),
               "sim": DeviceWorker("sim", SimFingerDriver("sim", SimFingerConfig(driver="sim-finger")))}
    checked: list[str] = []
    monitor = HotplugMonitor(workers, usb_scan=UsbEnumerator(bus).scan,
                             path_exists=lambda p: checked.append(p) or True)
    assert not monitor.watched()
    monitor.poll()
    assert checked == []


def test_without_usb_access_the_monitor_carries_on(bus: EmulatedBus, scanner: EmulatedScanner,
                                                   worker: DeviceWorker,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    events: list[dict[str, Any]] = []
    monitor = monitor_for({"finger": worker}, bus, events)
    monitor.poll()
    bus.fail_enumeration = usb.core.USBError("Access denied", None, 13)
    assert monitor.poll() == [] and monitor.poll() == []
    assert worker.state == "online"  # not knowing is not the same as gone
    assert sum("not watched" in r.message for r in caplog.records) == 1  # said once, not every period
    bus.fail_enumeration = None
    bus.unplug(scanner)
    assert [e["event"] for e in monitor.poll()] == ["device_removed"]


def test_the_monitor_thread_notices_by_itself(bus: EmulatedBus, scanner: EmulatedScanner,
                                              worker: DeviceWorker) -> None:
    events: list[dict[str, Any]] = []
    monitor = monitor_for({"finger": worker}, bus, events, period_s=0.02)
    monitor.start()
    try:
        bus.unplug(scanner)
        wait_until(lambda: worker.state == "offline", 5, what="offline")
        bus.plug(scanner)
        wait_until(lambda: worker.state == "online", 5, what="online")
        wait_until(lambda: len(events) == 2, 5, what="two events")
    finally:
        monitor.stop()
    assert [e["event"] for e in events] == ["device_removed", "device_added"]


def test_a_failing_event_callback_does_not_stop_hot_plug(bus: EmulatedBus, scanner: EmulatedScanner,
                                                         worker: DeviceWorker) -> None:
    def broken(event: dict[str, Any]) -> None:
        raise RuntimeError("publisher down")

    monitor = HotplugMonitor({"finger": worker}, on_event=broken, usb_scan=UsbEnumerator(bus).scan)
    monitor.poll()
    bus.unplug(scanner)
    assert len(monitor.poll()) == 1
    wait_until(lambda: worker.state == "offline", 5, what="offline despite the callback")


def test_the_agent_keeps_running_through_unplug_and_replug(tmp_path: Path, broker: Any, bus: EmulatedBus,
                                                           scanner: EmulatedScanner,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(usb_scan, "default_backend", bus)
    monkeypatch.setattr(hotplug, "DEFAULT_PERIOD_S", 0.05)
    config = agent_config(tmp_path, broker.port, capture={"mode": "on-demand"},
                          devices={"finger": {"driver": "uru4000", **FAST}})
    agent = Agent(config)
    agent.start()
    try:
        worker = agent.workers["finger"]
        assert worker.state == "online"
        slow_to_reopen(worker)
        assert agent.capture is not None
        first = agent.capture.capture("finger").result(10)

        bus.unplug(scanner)
        wait_until(lambda: worker.state == "offline", 5, what="offline after unplug")
        assert agent.link is not None and agent.link.alive
        bus.plug(scanner)
        wait_until(lambda: worker.state == "online", 5, what="online after replug")
        second = agent.capture.capture("finger").result(10)
        assert first.id != second.id and agent.queue is not None and agent.queue.totals()[0] >= 1
        # Both changes reached the agent's event bus (which publishes them on .../events).
        published = [r.getMessage() for r in caplog.records if r.name == "agent.transport.events"]
        assert [m.split()[1] for m in published if " device_" in m] == ["device_removed", "device_added"]
    finally:
        agent.stop()


def test_replugging_gives_a_failed_scanner_another_chance(bus: EmulatedBus, scanner: EmulatedScanner) -> None:
    scanner.faults.permission_denied = True  # the udev rules are not installed yet
    w = slow_to_reopen(DeviceWorker("finger", make_driver(bus)))
    w.start()
    try:
        assert w.wait_first_open(5) and w.state == "failed" and "60-kiosk-agent.rules" in w.error
        monitor = HotplugMonitor({"finger": w}, usb_scan=UsbEnumerator(bus).scan)
        monitor.poll()
        scanner.faults.permission_denied = False  # rules installed; the person replugs
        bus.unplug(scanner)
        monitor.poll()
        bus.plug(scanner)
        monitor.poll()
        wait_until(lambda: w.state == "online", 5, what="online after replug")
    finally:
        w.stop()
