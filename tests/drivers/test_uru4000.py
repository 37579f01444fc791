"""Driver ``uru4000`` against emulated U.are.U scanners on an emulated pyusb bus
(tests/emulators/uru4000_backend.py), plus the pure codec against hand-made frames."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import usb.core
from pydantic import ValidationError

from agent.capture.workers import DeviceWorker
from cli.main import main
from drivers import (
    CaptureRequest,
    CaptureRetry,
    DeviceDisconnected,
    PermanentDeviceError,
    TransientDeviceError,
    driver_class,
    registry,
    serial_scan,
    usb_scan,
)
from drivers.png_phys import png_ppi
from drivers.uru4000 import Uru4000Config, Uru4000Driver
from drivers.uru4000_codec import (
    HEIGHT,
    WIDTH,
    BlockFlag,
    FrameError,
    FrameHeader,
    UnsupportedScrambling,
    assemble,
    decode_blocks,
    descramble,
    next_key,
)
from tests.emulators import uru4000_backend as emu
from tests.emulators.uru4000_backend import (
    SCRAMBLED_BLOCKS,
    UNDECODABLE_BLOCKS,
    EmulatedBus,
    EmulatedScanner,
    gradient_image,
)
from tests.support.config import to_toml
from tests.support.paths import ROOT
from tests.support.uru4000 import FAST, decode_png, make_driver
from tests.support.waiting import wait_until


@pytest.fixture
def scanner() -> EmulatedScanner:
    return EmulatedScanner(image=gradient_image())


@pytest.fixture
def bus(scanner: EmulatedScanner) -> EmulatedBus:
    return EmulatedBus(scanner)


@pytest.fixture
def driver(bus: EmulatedBus) -> Iterator[Uru4000Driver]:
    d = make_driver(bus)
    yield d
    d.close()


def capture(driver: Uru4000Driver, timeout_s: float | None = None) -> np.ndarray:
    return decode_png(driver.capture(CaptureRequest(position=2, timeout_s=timeout_s)).image)


# --- the codec --------------------------------------------------------------------------------


def test_key_stream_matches_the_emulators_bit_serial_lfsr() -> None:
    rng = np.random.default_rng(1)
    for key in map(int, rng.integers(0, 2**32, 200, dtype=np.uint64)):
        assert next_key(key) == emu._step(key)


def test_descramble_undoes_the_emulators_scrambling() -> None:
    scanner = EmulatedScanner(image=gradient_image())
    plain = bytearray(scanner.sensor_rows()[:100].tobytes())
    scrambled = scanner._scramble(plain, ((0x02, 100),))
    assert scrambled != plain
    data = bytearray(scrambled)
    descramble(data, 0, len(data), scanner.secret_keys[scanner.key_number])
    assert data[:-1] == plain[:-1] and data[-1] == 0  # the last byte is lost, as on the scanner


def header(num_lines: int, blocks: list[tuple[int, int]], key_number: int = 0) -> bytes:
    table = b"".join(bytes(b) for b in blocks).ljust(30, b"\0")
    return bytes(4) + struct.pack("<HB", num_lines, key_number) + bytes(9) + table + bytes(18)


def test_header_parse_and_checks() -> None:
    raw = header(290, [(0x02, 100), (0x80, 190)], key_number=9)
    parsed = FrameHeader.parse(raw)
    assert (parsed.num_lines, parsed.key_number, parsed.scrambled) == (290, 9, True)
    assert [(b.flags, b.lines) for b in parsed.blocks] == [(0x02, 100), (0x80, 190)]
    parsed.check(64 + 290 * WIDTH)
    with pytest.raises(FrameError, match="promises 290 lines"):
        parsed.check(64 + 289 * WIDTH)
    with pytest.raises(FrameError, match="0 lines"):
        FrameHeader.parse(bytes(64)).check(64)
    with pytest.raises(FrameError, match="covers 100"):
        FrameHeader.parse(header(290, [(0, 100)])).check(64 + 290 * WIDTH)
    with pytest.raises(FrameError, match="shorter"):
        FrameHeader.parse(bytes(10))


def test_absent_block_repeats_the_rows_after_it() -> None:
    rows = np.arange(280, dtype=np.uint8).repeat(WIDTH).reshape(280, WIDTH)
    hdr = FrameHeader.parse(header(280, [(0, 100), (BlockFlag.NOT_PRESENT, 10), (0, 180)]))
    out = assemble(hdr, rows.tobytes())
    assert (out[:100] == rows[:100]).all()
    assert (out[100:110] == rows[100:110]).all()  # the absent block shows the next rows
    assert (out[110:290] == rows[100:280]).all()


def test_scrambling_without_key_update_is_refused() -> None:
    hdr = FrameHeader.parse(header(290, [(0x06, 145), (0, 145)]))
    with pytest.raises(UnsupportedScrambling, match="0x06"):
        decode_blocks(hdr, bytearray(290 * WIDTH), lambda n: 0)


# --- capture ----------------------------------------------------------------------------------


@pytest.mark.parametrize("product_id", [0x000A, 0x0007, 0x0008])
@pytest.mark.parametrize("blocks", [emu.PLAIN_BLOCKS, SCRAMBLED_BLOCKS], ids=["plain", "scrambled"])
def test_capture_is_exactly_the_served_frame(product_id: int, blocks: Any) -> None:
    scanner = EmulatedScanner(product_id=product_id, image=gradient_image())
    scanner.faults.blocks = blocks
    driver = make_driver(EmulatedBus(scanner))
    info = driver.open()
    try:
        image = driver.capture(CaptureRequest(position=3))
    finally:
        driver.close()
    assert info.extra["usb_id"] == f"05ba:{product_id:04x}"
    assert info.extra["flipped"] == (product_id != 0x000A)
    pixels = decode_png(image.image)
    assert pixels.dtype == np.uint8 and pixels.shape == (HEIGHT, WIDTH)
    assert np.array_equal(pixels, scanner.expected_image())
    assert (image.width, image.height, image.ppi, png_ppi(image.image)) == (WIDTH, HEIGHT, 512, 512)
    assert image.position == 3 and image.quality_detail["scrambled"] == (blocks is SCRAMBLED_BLOCKS)
    # One key exchange for the frame's key, one for the block that changes it.
    assert scanner.key_exchanges == (2 if blocks is SCRAMBLED_BLOCKS else 0)
    if blocks is not SCRAMBLED_BLOCKS:
        assert np.array_equal(pixels, scanner.image)  # nothing lost at all


def test_a_real_looking_print_survives_descrambling() -> None:
    scanner = EmulatedScanner()  # the synthetic fingerprint, not the gradient
    scanner.faults.blocks = SCRAMBLED_BLOCKS
    driver = make_driver(EmulatedBus(scanner))
    driver.open()
    try:
        assert np.array_equal(capture(driver), scanner.expected_image())
    finally:
        driver.close()


def test_open_runs_the_power_up_sequence(driver: Uru4000Driver, scanner: EmulatedScanner) -> None:
    info = driver.open()
    assert (info.model, info.serial, info.firmware) == ("U.are.U 4000B/4500", "EMU0001", "0023/0104")
    assert info.extra["usb_port"] == "1-1.4"
    writes = [line for line in scanner.log if line.startswith("write 07")]
    assert writes == ["write 07 00"]  # from low power (0x80): the low bits, nothing else
    assert scanner.power_ups == 1 and scanner.hwstat == 0x00
    assert driver.health().ok


def test_open_from_full_power_goes_through_low_power_first(bus: EmulatedBus,
                                                           scanner: EmulatedScanner) -> None:
    driver = make_driver(bus)
    driver.open()
    driver.close()
    scanner.hwstat, scanner.power_on_hwstat = 0x00, 0x00
    scanner.log.clear()
    driver.open()
    driver.close()
    assert [line for line in scanner.log if line.startswith("write 07")] == ["write 07 80", "write 07 00"]


def test_confused_power_state_needs_the_reboot_loop() -> None:
    scanner = EmulatedScanner(hwstat=0x84, image=gradient_image())
    driver = make_driver(EmulatedBus(scanner))
    driver.open()
    try:
        assert np.array_equal(capture(driver), scanner.image)
    finally:
        driver.close()
    assert scanner.log[:2] == ["read 07 1", "write 07 04"]


def test_probe_only_reads(driver: Uru4000Driver, scanner: EmulatedScanner) -> None:
    info = driver.probe()
    assert info.model == "U.are.U 4000B/4500" and info.serial == "EMU0001"
    assert not [line for line in scanner.log if line.startswith("write")]
    assert scanner.claimed_by is None and scanner.hwstat == 0x80


def test_close_switches_off_and_releases(driver: Uru4000Driver, scanner: EmulatedScanner) -> None:
    driver.open()
    assert scanner.claimed_by is not None
    driver.close()
    driver.close()
    assert scanner.log[-1] == "write 4E 70" and scanner.claimed_by is None
    assert not driver.health().ok


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["stall_bulk", "timeout_bulk", "short_frames", "stall_control",
                                   "timeout_control"])
def test_a_passing_fault_is_retried(driver: Uru4000Driver, scanner: EmulatedScanner, fault: str) -> None:
    driver.open()
    setattr(scanner.faults, fault, 2)
    assert np.array_equal(capture(driver), scanner.image)
    assert getattr(scanner.faults, fault) == 0
    assert not scanner.bulk_halted  # a stalled endpoint was cleared before trying again


@pytest.mark.parametrize("fault, message", [("stall_bulk", "stalled"), ("timeout_bulk", "timed out"),
                                            ("short_frames", "promises"), ("stall_control", "stalled")])
def test_a_lasting_fault_is_a_transient_device_error(driver: Uru4000Driver, scanner: EmulatedScanner,
                                                      fault: str, message: str) -> None:
    driver.open()
    setattr(scanner.faults, fault, 20)
    with pytest.raises(TransientDeviceError, match=message) as info:
        capture(driver)
    assert not isinstance(info.value, DeviceDisconnected)
    assert getattr(scanner.faults, fault) >= 20 - 3 * 3  # bounded: at most attempts x attempts tries


def test_unplug_mid_frame_is_a_disconnect(driver: Uru4000Driver, scanner: EmulatedScanner) -> None:
    driver.open()
    scanner.faults.unplug_mid_frame = True
    with pytest.raises(DeviceDisconnected, match="gone"):
        capture(driver)
    assert not driver.health().ok
    driver.close()
    with pytest.raises(DeviceDisconnected, match="no U.are.U"):
        driver.open()


def test_fatal_interrupt_powers_the_sensor_up_again(driver: Uru4000Driver, scanner: EmulatedScanner) -> None:
    driver.open()
    scanner.faults.fatal_interrupts = 1
    assert np.array_equal(capture(driver), scanner.image)
    assert scanner.power_ups == 2


def test_repeated_fatal_interrupts_give_up(driver: Uru4000Driver, scanner: EmulatedScanner) -> None:
    driver.open()
    scanner.faults.fatal_interrupts = 5
    with pytest.raises(TransientDeviceError, match="0800"):
        capture(driver)
    assert scanner.faults.fatal_interrupts == 2  # three tries (attempts = 3), no more
    assert scanner.frames_sent == 0


def test_no_finger_is_a_retry_for_the_person(driver: Uru4000Driver, scanner: EmulatedScanner) -> None:
    driver.open()
    scanner.faults.no_finger_polls = None
    with pytest.raises(CaptureRetry) as info:
        capture(driver, timeout_s=0.2)
    assert info.value.reason == "no finger" and "finger" in info.value.hint
    scanner.faults.no_finger_polls = 3
    assert np.array_equal(capture(driver), scanner.image)
    assert scanner.finger_polls == 3


def test_undecodable_scrambling_fails_naming_the_model(driver: Uru4000Driver,
                                                       scanner: EmulatedScanner) -> None:
    driver.open()
    scanner.faults.blocks = UNDECODABLE_BLOCKS
    with pytest.raises(PermanentDeviceError, match=r"U\.are\.U 4000B/4500.*cannot decode.*0x06"):
        capture(driver)


def test_refused_key_exchange_fails_naming_the_model(driver: Uru4000Driver, scanner: EmulatedScanner) -> None:
    driver.open()
    scanner.faults.blocks = SCRAMBLED_BLOCKS
    scanner.faults.refuse_key_exchange = True
    with pytest.raises(PermanentDeviceError, match=r"U\.are\.U 4000B/4500.*key exchange.*not supported"):
        capture(driver)


def test_permission_denied_points_at_the_udev_rules(driver: Uru4000Driver, scanner: EmulatedScanner) -> None:
    scanner.faults.permission_denied = True
    with pytest.raises(PermanentDeviceError, match="60-kiosk-agent.rules"):
        driver.open()


def test_a_claimed_scanner_is_busy(bus: EmulatedBus, driver: Uru4000Driver) -> None:
    driver.open()
    other = make_driver(bus)
    with pytest.raises(TransientDeviceError, match="another program"):
        other.open()


def test_no_usb_access_is_permanent_and_says_so() -> None:
    bus = EmulatedBus()
    bus.fail_enumeration = usb.core.USBError("Access denied", None, 13)
    with pytest.raises(PermanentDeviceError, match="no USB access"):
        make_driver(bus).open()


# --- selection and config -----------------------------------------------------------------------


def test_serial_port_and_id_pick_one_of_several() -> None:
    first = EmulatedScanner(serial="AAA", port_numbers=(1, 2), image=gradient_image())
    second = EmulatedScanner(serial="BBB", port_numbers=(1, 3), product_id=0x0007)
    bus = EmulatedBus(first, second)
    for config, chosen in (({"serial": "BBB"}, second), ({"usb_port": "1-1.2"}, first),
                           ({"usb_id": "05BA:0007"}, second), ({}, first)):
        driver = make_driver(bus, **config)
        info = driver.open()
        try:
            assert info.serial == chosen.serial
            assert np.array_equal(capture(driver), chosen.expected_image())
        finally:
            driver.close()
    with pytest.raises(DeviceDisconnected, match="serial CCC"):
        make_driver(bus, serial="CCC").open()


def test_config_is_strict() -> None:
    with pytest.raises(ValidationError, match="usb_id"):
        Uru4000Config(usb_id="1234:5678")
    with pytest.raises(ValidationError, match="usb_port"):
        Uru4000Config(usb_port="usb1")
    with pytest.raises(ValidationError, match="backend"):
        Uru4000Config(backend="x")  # type: ignore[call-arg]
    assert driver_class("uru4000") is Uru4000Driver
    assert set(Uru4000Driver.usb_ids) == {(0x05BA, 0x000A), (0x05BA, 0x0007), (0x05BA, 0x0008)}


# --- through the agent's device worker and the command line ---------------------------------------


def test_worker_goes_offline_on_unplug_and_back_on_replug(bus: EmulatedBus, scanner: EmulatedScanner) -> None:
    worker = DeviceWorker("finger", make_driver(bus), reopen_min_s=0.05, reopen_max_s=0.1)
    worker.start()
    try:
        assert worker.wait_first_open(5) and worker.state == "online"
        scanner.faults.unplug_mid_frame = True
        with pytest.raises(DeviceDisconnected):
            worker.submit(lambda d: d.capture(CaptureRequest())).result(5)
        assert worker.state == "offline"
        bus.plug(scanner)
        wait_until(lambda: worker.state == "online", 5, what="reopened after replug")
        png = worker.submit(lambda d: d.capture(CaptureRequest())).result(5).image
        assert np.array_equal(decode_png(png), scanner.image)
    finally:
        worker.stop()


@pytest.fixture
def usb_bus(monkeypatch: pytest.MonkeyPatch, bus: EmulatedBus) -> EmulatedBus:
    monkeypatch.setattr(usb_scan, "default_backend", bus)
    monkeypatch.setattr(serial_scan, "DEFAULT_PATTERNS", ())
    return bus


def write_config(tmp_path: Path, devices: dict[str, Any]) -> Path:
    raw = {"kiosk": {"id": "k1"}, "mqtt": {"allow_plaintext": True},
           "security": {"kiosk_key": str(tmp_path / "missing.key"),
                        "central_public_key": str(tmp_path / "missing.pub")},
           "devices": devices}
    path = tmp_path / "agent.toml"
    path.write_text(to_toml(raw))
    return path


def test_cli_capture_through_the_config(tmp_path: Path, usb_bus: EmulatedBus, scanner: EmulatedScanner,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, {"finger": {"driver": "uru4000", "serial": "EMU0001", **FAST}})
    out = tmp_path / "print.png"
    assert main(["capture", "finger", "--config", str(config), "--out", str(out)]) == 0
    assert np.array_equal(cv2.imread(str(out), cv2.IMREAD_UNCHANGED), scanner.image)
    assert png_ppi(out.read_bytes()) == 512


def test_cli_scan_lists_usb_scanners(usb_bus: EmulatedBus, capsys: pytest.CaptureFixture[str]) -> None:
    usb_bus.plug(EmulatedScanner(product_id=0x0007, serial="", port_numbers=(2,)))
    assert main(["devices", "scan", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["usb"]
    assert result["available"] and result["error"] == ""
    assert [(s["usb_id"], s["usb_port"], s["serial"], s["model"]) for s in result["scanners"]] == [
        ("05ba:000a", "1-1.4", "EMU0001", "U.are.U 4000B/4500"), ("05ba:0007", "1-2", None, "U.are.U 4000")]
    assert main(["devices", "scan"]) == 0
    assert "USB 1-1.4 (05ba:000a): uru4000 U.are.U 4000B/4500 serial EMU0001" in capsys.readouterr().out


def test_cli_scan_without_usb_access_says_so(usb_bus: EmulatedBus,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    usb_bus.fail_enumeration = usb.core.USBError("Access denied", None, 13)
    assert main(["devices", "scan", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["usb"]
    assert not result["available"] and "no USB access" in result["error"] and result["scanners"] == []
    assert main(["devices", "scan"]) == 0
    assert "USB: not scanned: no USB access" in capsys.readouterr().out


def test_cli_scan_shows_a_permission_problem(usb_bus: EmulatedBus, scanner: EmulatedScanner,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    scanner.faults.permission_denied = True
    assert main(["devices", "scan", "--json"]) == 0
    (found,) = json.loads(capsys.readouterr().out)["usb"]["scanners"]
    assert found["serial"] is None and "60-kiosk-agent.rules" in found["error"]


def test_permission_denied_while_choosing_by_serial_points_at_the_rules(scanner: EmulatedScanner,
                                                                        bus: EmulatedBus) -> None:
    scanner.faults.permission_denied = True
    with pytest.raises(PermanentDeviceError, match="60-kiosk-agent.rules"):
        make_driver(bus, serial="EMU0001").open()


def test_the_udev_rules_cover_every_recognised_usb_id() -> None:
    rules = (ROOT / "systemd" / "60-kiosk-agent.rules").read_text()
    covered = set(re.findall(r'ATTRS\{idVendor\}=="([0-9a-f]{4})", ATTRS\{idProduct\}=="([0-9a-f]{4})"'
                             r'.*MODE="0660", GROUP="plugdev"', rules))
    known = {(f"{v:04x}", f"{p:04x}") for v, p in registry.known_usb_ids()}
    assert known and known <= covered
