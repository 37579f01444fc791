"""Driver ``uru4000``: DigitalPersona U.are.U 4000, 4000B and 4500 USB scanners, over pyusb.

open: find the scanner (optionally by ``usb_id``, ``serial`` or ``usb_port``), claim its
vendor interface (class 255/255/255, interrupt endpoint 0x81, bulk endpoint 0x82) and power
the sensor up through the HWSTAT register until it announces itself with the 56AA interrupt.
capture: MODE = await finger, wait for the 0101 interrupt, MODE = capture, read one frame from
the bulk endpoint, descramble it if the scanner scrambled it (key exchange through registers
0x33 / 0x34), invert it, turn it the right way up on the 4000, encode a 512 ppi PNG. The pure
part (frame layout, descrambler) is drivers/uru4000_codec.py; the transfers, their retries and
the register sequences (power-up, key exchange) are drivers/uru4000_link.py.

Errors: a stall or a timeout is retried ``attempts`` times (a stalled bulk endpoint is cleared
first) and then becomes TransientDeviceError; a vanished device is DeviceDisconnected at once;
the fatal interrupt 0800 powers the sensor up again, at most ``attempts`` times a capture; no
access (EACCES) and scrambling this driver cannot undo are PermanentDeviceError, because no
retry fixes them. pyusb is imported in open() / probe(); tests inject an emulated backend.
"""

from __future__ import annotations

import errno
import logging
import time
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
from drivers.registry import driver_entry
from drivers.uru4000_codec import (
    DEVICE_INFO_LENGTH,
    EP_DATA,
    EP_INTR,
    FLIPPED_PRODUCTS,
    HEADER_LENGTH,
    HEIGHT,
    HWSTAT_LOW_POWER,
    INTERFACE_CLASS,
    PPI,
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
from drivers.uru4000_link import ScannerLink, Stalled, usb_errno
from drivers.usb_scan import UsbScanner, UsbUnavailable, find_devices, read_serial, usb_port_of

log = logging.getLogger(__name__)

#: (vendor id, product id) -> model name: the registry's table (drivers/registry.py).
USB_MODELS = driver_entry("uru4000").usb_models


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
        known = [f"{v:04x}:{p:04x}" for v, p in USB_MODELS]
        if value not in known:
            raise ValueError(f"must be one of {', '.join(known)}")
        return value


class Uru4000Driver(Driver):
    name = "uru4000"
    modality = Modality.FINGER
    vendor = "DigitalPersona (U.are.U 4000, 4000B, 4500)"
    usb_ids = tuple(USB_MODELS)
    config_model = Uru4000Config
    config: Uru4000Config
    #: The pyusb backend to find scanners with; None lets pyusb pick libusb. Tests set this
    #: (or pass ``backend=``) to plug in an emulated scanner; it is not a user setting.
    backend: ClassVar[Any] = None

    def __init__(self, device_id: str, config: Uru4000Config, *, backend: Any = None) -> None:
        super().__init__(device_id, config)
        self._backend = backend
        self._link: ScannerLink | None = None
        self._interface = 0
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

    def _link_to(self, dev: Any) -> ScannerLink:
        return ScannerLink(self.device_id, dev, attempts=self.config.attempts,
                           transfer_timeout_s=self.config.transfer_timeout_s)

    def probe(self) -> DeviceInfo:
        if self._info is not None:
            return self._info
        link = self._link_to(self._find())
        try:
            return self._describe(link)
        finally:
            self._dispose(link.dev)

    def open(self) -> DeviceInfo:
        self.close()
        link = self._link_to(self._find())
        try:
            self._claim(link)
            self._link = link
            link.power_up()
            info = self._describe(link)
        except BaseException:
            self.close()
            raise
        self._info = info
        return info

    def close(self) -> None:
        link, self._link, self._info = self._link, None, None
        if link is None:
            return
        try:
            link.write(Reg.MODE, bytes([Mode.OFF]), attempts=1)
        except DeviceError as exc:  # already unplugged, most likely: nothing to switch off
            log.debug("%s: switching off: %s", self.device_id, exc)
        self._dispose(link.dev)

    def health(self) -> Health:
        if self._link is None:
            return Health(False, "not open")
        try:
            hwstat = self._link.read(Reg.HWSTAT, 1, attempts=1)[0]
        except DeviceError as exc:
            return Health(False, str(exc))
        if hwstat & HWSTAT_LOW_POWER:
            return Health(False, f"sensor in low-power mode (HWSTAT 0x{hwstat:02X})")
        return Health(True)

    def _claim(self, link: ScannerLink) -> None:
        import usb.core
        import usb.util

        dev = link.dev
        try:
            try:
                cfg = dev.get_active_configuration()
            except usb.core.USBError as exc:
                if usb_errno(exc) in (errno.ENODEV, errno.EACCES):
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
            try:
                if dev.is_kernel_driver_active(self._interface):
                    dev.detach_kernel_driver(self._interface)
            except (NotImplementedError, usb.core.USBError) as exc:
                log.debug("%s: kernel driver check: %s", self.device_id, exc)
            usb.util.claim_interface(dev, self._interface)
        except usb.core.USBError as exc:
            raise link.fault(exc, "claiming the interface") from None

    def _dispose(self, dev: Any) -> None:
        try:
            import usb.util

            usb.util.dispose_resources(dev)
        except Exception as exc:  # closing an unplugged device fails; nothing left to undo
            log.debug("%s: releasing the device: %s", self.device_id, exc)

    def _describe(self, link: ScannerLink) -> DeviceInfo:
        dev = link.dev
        device_info = link.read(Reg.DEVICE_INFO, DEVICE_INFO_LENGTH)
        serial, _ = read_serial(dev, dispose=False)
        return DeviceInfo(driver=self.name, model=_model(dev), serial=serial or "unknown",
                          firmware=parse_device_info(device_info),
                          extra={"usb_id": f"{dev.idVendor:04x}:{dev.idProduct:04x}",
                                 "usb_port": usb_port_of(dev), "image": f"{WIDTH}x{HEIGHT}", "ppi": PPI,
                                 "flipped": dev.idProduct in FLIPPED_PRODUCTS})

    # --- capture --------------------------------------------------------------------------

    def capture(self, request: CaptureRequest) -> CapturedImage:
        link = self._require_open()
        timeout_s = request.timeout_s if request.timeout_s is not None else self.config.capture_timeout_s
        self._wait_for_finger(link, time.monotonic() + timeout_s)
        header, rows = self._read_frame(link)
        if header.scrambled:
            self._descramble(link, header, rows)
        image = to_image(assemble(header, rows), link.dev.idProduct in FLIPPED_PRODUCTS)
        return CapturedImage(
            modality=Modality.FINGER, position=request.position, image_format="png",
            image=encode_grey_png(image, PPI), width=WIDTH, height=HEIGHT, ppi=PPI,
            quality_detail={"bits_per_pixel": 8, "scrambled": header.scrambled, "model": _model(link.dev)},
        )

    def _wait_for_finger(self, link: ScannerLink, deadline: float) -> None:
        # An interrupt queued before this capture (the last finger lifting) is not news.
        while link.interrupt(0.001) is not None:
            pass
        link.write(Reg.MODE, bytes([Mode.AWAIT_FINGER_ON]))
        fatal = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CaptureRetry("no finger", "place your finger flat on the glass")
            packet = link.interrupt(min(left, self.config.poll_interval_s))
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
                link.power_up()
                link.write(Reg.MODE, bytes([Mode.AWAIT_FINGER_ON]))
            else:
                log.debug("%s: ignoring interrupt %04X while waiting for the finger", self.device_id, kind)

    def _read_frame(self, link: ScannerLink) -> tuple[FrameHeader, bytearray]:
        last = ""
        for attempt in range(1, self.config.attempts + 1):
            link.write(Reg.MODE, bytes([Mode.CAPTURE]))
            try:
                data = link.bulk()
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

    def _descramble(self, link: ScannerLink, header: FrameHeader, rows: bytearray) -> None:
        model = _model(link.dev)

        def key_for(key_number: int) -> int:
            try:
                return link.scramble_key(key_number)
            except Stalled:
                raise PermanentDeviceError(
                    f"{self.device_id}: the {model} sent a scrambled frame and refused the key exchange "
                    "(registers 0x33/0x34); descrambling this unit is not supported") from None

        try:
            decode_blocks(header, rows, key_for)
        except UnsupportedScrambling as exc:
            raise PermanentDeviceError(f"{self.device_id}: the {model} sent a scrambled frame this driver "
                                       f"cannot decode: {exc}; no image is delivered") from None

    def _require_open(self) -> ScannerLink:
        if self._link is None:
            raise TransientDeviceError(f"{self.device_id}: device not open")
        return self._link


def _model(dev: Any) -> str:
    return USB_MODELS[(dev.idVendor, dev.idProduct)]
