"""Driver gt521f: the codec against the datasheet's bytes, the driver against the wire-level
emulator (tests/emulators/gt521f.py) with every fault, the LED only on while capturing."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from drivers import (
    CaptureRequest,
    CaptureRetry,
    DeviceDisconnected,
    PermanentDeviceError,
    TransientDeviceError,
    driver_class,
)
from drivers.errors import ImplausibleResolution
from drivers.gt521f import Gt521fConfig, Gt521fDriver
from drivers.gt521f_codec import (
    Corrupt,
    Data,
    OpenInfo,
    PacketDecoder,
    Response,
    encode_command,
    encode_data,
)
from drivers.png_phys import png_ppi
from tests.emulators.gt521f import Gt521fEmulator, default_image
from tests.support.paths import ROOT

FAST: dict[str, Any] = {"poll_interval_s": 0.002, "probe_timeout_s": 0.05, "reply_timeout_s": 0.15,
                        "capture_timeout_s": 2.0}


def decode(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)


def driver_for(port: str, **config: Any) -> Gt521fDriver:
    return Gt521fDriver("finger", Gt521fConfig.model_validate({"port": port, **FAST, **config}))


@pytest.fixture
def emu() -> Iterator[Gt521fEmulator]:
    with Gt521fEmulator() as device:
        yield device


@pytest.fixture
def opened(emu: Gt521fEmulator) -> Iterator[Gt521fDriver]:
    driver = driver_for(emu.port)
    driver.open()
    yield driver
    driver.close()


def capture_exact(driver: Gt521fDriver, emu: Gt521fEmulator) -> None:
    assert np.array_equal(decode(driver.capture(CaptureRequest()).image), emu.image)
    assert not emu.led


# --- codec: golden bytes -------------------------------------------------------------------


@pytest.mark.parametrize(("packet", "golden"), [
    (encode_command(0x01, 0), "55 AA 01 00 00 00 00 00 01 00 01 01"),  # Open (datasheet example)
    (encode_command(0x12, 0), "55 AA 01 00 00 00 00 00 12 00 12 01"),  # CmosLed off
    (encode_command(0x12, 1), "55 AA 01 00 01 00 00 00 12 00 13 01"),  # CmosLed on
    (encode_command(0x04, 115200), "55 AA 01 00 00 C2 01 00 04 00 C7 01"),  # ChangeBaudRate
    (encode_command(0x30, 0), "55 AA 01 00 00 00 00 00 30 00 30 01"),  # an ACK response
    (encode_data(b"\x01\x02"), "5A A5 01 00 01 02 03 01"),
])
def test_packets_golden(packet: bytes, golden: str) -> None:
    assert packet == bytes.fromhex(golden)


def test_decoder_responses_and_data_in_one_stream() -> None:
    decoder = PacketDecoder()
    stream = b"\xff\x55" + encode_command(0x30, 0) + encode_data(b"abc") + encode_command(0x31, 0x1012)
    for byte in stream:
        decoder.feed(bytes([byte]))
    assert decoder.next_response() == Response(1, 0, 0x30)
    assert decoder.next_data(3) == Data(1, b"abc")
    assert decoder.next_response() == Response(1, 0x1012, 0x31)
    assert decoder.next_response() is None


def test_decoder_reports_bad_checksums_and_resynchronises() -> None:
    ack = encode_command(0x30, 7)
    decoder = PacketDecoder()
    decoder.feed(ack[:-1] + b"\x00" + ack)
    assert isinstance(decoder.next_response(), Corrupt)
    assert decoder.next_response() == Response(1, 7, 0x30)
    data = encode_data(bytes(10))
    decoder.feed(data[:-2] + b"\x00\x00" + data)
    assert isinstance(decoder.next_data(10), Corrupt)
    assert decoder.next_data(10) == Data(1, bytes(10))


def test_open_info_parse() -> None:
    info = OpenInfo.parse(bytes.fromhex("07081220 00200000") + bytes(range(16)))
    assert info.firmware == 0x20120807 and info.iso_area_max_size == 0x2000
    assert info.serial_hex == "000102030405060708090A0B0C0D0E0F"


def test_config() -> None:
    config = Gt521fConfig(port="/dev/serial0")
    assert (config.baud, config.transfer_baud, config.image, config.ppi) == (9600, 115200, "full", 450)
    with pytest.raises(ValidationError, match="one of 9600"):
        Gt521fConfig(port="/dev/serial0", baud=57601)
    with pytest.raises(ValidationError, match="Extra inputs"):
        Gt521fConfig(port="/dev/serial0", password=1)  # the family has none
    assert driver_class("gt521f") is Gt521fDriver


# --- the driver on the emulator ------------------------------------------------------------


def test_capture_is_pixel_exact_with_the_led_on_only_while_capturing(emu: Gt521fEmulator,
                                                                     opened: Gt521fDriver) -> None:
    assert emu.led_log == [False]  # open() made sure it is off
    started = time.monotonic()
    image = opened.capture(CaptureRequest(position=7))
    elapsed = time.monotonic() - started
    pixels = decode(image.image)
    assert pixels.dtype == np.uint8 and pixels.shape == (202, 258)
    assert np.array_equal(pixels, default_image(0))
    assert (image.width, image.height, image.ppi, image.position) == (258, 202, 450, 7)
    assert png_ppi(image.image) == 450
    assert emu.led_log == [False, True, False]
    # The LED goes off before the long upload: the person may lift the finger.
    assert emu.commands[-4:] == ["IsPressFinger", "CaptureFinger", "CmosLed", "GetImage"]
    assert elapsed < 2.0


def test_raw_image_is_refused_before_touching_the_module(emu: Gt521fEmulator) -> None:
    # GetRawImage has no known resolution: it must never become a capture (and a record that
    # says 0 ppi). Refused before the LED comes on, naming the setting to change.
    driver = driver_for(emu.port, image="raw")
    driver.open()
    before = list(emu.commands)
    with pytest.raises(ImplausibleResolution, match=r'devices\.finger\.image.*set image = "full"'):
        driver.capture(CaptureRequest())
    driver.close()
    assert isinstance(ImplausibleResolution("x"), PermanentDeviceError)
    assert emu.commands[len(before):len(before) + 1] in ([], ["Close"])  # nothing asked of it
    assert True not in emu.led_log and "GetRawImage" not in emu.commands  # LED never on


@pytest.mark.parametrize(("capacity", "model"), [(200, "GT-521F32"), (3000, "GT-521F52")])
def test_probe_identifies_the_model_without_side_effects(capacity: int, model: str) -> None:
    with Gt521fEmulator(capacity=capacity) as emu:
        info = driver_for(emu.port).probe()
    assert (info.model, info.serial, info.firmware) == (model, "A0A1A2A3A4A5A6A7A8A9AAABACADAEAF", "20120807")
    assert emu.commands == ["Open", "CheckEnrolled"]
    assert emu.led_log == [] and emu.baud == 9600  # no LED, no baud change


def test_open_switches_to_the_transfer_rate_and_reopens_after_that(emu: Gt521fEmulator) -> None:
    driver = driver_for(emu.port)
    assert driver.open().extra["baud"] == 115200
    assert emu.baud == 115200
    driver.close()
    # The module stays at 115200 until power is lost; the next open finds it there.
    driver = driver_for(emu.port)
    assert driver.open().extra["baud"] == 115200
    capture_exact(driver, emu)
    driver.close()


def test_staying_at_the_power_on_rate(emu: Gt521fEmulator) -> None:
    driver = driver_for(emu.port, transfer_baud=9600)
    driver.open()
    capture_exact(driver, emu)
    driver.close()
    assert "ChangeBaudRate" not in emu.commands and emu.baud == 9600


def test_probe_finds_a_module_at_another_rate() -> None:
    with Gt521fEmulator(baud=38400) as emu:
        driver = driver_for(emu.port)
        assert driver.probe().extra["baud"] == 38400
        assert emu.noise_bytes > 0


# --- faults: the person ------------------------------------------------------------------


def test_no_finger_for_some_polls_then_a_capture(emu: Gt521fEmulator, opened: Gt521fDriver) -> None:
    emu.inject(no_finger=15)
    capture_exact(opened, emu)
    assert emu.commands.count("IsPressFinger") == 16


def test_no_finger_until_the_timeout_turns_the_led_off(emu: Gt521fEmulator, opened: Gt521fDriver) -> None:
    emu.inject(no_finger=10**6)
    with pytest.raises(CaptureRetry) as info:
        opened.capture(CaptureRequest(timeout_s=0.1))
    assert info.value.reason == "no finger" and info.value.hint
    assert emu.led_log[-2:] == [True, False] and not emu.led
    emu.inject(no_finger=0)
    capture_exact(opened, emu)


@pytest.mark.parametrize(("error", "reason"), [(0x100C, "image too messy"), (0x1012, "finger lifted")])
def test_a_bad_finger_is_a_retry_for_the_person(emu: Gt521fEmulator, opened: Gt521fDriver, error: int,
                                                reason: str) -> None:
    emu.capture_errors.append(error)
    with pytest.raises(CaptureRetry) as info:
        opened.capture(CaptureRequest())
    assert info.value.reason == reason
    assert not emu.led
    capture_exact(opened, emu)


# --- faults: the line ----------------------------------------------------------------------


@pytest.mark.parametrize("fault", [
    {"corrupt": 1},                       # CmosLed's response
    {"drop": 1},
    {"skip_packets": 5, "corrupt": 1},    # the image's data packet
    {"skip_packets": 5, "drop": 1},
    {"skip_packets": 4, "corrupt": 2},    # GetImage's response, then the data
    {"byte_by_byte": 3000},
    {"delay_s": 0.05, "delay_count": 3},
    {"delay_s": 0.25, "delay_count": 1},
], ids=str)
def test_line_faults_are_recovered(emu: Gt521fEmulator, opened: Gt521fDriver, fault: dict[str, Any]) -> None:
    emu.inject(**fault)
    capture_exact(opened, emu)
    capture_exact(opened, emu)


def test_persistent_corruption_is_transient_and_the_led_goes_off(emu: Gt521fEmulator,
                                                                 opened: Gt521fDriver) -> None:
    emu.inject(skip_packets=1, corrupt=3)  # LED on fine, then every IsPressFinger reply broken
    with pytest.raises(TransientDeviceError, match="IS_PRESS_FINGER.*3 attempt"):
        opened.capture(CaptureRequest())
    assert not emu.led
    capture_exact(opened, emu)


def test_unplugged_is_device_disconnected(emu: Gt521fEmulator, opened: Gt521fDriver) -> None:
    emu.unplug()
    with pytest.raises(DeviceDisconnected):
        opened.capture(CaptureRequest())
    assert not opened.health().ok


def test_unplugged_during_the_image(emu: Gt521fEmulator, opened: Gt521fDriver) -> None:
    emu.inject(unplug_on="GetImage")
    with pytest.raises(DeviceDisconnected):
        opened.capture(CaptureRequest())


def test_health(opened: Gt521fDriver) -> None:
    assert opened.health().ok


def test_standalone_emulator_prints_its_pty_and_serves() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tests.emulators.gt521f", "--capacity", "200"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/pts/")
        driver = driver_for(path)
        assert driver.open().model == "GT-521F32"
        pixels = decode(driver.capture(CaptureRequest()).image)
        driver.close()
        assert np.array_equal(pixels, default_image(0))
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
