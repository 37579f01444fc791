"""The ``libfprint`` driver against libfprint itself: its virtual image device
(FP_VIRTUAL_IMAGE), fed the project's synthetic prints over its socket, runs libfprint's real
capture path and NBIS minutiae detection; its virtual match-on-chip device (FP_VIRTUAL_DEVICE)
stands for sensors that give no images. Also the error mapping and the checks on what a device
hands back, and a whole registration of ten single fingers through the agent's local API.

libfprint reads those variables when a context enumerates, which the driver does on every
first open, so each test sets its own socket path before opening.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.capture.hotplug import HotplugMonitor
from agent.capture.workers import DeviceWorker
from drivers import (
    CaptureRequest,
    CaptureRetry,
    DeviceDisconnected,
    PermanentDeviceError,
    TransientDeviceError,
)
from drivers.errors import ImplausibleResolution
from drivers.fingerprint_synth import synthesize
from drivers.libfprint import (
    ERROR_DOMAIN,
    IO_DOMAIN,
    RETRY_DOMAIN,
    USB_DOMAIN,
    LibfprintConfig,
    LibfprintDriver,
    check_image,
    classify,
    resolution,
)
from drivers.libfprint_loop import FprintLoop, import_fprint
from drivers.png_phys import png_ppi
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def fprint() -> tuple[Any, Any, Any]:
    try:
        return import_fprint()
    except PermanentDeviceError as exc:
        pytest.fail(f"{exc}; `make test` installs them")


class VirtualImage:
    """The feeding end of libfprint's virtual image device: libfprint listens on the socket,
    this connects and sends width and height (two little-endian int32) and then the pixels,
    or a negative width: -1 retry (code), -2 error (code), -5 remove the device."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock: socket.socket | None = None

    def connect(self) -> None:
        wait_until(lambda: os.path.exists(self.path), 10, what="libfprint's virtual image socket")
        self.close()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)

    def send(self, header: tuple[int, int], pixels: bytes = b"") -> None:
        assert self.sock is not None
        self.sock.sendall(struct.pack("<ii", *header) + pixels)

    def image(self, image: np.ndarray) -> None:
        self.send((image.shape[1], image.shape[0]), image.tobytes())

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


@pytest.fixture
def virtual(fprint: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[VirtualImage]:
    # A short path: Unix socket paths are limited to 107 bytes, and pytest's tmp_path is long.
    folder = tempfile.mkdtemp(prefix="fpv-", dir="/tmp")
    path = os.path.join(folder, "image.sock")
    monkeypatch.setenv("FP_VIRTUAL_IMAGE", path)
    monkeypatch.delenv("FP_VIRTUAL_DEVICE", raising=False)
    feeder = VirtualImage(path)
    try:
        yield feeder
    finally:
        feeder.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def driver(virtual: VirtualImage) -> Iterator[LibfprintDriver]:
    d = LibfprintDriver("finger", LibfprintConfig(libfprint_driver="virtual_image", capture_timeout_s=10))
    info = d.open()
    assert info.model == "Virtual image device for debugging"
    assert info.extra["libfprint_driver"] == "virtual_image"
    virtual.connect()
    try:
        yield d
    finally:
        d.close()


@pytest.fixture(scope="module")
def prints() -> list[np.ndarray]:
    return [synthesize(seed, 320, 400) for seed in (7, 8)]


def when_waiting(driver: LibfprintDriver, act: Callable[[], None],
                 request: CaptureRequest | None = None) -> Any:
    """Capture, doing ``act`` once libfprint waits for the finger; the capture's result or error."""
    with ThreadPoolExecutor(1) as pool:
        future: Future[Any] = pool.submit(driver.capture, request or CaptureRequest(position=1))
        assert driver.waits_for_finger(10), "libfprint never asked for a finger"
        act()
        return future.result(30)


def decoded(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)


# --- captures through libfprint's virtual image device ---------------------------------------


def test_a_capture_is_the_print_fed_with_minutiae_and_the_configured_resolution(
        driver: LibfprintDriver, virtual: VirtualImage, prints: list[np.ndarray]) -> None:
    shot = when_waiting(driver, lambda: virtual.image(prints[0]))
    assert (shot.width, shot.height, shot.image_format) == (320, 400, "png")
    assert np.array_equal(decoded(shot.image), prints[0])  # every grey level as fed
    # The virtual device reports 0 px/mm: the resolution is the config's, in the PNG too.
    assert shot.ppi == 500 and png_ppi(shot.image) == 500 and shot.quality_detail["ppi_source"] == "config"
    assert shot.quality_detail["minutiae"] > 10  # libfprint's NBIS found the synthetic ridges
    driver.config.ppi = 508
    other = when_waiting(driver, lambda: virtual.image(prints[1]), CaptureRequest(position=2))
    assert other.ppi == 508 and png_ppi(other.image) == 508 and other.position == 2
    assert np.array_equal(decoded(other.image), prints[1])


def test_a_blank_print_is_a_retry_and_the_scanner_still_works(
        driver: LibfprintDriver, virtual: VirtualImage, prints: list[np.ndarray]) -> None:
    with pytest.raises(CaptureRetry):
        when_waiting(driver, lambda: virtual.image(np.full((400, 320), 225, np.uint8)))
    assert when_waiting(driver, lambda: virtual.image(prints[0])).quality_detail["minutiae"] > 10


def test_too_few_minutiae_is_a_retry_by_the_configured_gate(
        driver: LibfprintDriver, virtual: VirtualImage, prints: list[np.ndarray]) -> None:
    assert LibfprintConfig().min_minutiae == 5  # NFIQ 2's gate
    # The edge of a fingertip: libfprint's NBIS finds a few minutiae there (6 with this print).
    edge = np.full_like(prints[0], 225)
    edge[:60, 100:220] = prints[0][:60, 100:220]
    driver.config.min_minutiae = 1
    found = when_waiting(driver, lambda: virtual.image(edge)).quality_detail["minutiae"]
    assert 1 <= found < 20
    # One more than the image has: the person is asked to try again, told how.
    driver.config.min_minutiae = found + 1
    with pytest.raises(CaptureRetry, match=f"{found} minutiae found, at least {found + 1} needed") as retry:
        when_waiting(driver, lambda: virtual.image(edge))
    assert "press" in retry.value.hint
    # A whole print clears the same gate.
    assert when_waiting(driver, lambda: virtual.image(prints[0])).quality_detail["minutiae"] > found


def test_hostile_sizes_on_the_wire_end_as_retries_and_the_scanner_recovers(
        driver: LibfprintDriver, virtual: VirtualImage, prints: list[np.ndarray]) -> None:
    with pytest.raises(CaptureRetry):  # a 40 x 40 px "print": nothing a finger could leave
        when_waiting(driver, lambda: virtual.image(prints[0][:40, :40].copy()))
    # libfprint refuses a header of 6000 x 6000 and hangs up; the capture times out as "no finger".
    with pytest.raises(CaptureRetry, match="no finger"):
        when_waiting(driver, lambda: virtual.send((6000, 6000)), CaptureRequest(position=1, timeout_s=1.0))
    virtual.connect()
    assert np.array_equal(decoded(when_waiting(driver, lambda: virtual.image(prints[1])).image), prints[1])


def test_libfprints_retries_are_the_persons_to_fix(driver: LibfprintDriver, virtual: VirtualImage) -> None:
    reasons = {}
    for code in (0, 1, 2, 3):  # general, too short, centre the finger, remove the finger
        with pytest.raises(CaptureRetry) as retry:
            when_waiting(driver, lambda code=code: virtual.send((-1, code)))
        reasons[code] = retry.value.reason
    assert reasons == {0: "scanner asked to try again", 1: "swipe too short", 2: "finger off centre",
                       3: "finger still on the sensor"}
    assert driver.health().ok


@pytest.mark.parametrize(("code", "kind"), [(4, TransientDeviceError), (5, TransientDeviceError),
                                             (1, PermanentDeviceError)])
def test_device_errors_are_transient_or_permanent(driver: LibfprintDriver, virtual: VirtualImage, code: int,
                                                  kind: type[Exception]) -> None:
    with pytest.raises(kind) as error:  # 4 busy, 5 protocol error, 1 not supported
        when_waiting(driver, lambda: virtual.send((-2, code)))
    assert not isinstance(error.value, DeviceDisconnected)


def test_no_finger_in_time_is_a_retry_and_the_capture_is_cancelled(
        driver: LibfprintDriver, virtual: VirtualImage, prints: list[np.ndarray]) -> None:
    started = time.monotonic()
    with pytest.raises(CaptureRetry) as retry:
        driver.capture(CaptureRequest(position=1, timeout_s=0.5))
    assert retry.value.reason == "no finger" and time.monotonic() - started < 5
    # libfprint took the cancellation: the next capture starts cleanly.
    assert when_waiting(driver, lambda: virtual.image(prints[0])).width == 320


def test_a_removed_scanner_fails_its_capture_as_unplugged(driver: LibfprintDriver,
                                                          virtual: VirtualImage) -> None:
    with pytest.raises(DeviceDisconnected):
        when_waiting(driver, lambda: virtual.send((-5, 0)))
    assert driver.present() is False and not driver.health().ok


def test_a_removed_scanner_goes_offline_and_is_listed_again_when_reopened(
        virtual: VirtualImage, prints: list[np.ndarray]) -> None:
    # libfprint's virtual device reads its socket only while capturing, so it is removed
    # during a capture here; a USB scanner unplugged while idle reaches hot-plug through
    # present() the same way (drivers/libfprint_loop.py follows "notify::removed").
    driver = LibfprintDriver("finger", LibfprintConfig(libfprint_driver="virtual_image"))
    worker = DeviceWorker("finger", driver, reopen_min_s=0.2, reopen_max_s=0.5)
    worker.start()
    monitor = HotplugMonitor({"finger": worker}, period_s=3600)
    try:
        assert worker.wait_first_open(10) and worker.state == "online"
        assert monitor.watched() and monitor._is_present(worker) is True
        virtual.connect()
        future = worker.submit(lambda d: d.capture(CaptureRequest(position=1)))
        assert driver.waits_for_finger(10)
        virtual.send((-5, 0))  # libfprint removes the device
        with pytest.raises(DeviceDisconnected):
            future.result(30)
        assert worker.state == "offline" and "unplugged" in worker.status().error
        # The worker reopens; a new enumeration lists the scanner again, and it captures.
        wait_until(lambda: worker.state == "online", 10, what="the scanner back")
        assert monitor._is_present(worker) is True
        virtual.connect()
        future = worker.submit(lambda d: d.capture(CaptureRequest(position=1)))
        assert driver.waits_for_finger(10)
        virtual.image(prints[0])
        assert future.result(30).quality_detail["minutiae"] > 10
    finally:
        worker.stop()
    assert monitor._is_present(worker) is None  # closed: nothing held, nothing watched


# --- selection --------------------------------------------------------------------------------


def test_another_drivers_scanner_is_not_chosen(virtual: VirtualImage) -> None:
    d = LibfprintDriver("finger", LibfprintConfig(libfprint_driver="elan"))
    try:
        with pytest.raises(DeviceDisconnected, match=r"libfprint_driver elan; it lists: virtual_image \(0\)"):
            d.open()
    finally:
        d.close()


def test_a_match_on_chip_sensor_is_reported_unsupported(fprint: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # libfprint's virtual match-on-chip device enrols and matches inside itself and has no capture.
    folder = tempfile.mkdtemp(prefix="fpv-", dir="/tmp")
    monkeypatch.delenv("FP_VIRTUAL_IMAGE", raising=False)
    monkeypatch.setenv("FP_VIRTUAL_DEVICE", os.path.join(folder, "moc.sock"))
    d = LibfprintDriver("finger", LibfprintConfig())
    try:
        with pytest.raises(PermanentDeviceError, match="match-on-chip"):
            d.open()
        assert d.present() is None and FprintLoop.running() is None  # nothing held, nothing watched
    finally:
        d.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_the_driver_is_a_devices_table_entry(tmp_path: Path) -> None:
    from tests.support.config import agent_config

    cfg = agent_config(tmp_path, 1883, devices={"finger": {"driver": "libfprint", "libfprint_driver": "elan",
                                                           "ppi": 508}})
    assert cfg.devices["finger"].ppi == 508
    with pytest.raises(Exception, match="ppi"):
        agent_config(tmp_path, 1883, devices={"finger": {"driver": "libfprint", "ppi": 0}})


# --- the mapping and the checks, value by value ------------------------------------------------


def test_libfprints_error_domains_and_codes_are_the_ones_mapped(fprint: Any) -> None:
    FPrint, GLib, Gio = fprint
    assert GLib.quark_to_string(FPrint.DeviceRetry.quark()) == RETRY_DOMAIN
    assert GLib.quark_to_string(FPrint.DeviceError.quark()) == ERROR_DOMAIN
    assert GLib.quark_to_string(Gio.io_error_quark()) == IO_DOMAIN
    assert int(FPrint.DeviceError.REMOVED) == 0x100 and int(FPrint.DeviceError.NOT_SUPPORTED) == 1
    assert [int(FPrint.DeviceRetry.TOO_SHORT), int(FPrint.DeviceRetry.REMOVE_FINGER)] == [1, 3]


def test_classify() -> None:
    assert isinstance(classify(RETRY_DOMAIN, 99, "?", "f"), CaptureRetry)  # an unknown retry code
    assert isinstance(classify(ERROR_DOMAIN, 0x100, "gone", "f"), DeviceDisconnected)
    assert type(classify(ERROR_DOMAIN, 4, "busy", "f")) is TransientDeviceError
    assert isinstance(classify(USB_DOMAIN, 9, "Access denied", "f"), PermanentDeviceError)
    assert "udev" in str(classify(USB_DOMAIN, 9, "Access denied", "f"))
    assert isinstance(classify(USB_DOMAIN, 4, "No device", "f"), DeviceDisconnected)
    assert type(classify("some-other-quark", 1, "odd", "f")) is TransientDeviceError


def test_resolution_never_zero_nor_implausible() -> None:
    assert resolution(0.0, 500, "f") == (500, "config")
    assert resolution(19.685, 508, "f") == (500, "libfprint")
    for hostile in (-19.7, math.nan, math.inf, 1.0, 100.0):
        with pytest.raises(ImplausibleResolution):
            resolution(hostile, 500, "f")


def test_image_sizes_from_the_device_are_checked() -> None:
    assert check_image(64, 48, bytes(64 * 48), "f").shape == (48, 64)
    with pytest.raises(CaptureRetry):
        check_image(20, 400, bytes(20 * 400), "f")
    for width, height, size in ((0, 0, 0), (65535, 400, 65535 * 400), (320, 400, 320 * 400 - 1)):
        with pytest.raises(TransientDeviceError):
            check_image(width, height, bytes(size), "f")


def test_no_libfprint_names_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    assert FprintLoop.running() is None  # else the loop in hand would be used, not imported
    monkeypatch.setitem(sys.modules, "gi", None)  # as on a kiosk without PyGObject
    with pytest.raises(PermanentDeviceError, match="gir1.2-fprint-2.0.*PyGObject"):
        LibfprintDriver("finger", LibfprintConfig()).open()


# --- a registration through the local API --------------------------------------------------------


def test_a_registration_of_ten_fingers_runs_through_libfprint(
        tmp_path: Path, broker: Any, virtual: VirtualImage) -> None:
    from agent.daemon import Agent
    from receiver.service import Receiver
    from tests.support.config import agent_config, receiver_config
    from tests.support.local_api import Api, local_api_section

    config = agent_config(tmp_path, broker.port, capture={"mode": "on-demand"},
                          devices={"finger": {"driver": "libfprint", "libfprint_driver": "virtual_image"}},
                          registration={"face": False, "max_attempts": 2},
                          local_api=local_api_section(tmp_path))
    out = tmp_path / "received"
    receiver = Receiver(receiver_config(out, config))
    receiver.start()
    agent = Agent(config)
    agent.start()
    try:
        api = Api.for_agent(agent)
        driver = agent.workers["finger"].driver
        assert isinstance(driver, LibfprintDriver)
        virtual.connect()
        sid = api.ok("POST", "/v1/sessions", {"applicant_ref": "APP-LFP-1", "operator_id": "op-1"})["id"]
        fed = {}
        for position in range(1, 11):
            fed[position] = synthesize(100 + position, 320, 400)
            result = when_waiting_api(api, sid, driver, lambda p=position: virtual.image(fed[p]))
            assert result["item"] == f"finger-{position}" and result["attempts"] == 1, result
        assert api.ok("POST", f"/v1/sessions/{sid}/complete")["state"] == "completed"
        folder = out / config.kiosk.id / "registrations"
        wait_until(lambda: (folder / f"{sid}.complete.json").exists(), 30, what="registration complete")
        assert len(json.loads((folder / f"{sid}.complete.json").read_text())["captures"]) == 10
        stored = {p: json.loads(p.read_text()) for p in (out / config.kiosk.id).glob("*.json")}
        fingers = {m["position"]: p for p, m in stored.items() if m.get("modality") == "finger"}
        assert sorted(fingers) == list(range(1, 11))
        assert {stored[p]["ppi"] for p in fingers.values()} == {500}
        assert all(stored[p]["quality_detail"]["minutiae"] > 10 for p in fingers.values())
        image = decoded(fingers[3].with_suffix(".png").read_bytes())
        assert np.array_equal(image, fed[3])  # the fed print, unchanged, at the receiver
    finally:
        agent.stop()
        receiver.stop()


def when_waiting_api(api: Any, sid: str, driver: LibfprintDriver, act: Callable[[], None]) -> Any:
    box: dict[str, Any] = {}
    caller = threading.Thread(target=lambda: box.update(r=api.ok("POST", f"/v1/sessions/{sid}/capture")))
    caller.start()
    try:
        assert driver.waits_for_finger(20), "libfprint never asked for a finger"
        act()
    finally:
        caller.join(60)
    return box["r"]
