"""Driver zfm: the codec against the datasheet's bytes, the driver against the wire-level
emulator (tests/emulators/zfm.py) with every fault, and the agent's device worker through
an unplug and a replug."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from agent.capture.workers import DeviceWorker
from agent.config import ConfigError, validate_config
from drivers import (
    CaptureRequest,
    CaptureRetry,
    DeviceDisconnected,
    PermanentDeviceError,
    TransientDeviceError,
    driver_class,
)
from drivers.png_phys import png_ppi
from drivers.zfm import ZfmConfig, ZfmDriver
from drivers.zfm_codec import (
    IMAGE_BYTES,
    Corrupt,
    Packet,
    PacketDecoder,
    ProductInfo,
    SysPara,
    command,
    encode,
    img2tz,
    unpack_image,
    verify_password,
)
from tests.emulators.pty_device import load_image
from tests.emulators.zfm import ZfmEmulator, default_image, reduce
from tests.support.paths import ROOT
from tests.support.waiting import wait_until

#: Short timeouts: the pty answers in microseconds, so these only bound the fault tests.
FAST: dict[str, Any] = {"poll_interval_s": 0.002, "probe_timeout_s": 0.05, "reply_timeout_s": 0.15,
                        "capture_timeout_s": 2.0}


def decode(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.fixture
def emu() -> Iterator[ZfmEmulator]:
    with ZfmEmulator() as device:
        yield device


def driver_for(port: str, **config: Any) -> ZfmDriver:
    return ZfmDriver("finger", ZfmConfig.model_validate({"port": port, **FAST, **config}))


@pytest.fixture
def opened(emu: ZfmEmulator) -> Iterator[ZfmDriver]:
    driver = driver_for(emu.port)
    driver.open()
    yield driver
    driver.close()


def capture_exact(driver: ZfmDriver, emu: ZfmEmulator) -> None:
    image = driver.capture(CaptureRequest(position=2))
    assert np.array_equal(decode(image.image), emu.expected_image())


# --- codec: golden bytes -------------------------------------------------------------------


def test_vfypwd_golden_bytes_from_the_datasheet() -> None:
    assert verify_password(0xFFFFFFFF, 0) == bytes.fromhex("EF01 FFFFFFFF 01 0007 13 00000000 001B")


@pytest.mark.parametrize(("packet", "golden"), [
    (command(0xFFFFFFFF, 0x01), "EF01 FFFFFFFF 01 0003 01 0005"),  # GenImg
    (img2tz(0xFFFFFFFF, 1), "EF01 FFFFFFFF 01 0004 02 01 0008"),  # Img2Tz, buffer 1
    (command(0xFFFFFFFF, 0x0A), "EF01 FFFFFFFF 01 0003 0A 000E"),  # UpImage
    (command(0xFFFFFFFF, 0x0F), "EF01 FFFFFFFF 01 0003 0F 0013"),  # ReadSysPara
    (encode(0xFFFFFFFF, 0x07, b"\x00"), "EF01 FFFFFFFF 07 0003 00 000A"),  # ack: ok
    (verify_password(0x12345678, 0xDEADBEEF), "EF01 12345678 01 0007 13 DEADBEEF 0353"),
])
def test_packets_golden(packet: bytes, golden: str) -> None:
    assert packet == bytes.fromhex(golden)


def test_decoder_skips_garbage_and_reassembles_split_packets() -> None:
    ack = bytes.fromhex("EF01 FFFFFFFF 07 0003 00 000A")
    decoder = PacketDecoder()
    stream = b"\x00\xef\x55" + ack + b"\xef" + ack
    for byte in stream:  # one byte at a time, the worst a UART does
        decoder.feed(bytes([byte]))
    assert decoder.next() == Packet(0xFFFFFFFF, 0x07, b"\x00")
    assert decoder.next() == Packet(0xFFFFFFFF, 0x07, b"\x00")
    assert decoder.next() is None
    assert decoder.skipped == 4


def test_decoder_reports_a_bad_checksum_and_resynchronises() -> None:
    ack = bytes.fromhex("EF01 FFFFFFFF 07 0003 00 000A")
    decoder = PacketDecoder()
    decoder.feed(ack[:-1] + b"\x0b" + ack)
    item = decoder.next()
    assert isinstance(item, Corrupt) and (item.expected, item.received) == (0x000A, 0x000B)
    assert decoder.next() == Packet(0xFFFFFFFF, 0x07, b"\x00")


def test_decoder_finds_a_packet_swallowed_by_a_short_one() -> None:
    # A dropped byte makes the first packet claim one byte of the next; the rescan finds it.
    ack = bytes.fromhex("EF01 FFFFFFFF 07 0003 00 000A")
    decoder = PacketDecoder()
    decoder.feed(ack[:9] + ack[10:] + ack)
    assert isinstance(decoder.next(), Corrupt)
    assert decoder.next() == Packet(0xFFFFFFFF, 0x07, b"\x00")


def test_unpack_image_scales_nibbles_by_17() -> None:
    data = bytes([0xF0, 0x1E]) + bytes(IMAGE_BYTES - 2)
    image = unpack_image(data)
    assert image.shape == (288, 256) and image.dtype == np.uint8
    assert list(image[0, :4]) == [255, 0, 17, 238]
    with pytest.raises(ValueError, match="expected 36864"):
        unpack_image(data[:-1])


def test_sys_para_and_product_info_parse() -> None:
    sys_para = SysPara.parse(bytes.fromhex("0000 0009 012C 0003 FFFFFFFF 0002 0006"))
    assert (sys_para.library_size, sys_para.packet_size, sys_para.baud, sys_para.address) == (
        300, 128, 57600, 0xFFFFFFFF)
    raw = (b"R503".ljust(16, b"\0") + b"B001" + b"SN123456" + bytes([2, 1]) + b"FPC".ljust(8, b"\0")
           + bytes.fromhex("00C0 00C0 0600 00C8"))
    info = ProductInfo.parse(raw)
    assert (info.model, info.serial, info.hardware, info.sensor_width, info.database_size) == (
        "R503", "SN123456", "2.1", 192, 200)


# --- config --------------------------------------------------------------------------------


def test_config_defaults_are_the_datasheets() -> None:
    config = ZfmConfig(port="/dev/ttyUSB0")
    assert (config.baud, config.address, config.password, config.ppi) == (57600, 0xFFFFFFFF, 0, 500)
    assert "password" not in repr(config)


def test_config_rejects_bad_values_naming_them() -> None:
    with pytest.raises(ValidationError, match="9600 x N"):
        ZfmConfig(port="/dev/ttyUSB0", baud=12345)
    with pytest.raises(ValidationError):
        ZfmConfig(port="/dev/ttyUSB0", address=1 << 32)
    with pytest.raises(ConfigError) as info:
        validate_config({"kiosk": {"id": "k"}, "mqtt": {"allow_plaintext": True},
                         "devices": {"finger": {"driver": "zfm", "port": "/dev/ttyUSB0", "pasword": 1}}})
    assert any(p.startswith("devices.finger.pasword: unknown key") for p in info.value.problems)
    assert driver_class("zfm") is ZfmDriver


def test_package_imports_without_pyserial() -> None:
    code = ("import sys; sys.modules['serial'] = None\n"
            "import drivers.zfm, drivers.gt521f\n"
            "from drivers import PermanentDeviceError\n"
            "d = drivers.zfm.ZfmDriver('f', drivers.zfm.ZfmConfig(port='/dev/null'))\n"
            "try:\n    d.open()\nexcept PermanentDeviceError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "pyserial is not installed" in out.stdout


# --- the driver on the emulator ------------------------------------------------------------


def test_capture_is_pixel_exact_after_the_4_bit_reduction(emu: ZfmEmulator, opened: ZfmDriver) -> None:
    started = time.monotonic()
    image = opened.capture(CaptureRequest(position=2))
    elapsed = time.monotonic() - started
    pixels = decode(image.image)
    assert pixels.dtype == np.uint8 and pixels.shape == (288, 256)
    assert np.array_equal(pixels, reduce(default_image(0)))
    assert (image.width, image.height, image.ppi, image.position) == (256, 288, 500, 2)
    assert png_ppi(image.image) == 500
    assert len(np.unique(pixels)) > 8  # a real print, not a blank
    assert emu.commands[-3:] == ["GenImg", "Img2Tz", "UpImage"]
    assert elapsed < 2.0, f"capture over the pty took {elapsed:.3f} s"


def test_probe_identifies_without_side_effects(emu: ZfmEmulator) -> None:
    info = driver_for(emu.port).probe()
    assert (info.driver, info.model, info.serial) == ("zfm", "ZFM-EMU", "EMU00000")
    assert info.extra["baud"] == 57600 and info.extra["packet_size"] == 128
    assert emu.commands == ["VfyPwd", "ReadSysPara", "ReadProdInfo"]  # no GenImg: no LED, no image


def test_probe_without_product_info() -> None:
    with ZfmEmulator(product_info=False) as emu:
        info = driver_for(emu.port).probe()
    assert (info.model, info.serial) == ("ZFM-compatible", "unknown")


def test_probe_finds_the_module_at_another_baud_rate() -> None:
    with ZfmEmulator(baud=115200) as emu:
        driver = driver_for(emu.port, baud=57600)
        info = driver.open()
        assert info.extra["baud"] == 115200
        assert emu.noise_bytes > 0  # the first attempt at 57600 was line noise to the module
        capture_exact(driver, emu)
        driver.close()


@pytest.mark.parametrize("packet_size", [32, 256])
def test_other_packet_sizes(packet_size: int) -> None:
    with ZfmEmulator(packet_size=packet_size) as emu:
        driver = driver_for(emu.port)
        driver.open()
        capture_exact(driver, emu)
        driver.close()


def test_image_from_a_file_is_served_and_reduced(tmp_path: Path) -> None:
    path = tmp_path / "gradient.png"
    cv2.imwrite(str(path), np.tile(np.arange(256, dtype=np.uint8), (288, 1)))
    with ZfmEmulator(image=load_image(path, 256, 288)) as emu:
        driver = driver_for(emu.port)
        driver.open()
        pixels = decode(driver.capture(CaptureRequest()).image)
        driver.close()
    assert list(pixels[0, 14:18]) == [0, 0, 17, 17]  # 0..15 -> 0, 16..31 -> 17
    assert np.array_equal(pixels, reduce(emu.image))


# --- faults: the person ------------------------------------------------------------------


def test_no_finger_for_some_polls_then_a_capture(emu: ZfmEmulator, opened: ZfmDriver) -> None:
    emu.inject(no_finger=20)
    capture_exact(opened, emu)
    assert emu.commands.count("GenImg") == 21


def test_no_finger_until_the_timeout_is_a_retry_with_a_hint(emu: ZfmEmulator, opened: ZfmDriver) -> None:
    emu.inject(no_finger=10**6)
    started = time.monotonic()
    with pytest.raises(CaptureRetry) as info:
        opened.capture(CaptureRequest(timeout_s=0.2))
    assert 0.15 < time.monotonic() - started < 1.0
    assert info.value.reason == "no finger" and "finger" in info.value.hint
    emu.inject(no_finger=0)
    capture_exact(opened, emu)


@pytest.mark.parametrize(("code", "reason"), [(0x06, "image too messy"), (0x07, "too few features")])
def test_poor_prints_are_retries_for_the_person(emu: ZfmEmulator, opened: ZfmDriver, code: int,
                                                reason: str) -> None:
    emu.img2tz_codes.append(code)
    with pytest.raises(CaptureRetry) as info:
        opened.capture(CaptureRequest())
    assert info.value.reason == reason and info.value.hint
    assert "UpImage" not in emu.commands
    capture_exact(opened, emu)


# --- faults: the line ----------------------------------------------------------------------


@pytest.mark.parametrize("fault", [
    {"corrupt": 1},                       # a reply's checksum
    {"drop": 1},                          # a byte of a reply
    {"skip_packets": 150, "corrupt": 1},  # a data packet in the middle of the image
    {"skip_packets": 150, "drop": 1},
    {"skip_packets": 2, "corrupt": 2},    # the upload's ack, then the first data packet
    {"byte_by_byte": 2000},               # replies and the first image packets a byte at a time
    {"delay_s": 0.05, "delay_count": 3},  # late, within the reply timeout
    {"delay_s": 0.25, "delay_count": 1},  # later than the reply timeout: resend
], ids=str)
def test_line_faults_are_recovered(emu: ZfmEmulator, opened: ZfmDriver, fault: dict[str, Any]) -> None:
    emu.inject(**fault)
    capture_exact(opened, emu)
    capture_exact(opened, emu)  # and the next capture is clean


def test_persistent_corruption_is_transient_then_recovers(emu: ZfmEmulator, opened: ZfmDriver) -> None:
    emu.inject(corrupt=3)  # every attempt at the first GenImg
    with pytest.raises(TransientDeviceError, match="GEN_IMG.*3 attempt"):
        opened.capture(CaptureRequest())
    capture_exact(opened, emu)


def test_an_upload_broken_every_time_is_a_transient_error(emu: ZfmEmulator, opened: ZfmDriver) -> None:
    opened.capture(CaptureRequest())
    emu.inject(skip_packets=3, corrupt=10**6)  # GenImg, Img2Tz, UpImage acks fine, then all broken
    with pytest.raises(TransientDeviceError, match="image upload failed 3 time"):
        opened.capture(CaptureRequest())
    emu.inject(corrupt=0)
    capture_exact(opened, emu)


def test_unplugged_is_device_disconnected(emu: ZfmEmulator, opened: ZfmDriver) -> None:
    emu.unplug()
    with pytest.raises(DeviceDisconnected):
        opened.capture(CaptureRequest())
    assert not opened.health().ok


def test_unplugged_during_the_upload(emu: ZfmEmulator, opened: ZfmDriver) -> None:
    emu.inject(unplug_on="UpImage")
    with pytest.raises(DeviceDisconnected):
        opened.capture(CaptureRequest())


def test_a_missing_port_is_device_disconnected(tmp_path: Path) -> None:
    with pytest.raises(DeviceDisconnected, match="not there"):
        driver_for(str(tmp_path / "ttyUSB9")).open()


def test_nothing_answering_names_the_settings_to_check() -> None:
    # loop:// echoes our own commands back: a port that works with no module on it.
    driver = driver_for("loop://")
    with pytest.raises(TransientDeviceError, match="no ZFM.*devices.finger.baud"):
        driver.open()
    driver.close()


# --- faults: the config --------------------------------------------------------------------


def test_wrong_password_is_permanent_and_names_the_setting() -> None:
    with ZfmEmulator(password=0x1234) as emu:
        with pytest.raises(PermanentDeviceError, match=r"devices\.finger\.password"):
            driver_for(emu.port).open()
        driver = driver_for(emu.port, password=0x1234)
        driver.open()
        capture_exact(driver, emu)
        driver.close()


def test_wrong_address_is_permanent_and_names_the_setting(emu: ZfmEmulator) -> None:
    with pytest.raises(PermanentDeviceError, match=r"devices\.finger\.address = 0x12345678"):
        driver_for(emu.port, address=0x12345678).open()
    assert "ignored:address" in emu.commands


def test_a_module_with_its_own_address() -> None:
    with ZfmEmulator(address=0x0BADF00D) as emu:
        with pytest.raises(TransientDeviceError, match=r"devices\.finger\.address"):
            driver_for(emu.port).open()  # silence: it ignores packets for 0xFFFFFFFF
        driver = driver_for(emu.port, address=0x0BADF00D)
        assert driver.open().extra["address"] == "0x0BADF00D"
        capture_exact(driver, emu)
        driver.close()


def test_health(emu: ZfmEmulator, opened: ZfmDriver) -> None:
    assert opened.health().ok
    opened.close()
    assert opened.health() == opened.health() and not opened.health().ok


# --- standalone and in the agent -----------------------------------------------------------


def test_standalone_emulator_prints_its_pty_and_serves() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tests.emulators.zfm", "--no-finger", "3"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/pts/")
        driver = driver_for(path)
        driver.open()
        pixels = decode(driver.capture(CaptureRequest()).image)
        driver.close()
        assert np.array_equal(pixels, reduce(default_image(0)))
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err


def test_device_worker_goes_offline_on_unplug_and_online_when_it_returns(tmp_path: Path) -> None:
    link = tmp_path / "kiosk-finger0"  # as udev's symlink would be
    first = ZfmEmulator(link=link).start()
    second = ZfmEmulator(link=link, seed=1)
    worker = DeviceWorker("finger", driver_for(str(link)), reopen_min_s=0.05, reopen_max_s=0.2)
    worker.start()
    try:
        assert worker.wait_first_open(5) and worker.status().state == "online"
        assert worker.submit(lambda d: d.capture(CaptureRequest())).result(5).width == 256
        first.unplug()
        with pytest.raises(DeviceDisconnected):
            worker.submit(lambda d: d.capture(CaptureRequest())).result(5)
        assert worker.status().state == "offline"
        time.sleep(0.3)  # several reopen attempts while the port is gone
        assert worker.status().state == "offline" and worker._thread.is_alive()
        second.start()  # a module appears again behind the same path
        wait_until(lambda: worker.status().state == "online", 5, what="the worker back online")
        image = worker.submit(lambda d: d.capture(CaptureRequest())).result(5)
        assert np.array_equal(decode(image.image), second.expected_image())
    finally:
        worker.stop()
        first.stop()
        second.stop()


def test_device_worker_fails_on_a_wrong_password() -> None:
    with ZfmEmulator(password=7) as emu:
        worker = DeviceWorker("finger", driver_for(emu.port))
        worker.start()
        try:
            assert worker.wait_first_open(5)
            status = worker.status()
            assert status.state == "failed" and "devices.finger.password" in status.error
        finally:
            worker.stop()
