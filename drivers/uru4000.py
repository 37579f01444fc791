"""Driver ``uru4000``: DigitalPersona U.are.U 4000, 4000B and 4500 USB scanners, over pyusb.

open: find the scanner (optionally by ``usb_id``, ``serial`` or ``usb_port``), claim its
vendor interface (class 255/255/255, interrupt endpoint 0x81, bulk endpoint 0x82) and power
the sensor up through the HWSTAT register until it announces itself with the 56AA interrupt.
capture: MODE = await finger, wait for the 0101 interrupt, MODE = capture, read one frame from
the bulk endpoint, descramble it if the scanner scrambled it (key exchange through registers
0x33 / 0x34), invert it, turn it the right way up on the 4000, encode a 512 ppi PNG. The pure
part (frame layout, descrambler) is drivers/uru4000_codec.py.

Errors: a stall or a timeout is retried ``attempts`` times (a stalled bulk endpoint is cleared
first) and then becomes TransientDeviceError; a vanished device is DeviceDisconnected at once;
the fatal interrupt 0800 powers the sensor up again, at most ``attempts`` times a capture; no
access (EACCES) and scrambling this driver cannot undo are PermanentDeviceError, because no
retry fixes them. pyusb is imported in open() / probe(); tests inject an emulated backend.
"""

from __future__ import annotations

import errno
import logging
import secrets
import struct
import time
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from drivers.base import CapturedImage, CaptureRequest, DeviceInfo, Driver, DriverConfig, Health, Modality
from drivers.errors import (
    CaptureRetry,
    DeviceDisconnected,
    DeviceError,
    PermanentDeviceError,
    TransientDeviceError,
)
from drivers.png_phys import encode_grey_png
from drivers.uru4000_codec import (
    CTRL_IN,
    CTRL_OUT,
    DEVICE_INFO_LENGTH,
    EP_DATA,
    EP_INTR,
    FRAME_LENGTH,
    HEADER_LENGTH,
    HEIGHT,
    HWSTAT_LOW_POWER,
    HWSTAT_NEEDS_REBOOT,
    INTERFACE_CLASS,
    IRQ_LENGTH,
    MODELS,
    PPI,
    REQUEST,
    USB_IDS,
    WIDTH,
    FrameError,
    FrameHeader,
    Irq,
    Mode,
    Reg,
    UnsupportedScrambling,
    assemble,
    decode_blocks,
    irq_type,
    parse_device_info,
    to_image,
)
from drivers.usb_scan import RULES_FILE, UsbScanner, UsbUnavailable, find_devices, read_serial, usb_port_of

log = logging.getLogger(__name__)

#: Power-up: HWSTAT polls 10 ms apart (the scanner takes a few), then the 56AA interrupt,
#: which sometimes never comes: the whole sequence is tried three times.
POWER_POLLS = 100
POWER_POLL_S = 0.01
SCAN_POWER_TIMEOUT_MS = 300
SCAN_POWER_TRIES = 3


class Uru4000Config(DriverConfig):
    driver: Literal["uru4000"] = "uru4000"
    #: Only this model: "05ba:000a" (4000B/4500), "05ba:0007" or "05ba:0008" (4000).
    usb_id: str | None = None
    #: Only the scanner with this USB serial number (``kiosk-agent devices scan`` shows it).
    serial: str | None = None
    #: Only the scanner in this USB socket: bus-port[.port...] as in sysfs, e.g. "1-1.4".
    usb_port: str | None = Field(None, pattern=r"^\d+-\d+(\.\d+)*$")
    #: Seconds for one control or bulk transfer before it counts as timed out.
    transfer_timeout_s: float = Field(5.0, gt=0, le=60)
    #: Seconds each wait on the interrupt endpoint lasts while waiting for the finger.
    poll_interval_s: float = Field(0.2, gt=0, le=5)
    #: Tries per transfer on stalls and timeouts, per frame on bad frames, and power-ups per
    #: capture after fatal interrupts.
    attempts: int = Field(3, ge=1, le=10)

    @field_validator("usb_id")
    @classmethod
    def _known_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower()
        known = [f"{v:04x}:{p:04x}" for v, p in USB_IDS]
        if value not in known:
            raise ValueError(f"must be one of {', '.join(known)}")
        return value


def _errno(exc: BaseException) -> int | None:
    return getattr(exc, "errno", None)


class _Stalled(TransientDeviceError):
    """The scanner refused a request (USB stall) every time it was asked."""


class Uru4000Driver(Driver):
    name = "uru4000"
    modality = Modality.FINGER
    vendor = "DigitalPersona (U.are.U 4000, 4000B, 4500)"
    usb_ids = USB_IDS
    usb_models: ClassVar[dict[int, str]] = {pid: model for pid, (model, _) in MODELS.items()}
    config_model = Uru4000Config
    config: Uru4000Config
    #: The pyusb backend to find scanners with; None lets pyusb pick libusb. Tests set this
    #: (or pass ``backend=``) to plug in an emulated scanner; it is not a user setting.
    backend: ClassVar[Any] = None

    def __init__(self, device_id: str, config: Uru4000Config, *, backend: Any = None) -> None:
        super().__init__(device_id, config)
        self._backend = backend
        self._dev: Any = None
        self._interface = 0
        self._product_id = 0
        self._info: DeviceInfo | None = None

    # --- selection ------------------------------------------------------------------------

    def usb_matches(self, found: UsbScanner) -> bool:
        """Whether a plugged-in scanner is this device (used by hot-plug and selection)."""
        cfg = self.config
        if (found.vendor_id, found.product_id) not in self.usb_ids:
            return False
        if cfg.usb_id is not None and found.usb_id != cfg.usb_id:
            return False
        if cfg.usb_port is not None and found.usb_port != cfg.usb_port:
            return False
        return cfg.serial is None or found.serial == cfg.serial

    def _find(self) -> Any:
        backend = self._backend if self._backend is not None else type(self).backend
        try:
            devices = find_devices(set(self.usb_ids), backend)
        except UsbUnavailable as exc:
            raise PermanentDeviceError(f"{self.device_id}: {exc}") from None
        cfg = self.config
        matches, denied = [], ""
        for dev in devices:
            serial, why = read_serial(dev) if cfg.serial is not None else (None, "")
            denied = denied or why
            found = UsbScanner(dev.idVendor, dev.idProduct, dev.bus, dev.address, usb_port_of(dev),
                               self.name, "", serial)
            if self.usb_matches(found):
                matches.append(dev)
        if not matches and denied.startswith("permission"):
            raise PermanentDeviceError(f"{self.device_id}: cannot read the scanners' serial numbers: "
                                       f"{denied}")
        if not matches:
            wanted = ", ".join(f"{k} {v}" for k, v in (("usb_id", cfg.usb_id), ("serial", cfg.serial),
                                                        ("usb_port", cfg.usb_port)) if v is not None)
            raise DeviceDisconnected(
                f"{self.device_id}: no U.are.U 4000/4000B/4500 scanner on USB"
                f"{' with ' + wanted if wanted else ''} ({len(devices)} other(s) found)"
                f"{'; ' + denied if denied else ''}")
        if len(matches) > 1:
            log.warning("%s: %d U.are.U scanners match; using the one at %s. Set devices.%s.serial or "
                        "usb_port to choose", self.device_id, len(matches), usb_port_of(matches[0]),
                        self.device_id)
        return matches[0]

    # --- life cycle -----------------------------------------------------------------------

    def probe(self) -> DeviceInfo:
        if self._info is not None:
            return self._info
        dev = self._find()
        try:
            return self._describe(dev, self._read(dev, Reg.DEVICE_INFO, DEVICE_INFO_LENGTH))
        finally:
            self._dispose(dev)

    def open(self) -> DeviceInfo:
        self.close()
        dev = self._find()
        try:
            self._claim(dev)
            self._dev = dev
            self._power_up()
            info = self._describe(dev, self._read(dev, Reg.DEVICE_INFO, DEVICE_INFO_LENGTH))
        except BaseException:
            self.close()
            raise
        self._info = info
        return info

    def close(self) -> None:
        dev, self._dev, self._info = self._dev, None, None
        if dev is None:
            return
        try:
            self._write(dev, Reg.MODE, bytes([Mode.OFF]), attempts=1)
        except DeviceError as exc:  # already unplugged, most likely: nothing to switch off
            log.debug("%s: switching off: %s", self.device_id, exc)
        self._dispose(dev)

    def health(self) -> Health:
        if self._dev is None:
            return Health(False, "not open")
        try:
            hwstat = self._read(self._dev, Reg.HWSTAT, 1, attempts=1)[0]
        except DeviceError as exc:
            return Health(False, str(exc))
        if hwstat & HWSTAT_LOW_POWER:
            return Health(False, f"sensor in low-power mode (HWSTAT 0x{hwstat:02X})")
        return Health(True)

    def _claim(self, dev: Any) -> None:
        import usb.core
        import usb.util

        try:
            try:
                cfg = dev.get_active_configuration()
            except usb.core.USBError as exc:
                if _errno(exc) in (errno.ENODEV, errno.EACCES):
                    raise
                dev.set_configuration()
                cfg = dev.get_active_configuration()
            intf = usb.util.find_descriptor(
                cfg, custom_match=lambda i: (i.bInterfaceClass, i.bInterfaceSubClass,
                                             i.bInterfaceProtocol) == INTERFACE_CLASS)
            if intf is None:
                raise PermanentDeviceError(f"{self.device_id}: the scanner at {usb_port_of(dev)} has no "
                                           "vendor interface (class 255/255/255); not a U.are.U?")
            eps = [(e.bEndpointAddress, e.bmAttributes & 3) for e in intf]
            if eps != [(EP_INTR, 3), (EP_DATA, 2)]:
                raise PermanentDeviceError(f"{self.device_id}: unexpected endpoints {eps} on the "
                                           f"scanner at {usb_port_of(dev)}")
            self._interface = intf.bInterfaceNumber
            self._product_id = dev.idProduct
            try:
                if dev.is_kernel_driver_active(self._interface):
                    dev.detach_kernel_driver(self._interface)
            except (NotImplementedError, usb.core.USBError) as exc:
                log.debug("%s: kernel driver check: %s", self.device_id, exc)
            usb.util.claim_interface(dev, self._interface)
        except usb.core.USBError as exc:
            raise self._fault(exc, "claiming the interface", dev) from None

    def _dispose(self, dev: Any) -> None:
        try:
            import usb.util

            usb.util.dispose_resources(dev)
        except Exception as exc:  # closing an unplugged device fails; nothing left to undo
            log.debug("%s: releasing the device: %s", self.device_id, exc)

    def _describe(self, dev: Any, device_info: bytes) -> DeviceInfo:
        model, flip = MODELS[dev.idProduct]
        serial, _ = read_serial(dev, dispose=False)
        return DeviceInfo(driver=self.name, model=model, serial=serial or "unknown",
                          firmware=parse_device_info(device_info),
                          extra={"usb_id": f"{dev.idVendor:04x}:{dev.idProduct:04x}",
                                 "usb_port": usb_port_of(dev), "image": f"{WIDTH}x{HEIGHT}", "ppi": PPI,
                                 "flipped": flip})

    # --- power-up ------------------------------------------------------------------------

    def _power_up(self) -> None:
        """HWSTAT dance until the sensor is powered, then the 56AA interrupt; three tries."""
        dev = self._require_open()
        for attempt in range(1, SCAN_POWER_TRIES + 1):
            hwstat = self._read(dev, Reg.HWSTAT, 1)[0]
            if hwstat & HWSTAT_NEEDS_REBOOT == HWSTAT_NEEDS_REBOOT:
                hwstat = self._reboot_power(dev, hwstat)
            if not hwstat & HWSTAT_LOW_POWER:
                # Powering up only takes effect from low-power mode: go there first.
                self._write(dev, Reg.HWSTAT, bytes([hwstat | HWSTAT_LOW_POWER]))
            self._poll_hwstat(dev, hwstat & 0x0F, lambda h: not h & HWSTAT_LOW_POWER, "power the sensor up")
            deadline = time.monotonic() + SCAN_POWER_TIMEOUT_MS / 1000
            while (left := deadline - time.monotonic()) > 0:
                packet = self._interrupt(dev, left)
                if packet is not None and irq_type(packet) == Irq.SCAN_POWER_ON:
                    return
            log.debug("%s: no scan-power interrupt (try %d/%d)", self.device_id, attempt, SCAN_POWER_TRIES)
        raise TransientDeviceError(f"{self.device_id}: the scanner did not power its sensor up "
                                   f"(no 56AA interrupt after {SCAN_POWER_TRIES} tries)")

    def _reboot_power(self, dev: Any, hwstat: int) -> int:
        return self._poll_hwstat(dev, hwstat & 0x0F, lambda h: bool(h & 0x01), "reset its power state")

    def _poll_hwstat(self, dev: Any, value: int, done: Callable[[int], bool], what: str) -> int:
        self._write(dev, Reg.HWSTAT, bytes([value]))
        for _ in range(POWER_POLLS):
            hwstat = self._read(dev, Reg.HWSTAT, 1)[0]
            if done(hwstat):
                return hwstat
            time.sleep(POWER_POLL_S)
        raise TransientDeviceError(f"{self.device_id}: the scanner did not {what} "
                                   f"(HWSTAT 0x{hwstat:02X} after {POWER_POLLS} polls)")

    # --- capture --------------------------------------------------------------------------

    def capture(self, request: CaptureRequest) -> CapturedImage:
        dev = self._require_open()
        timeout_s = request.timeout_s if request.timeout_s is not None else self.config.capture_timeout_s
        self._wait_for_finger(dev, time.monotonic() + timeout_s)
        header, rows = self._read_frame(dev)
        if header.scrambled:
            self._descramble(dev, header, rows)
        model, flip = MODELS[self._product_id]
        image = to_image(assemble(header, rows), flip)
        return CapturedImage(
            modality=Modality.FINGER, position=request.position, image_format="png",
            image=encode_grey_png(image, PPI), width=WIDTH, height=HEIGHT, ppi=PPI,
            quality_detail={"bits_per_pixel": 8, "scrambled": header.scrambled, "model": model},
        )

    def _wait_for_finger(self, dev: Any, deadline: float) -> None:
        # An interrupt queued before this capture (the last finger lifting) is not news.
        while self._interrupt(dev, 0.001) is not None:
            pass
        self._write(dev, Reg.MODE, bytes([Mode.AWAIT_FINGER_ON]))
        fatal = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CaptureRetry("no finger", "place your finger flat on the glass")
            packet = self._interrupt(dev, min(left, self.config.poll_interval_s))
            if packet is None:
                continue
            kind = irq_type(packet)
            if kind == Irq.FINGER_ON:
                return
            if kind == Irq.FATAL:
                fatal += 1
                if fatal >= self.config.attempts:
                    raise TransientDeviceError(f"{self.device_id}: the scanner reported a fatal fault "
                                               f"(interrupt 0800) {fatal} times; it will be reopened")
                log.warning("%s: fatal interrupt 0800 from the scanner; powering its sensor up again",
                            self.device_id)
                self._power_up()
                self._write(dev, Reg.MODE, bytes([Mode.AWAIT_FINGER_ON]))
            else:
                log.debug("%s: ignoring interrupt %04X while waiting for the finger", self.device_id, kind)

    def _read_frame(self, dev: Any) -> tuple[FrameHeader, bytearray]:
        last = ""
        for attempt in range(1, self.config.attempts + 1):
            self._write(dev, Reg.MODE, bytes([Mode.CAPTURE]))
            try:
                data = self._bulk(dev)
                header = FrameHeader.parse(data)
                header.check(len(data))
                return header, bytearray(data[HEADER_LENGTH:])
            except (FrameError, TransientDeviceError) as exc:
                if isinstance(exc, DeviceDisconnected):
                    raise
                last = str(exc)
                log.warning("%s: bad frame (attempt %d/%d): %s", self.device_id, attempt,
                            self.config.attempts, exc)
        raise TransientDeviceError(f"{self.device_id}: no usable frame after {self.config.attempts} "
                                   f"attempt(s): {last}")

    def _descramble(self, dev: Any, header: FrameHeader, rows: bytearray) -> None:
        model = MODELS[self._product_id][0]

        def key_for(key_number: int) -> int:
            seed = secrets.randbits(32)
            try:
                self._write(dev, Reg.SCRAMBLE_INDEX, struct.pack("<BI", key_number, seed))
                (answer,) = struct.unpack("<I", self._read(dev, Reg.SCRAMBLE_KEY, 4))
            except _Stalled:
                raise PermanentDeviceError(
                    f"{self.device_id}: the {model} sent a scrambled frame and refused the key exchange "
                    "(registers 0x33/0x34); descrambling this unit is not supported") from None
            return answer ^ seed

        try:
            decode_blocks(header, rows, key_for)
        except UnsupportedScrambling as exc:
            raise PermanentDeviceError(f"{self.device_id}: the {model} sent a scrambled frame this driver "
                                       f"cannot decode: {exc}; no image is delivered") from None

    # --- transfers ------------------------------------------------------------------------

    def _read(self, dev: Any, reg: int, length: int, attempts: int | None = None) -> bytes:
        data = self._control(dev, CTRL_IN, reg, length, attempts)
        if len(data) != length:
            raise TransientDeviceError(f"{self.device_id}: register 0x{reg:02X}: {len(data)} of "
                                       f"{length} bytes")
        return bytes(data)

    def _write(self, dev: Any, reg: int, data: bytes, attempts: int | None = None) -> None:
        self._control(dev, CTRL_OUT, reg, data, attempts)

    def _control(self, dev: Any, request_type: int, reg: int, data: Any, attempts: int | None) -> Any:
        tries = attempts or self.config.attempts
        timeout_ms = int(self.config.transfer_timeout_s * 1000)
        what = f"{'reading' if request_type == CTRL_IN else 'writing'} register 0x{reg:02X}"
        attempt = 1
        while True:
            try:
                return dev.ctrl_transfer(request_type, REQUEST, reg, 0, data, timeout_ms)
            except OSError as exc:
                fault = self._fault(exc, what, dev)
                # Stalls, timeouts and busy may pass; gone, no permission and the like do not.
                passing = isinstance(fault, _Stalled) or type(fault) is TransientDeviceError
                if not passing or attempt == tries:
                    raise fault from None
                log.debug("%s: %s (attempt %d/%d)", self.device_id, fault, attempt, tries)
                attempt += 1

    def _interrupt(self, dev: Any, timeout_s: float) -> bytes | None:
        """One interrupt packet, or None when none came within ``timeout_s`` (normal)."""
        try:
            data = dev.read(EP_INTR, IRQ_LENGTH, max(1, int(timeout_s * 1000)))
        except OSError as exc:
            if _errno(exc) == errno.ETIMEDOUT:
                return None
            fault = self._fault(exc, "reading the interrupt endpoint", dev)
            if isinstance(fault, _Stalled):
                self._clear_halt(dev, EP_INTR)
            raise fault from None
        return bytes(data)

    def _bulk(self, dev: Any) -> bytes:
        try:
            return bytes(dev.read(EP_DATA, FRAME_LENGTH, int(self.config.transfer_timeout_s * 1000)))
        except OSError as exc:
            fault = self._fault(exc, "reading the image", dev)
            if isinstance(fault, _Stalled):
                self._clear_halt(dev, EP_DATA)
            raise fault from None

    def _clear_halt(self, dev: Any, endpoint: int) -> None:
        try:
            dev.clear_halt(endpoint)
        except OSError as exc:
            raise self._fault(exc, f"clearing the stall on endpoint 0x{endpoint:02X}", dev) from None

    def _fault(self, exc: OSError, what: str, dev: Any) -> DeviceError:
        code = _errno(exc)
        where = f"{self.device_id}: {what} on the scanner at {usb_port_of(dev)}"
        if code == errno.ENODEV:
            return DeviceDisconnected(f"{where}: the scanner is gone (unplugged?)")
        if code == errno.EACCES:
            return PermanentDeviceError(
                f"{where}: permission denied; install the udev rules {RULES_FILE} "
                "(sudo make install, then unplug and replug the scanner) so group plugdev may use it")
        if code == errno.EPIPE:
            return _Stalled(f"{where}: the scanner stalled the request")
        if code == errno.ETIMEDOUT:
            return TransientDeviceError(f"{where}: timed out after {self.config.transfer_timeout_s} s")
        if code == errno.EBUSY:
            return TransientDeviceError(f"{where}: another program has claimed the scanner")
        return TransientDeviceError(f"{where}: {exc}")

    def _require_open(self) -> Any:
        if self._dev is None:
            raise TransientDeviceError(f"{self.device_id}: device not open")
        return self._dev

