"""Driver ``libfprint``: any fingerprint scanner libfprint (the library behind fprintd) drives
and that hands out images, through PyGObject's ``gi.repository.FPrint``.

Selection: the first scanner libfprint lists whose driver id (``libfprint_driver``: "elan",
"uru4000", "virtual_image"...) and device id (``libfprint_device_id``) match the settings
given. Match-on-chip sensors (no FP_DEVICE_FEATURE_CAPTURE) keep their images to themselves,
so the agent cannot use them: that is a PermanentDeviceError saying so.

capture: libfprint waits for the finger, takes the image and runs its NBIS minutiae detection
on it; the driver checks what came back (it is the device's data: size, resolution), encodes
a PNG and reports libfprint's minutiae count with it. Resolution: libfprint's pixels per
millimetre when it gives one, else the ``ppi`` setting (most libfprint drivers and its
virtual device give none; libfprint's own minutiae detection then assumes 500 ppi).

Errors: libfprint's retry codes (swipe too short, finger off centre, remove the finger,
"please try again", which is also what an image without minutiae gets) are CaptureRetry with
a hint for the operator; its device errors are DeviceDisconnected (removed), PermanentDeviceError
(not supported; no USB permission) or TransientDeviceError (the rest: busy, protocol, ...).

The GLib side, its thread and the device list are drivers/libfprint_loop.py.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np
from pydantic import Field

from drivers.base import (
    FINGER_PPI,
    CapturedImage,
    CaptureRequest,
    DeviceInfo,
    Driver,
    DriverConfig,
    Health,
    Modality,
)
from drivers.errors import (
    CaptureRetry,
    DeviceDisconnected,
    DriverError,
    ImplausibleResolution,
    PermanentDeviceError,
    TransientDeviceError,
)
from drivers.libfprint_loop import FprintLoop, Listed
from drivers.png_phys import encode_grey_png

log = logging.getLogger(__name__)

MM_PER_INCH = 25.4
#: A side shorter than this holds no usable part of a finger (2.6 mm at 500 ppi).
MIN_SIDE_PX = 48
#: Longer than any single-finger platen libfprint drives (FpImage allows up to 65535).
MAX_SIDE_PX = 2048

#: GLib error domains (the quarks' names, part of the libraries' ABI; a test checks them).
RETRY_DOMAIN = "fp - device - retry - quark"
ERROR_DOMAIN = "fp - device - error - quark"
IO_DOMAIN = "g-io-error-quark"
USB_DOMAIN = "g-usb-device-error-quark"

#: FpDeviceRetry -> (reason, what the operator tells the person).
RETRY_HINTS: dict[int, tuple[str, str]] = {
    0: ("scanner asked to try again", "place the finger flat on the sensor again"),
    1: ("swipe too short", "swipe the whole finger across the sensor, steadily"),
    2: ("finger off centre", "place the finger in the middle of the sensor"),
    3: ("finger still on the sensor", "lift the finger off the sensor, then place it again"),
}
#: FpDeviceError codes (fp-device.h).
ERR_NOT_SUPPORTED, ERR_REMOVED = 1, 0x100
IO_CANCELLED, IO_PERMISSION_DENIED = 19, 14
USB_NO_DEVICE, USB_PERMISSION_DENIED = 4, 9


class LibfprintConfig(DriverConfig):
    driver: Literal["libfprint"] = "libfprint"
    #: Only scanners of this libfprint driver ("elan", "uru4000", "virtual_image"...: libfprint's
    #: list of supported devices names them; `kiosk-agent devices` shows the one chosen).
    libfprint_driver: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    #: Only the scanner with this libfprint device id (one of several of one driver).
    libfprint_device_id: str | None = Field(None, min_length=1, max_length=128)
    #: The resolution of images libfprint gives none for (pixels per inch).
    ppi: int = Field(500, ge=250, le=1000)
    #: Seconds for opening or closing the scanner (libfprint may upload firmware or calibrate).
    open_timeout_s: float = Field(15.0, gt=0, le=120)
    #: Fewer minutiae than this (libfprint's NBIS count) is a retry: NFIQ 2's gate, 5. Prints
    #: from the synthetic generator get 38-78; a fingertip's edge 3.
    min_minutiae: int = Field(5, ge=1, le=200)


def classify(domain: str, code: int, message: str, device: str) -> DriverError:
    """The driver error for one of libfprint's GLib errors (``domain`` is the quark's name)."""
    what = f"{device}: {message}"
    if domain == RETRY_DOMAIN:
        reason, hint = RETRY_HINTS.get(code, RETRY_HINTS[0])
        return CaptureRetry(reason, hint)
    if domain == ERROR_DOMAIN:
        if code == ERR_REMOVED:
            return DeviceDisconnected(f"{what} (unplugged)")
        if code == ERR_NOT_SUPPORTED:
            return PermanentDeviceError(f"{what}: this scanner cannot do it with libfprint")
        return TransientDeviceError(what)  # busy, protocol, not open...: reopening may cure it
    if (domain, code) in ((USB_DOMAIN, USB_PERMISSION_DENIED), (IO_DOMAIN, IO_PERMISSION_DENIED)):
        return PermanentDeviceError(f"{what}: no permission for the USB device; add its USB id (lsusb "
                                    "shows it) to the udev rules as in systemd/60-kiosk-agent.rules "
                                    "(libfprint's own rules grant no access: fprintd runs as root)")
    if domain == USB_DOMAIN and code == USB_NO_DEVICE:
        return DeviceDisconnected(f"{what} (unplugged)")
    return TransientDeviceError(what)


def resolution(ppmm: float, fallback_ppi: int, device: str) -> tuple[int, str]:
    """(pixels per inch, where it came from) for an image libfprint says is ``ppmm`` px/mm."""
    if ppmm == 0:
        return fallback_ppi, "config"
    ppi = round(ppmm * MM_PER_INCH) if math.isfinite(ppmm) and ppmm > 0 else 0
    if ppi not in FINGER_PPI:
        raise ImplausibleResolution(f"{device}: libfprint says the image has {ppmm!r} pixels per mm "
                                    f"({ppi} ppi), which no fingerprint scanner has; not delivered")
    return ppi, "libfprint"


def check_image(width: int, height: int, data: bytes, device: str) -> np.ndarray:
    """The device's image as a 2-D array, once its size is plausible and agrees with its data."""
    if not (MIN_SIDE_PX <= width <= MAX_SIDE_PX and MIN_SIDE_PX <= height <= MAX_SIDE_PX):
        if 0 < width < MIN_SIDE_PX or 0 < height < MIN_SIDE_PX:
            raise CaptureRetry("image too small", "place the whole fingertip on the sensor")
        raise TransientDeviceError(f"{device}: libfprint delivered an image of {width} x {height} px; "
                                   f"expected {MIN_SIDE_PX}..{MAX_SIDE_PX} px a side")
    if len(data) != width * height:
        raise TransientDeviceError(f"{device}: libfprint delivered {len(data)} bytes for a "
                                   f"{width} x {height} px image")
    return np.frombuffer(data, np.uint8).reshape(height, width)


class LibfprintDriver(Driver):
    name = "libfprint"
    modality = Modality.FINGER
    vendor = "any scanner libfprint drives that hands out images"
    config_model = LibfprintConfig
    config: LibfprintConfig

    def __init__(self, device_id: str, config: LibfprintConfig) -> None:
        super().__init__(device_id, config)
        self._loop: FprintLoop | None = None
        self._key: int | None = None
        self._entry: Listed | None = None
        self._info: DeviceInfo | None = None

    # --- selection ------------------------------------------------------------------------

    def matches(self, entry: Listed) -> bool:
        cfg = self.config
        return ((cfg.libfprint_driver is None or entry.driver == cfg.libfprint_driver)
                and (cfg.libfprint_device_id is None or entry.device_id == cfg.libfprint_device_id))

    def present(self) -> bool | None:
        """Whether libfprint lists this scanner now; None when nothing watches (not open).

        For hot-plug (agent/capture/hotplug.py): libfprint follows USB devices coming and going
        itself, and says at once when an open one is removed."""
        loop = self._loop
        if loop is None or FprintLoop.running() is not loop:
            return None
        return any(self.matches(e) for e in loop.listed())

    def _choose(self, loop: FprintLoop) -> Listed:
        listed = loop.listed()
        matches = [e for e in listed if self.matches(e)]
        if not matches:
            cfg = self.config
            wanted = ", ".join(f"{k} {v}" for k, v in (("libfprint_driver", cfg.libfprint_driver),
                                                        ("libfprint_device_id", cfg.libfprint_device_id))
                               if v is not None)
            seen = ", ".join(f"{e.driver} ({e.device_id})" for e in listed) or "none"
            raise DeviceDisconnected(f"{self.device_id}: libfprint lists no scanner"
                                     f"{' with ' + wanted if wanted else ''}; it lists: {seen}")
        capable = [e for e in matches if e.capture]
        if not capable:
            names = ", ".join(f"{e.name} (driver {e.driver})" for e in matches)
            raise PermanentDeviceError(
                f"{self.device_id}: {names} is a match-on-chip sensor: libfprint gives no images from it "
                "(no FP_DEVICE_FEATURE_CAPTURE), and the agent registers images; not supported")
        if len(capable) > 1:
            log.warning("%s: %d libfprint scanners match; using %s (%s). Set devices.%s."
                        "libfprint_device_id to choose", self.device_id, len(capable), capable[0].name,
                        capable[0].device_id, self.device_id)
        return capable[0]

    def _describe(self, entry: Listed) -> DeviceInfo:
        return DeviceInfo(driver=self.name, model=entry.name, serial=f"{entry.driver}:{entry.device_id}",
                          extra={"libfprint_driver": entry.driver, "libfprint_device_id": entry.device_id,
                                 "scan_type": entry.scan_type})

    # --- life cycle -----------------------------------------------------------------------

    def probe(self) -> DeviceInfo:
        if self._info is not None:
            return self._info
        loop = FprintLoop.acquire()
        try:
            return self._describe(self._choose(loop))
        finally:
            FprintLoop.release(loop)

    def open(self) -> DeviceInfo:
        self.close()
        loop = self._loop = FprintLoop.acquire()
        try:
            entry = self._choose(loop)
            # Known before the call, so that close() closes a scanner whose opening timed out.
            self._key, self._entry = entry.key, entry
            self._device_call(entry.key, lambda dev, c, cb: dev.open(c, cb),
                              lambda dev, r: dev.open_finish(r), self.config.open_timeout_s, "opening")
        except BaseException:
            self.close()
            raise
        self._info = self._describe(entry)
        return self._info

    def close(self) -> None:
        loop, key = self._loop, self._key
        self._loop, self._key, self._entry, self._info = None, None, None, None
        if loop is None:
            return
        try:
            if key is not None:
                self._device_call(key, lambda dev, c, cb: dev.close(c, cb),
                                  lambda dev, r: dev.close_finish(r), self.config.open_timeout_s, "closing",
                                  loop=loop, removed_too=True)
        except DriverError as exc:  # unplugged, most likely: nothing left to close
            log.debug("%s: closing: %s", self.device_id, exc)
        finally:
            FprintLoop.release(loop)

    def health(self) -> Health:
        if self._loop is None or self._key is None:
            return Health(False, "not open")
        if not self.present():
            return Health(False, "removed from the system")
        return Health(True)

    def waits_for_finger(self, timeout_s: float) -> bool:
        """Whether libfprint is waiting for a finger (within ``timeout_s``): the moment the
        operator says "now", and a test feeds libfprint's virtual device."""
        loop, key = self._loop, self._key
        return loop is not None and key is not None and loop.wanting(key).wait(timeout_s)

    # --- capture --------------------------------------------------------------------------

    def capture(self, request: CaptureRequest) -> CapturedImage:
        if self._loop is None or self._key is None or self._entry is None:
            raise TransientDeviceError(f"{self.device_id}: device not open")
        timeout_s = request.timeout_s if request.timeout_s is not None else self.config.capture_timeout_s
        shot = self._device_call(self._key, lambda dev, c, cb: dev.capture(True, c, cb), _read_image,
                                 timeout_s, "capturing", retry_on_timeout=True)
        width, height, ppmm, data, minutiae = shot
        image = check_image(width, height, data, self.device_id)
        ppi, ppi_source = resolution(ppmm, self.config.ppi, self.device_id)
        if minutiae < self.config.min_minutiae:
            # libfprint answers an image without minutiae with "try again" itself; other paths
            # (a driver that skips detection) must not hand the matcher an empty print, nor
            # one with too few minutiae to match on (NFIQ 2 scores those 0 too).
            raise CaptureRetry(f"{minutiae} minutiae found, at least {self.config.min_minutiae} needed"
                               if minutiae else "no ridges found",
                               "place the finger flat on the sensor again, pressing a little harder")
        return CapturedImage(
            modality=Modality.FINGER, position=request.position, image_format="png",
            image=encode_grey_png(image, ppi), width=width, height=height, ppi=ppi,
            quality_detail={"bits_per_pixel": 8, "minutiae": minutiae, "ppi_source": ppi_source,
                            "min_minutiae": self.config.min_minutiae,
                            "libfprint_driver": self._entry.driver, "model": self._entry.name,
                            "scan_type": self._entry.scan_type},
        )

    def _device_call(self, key: int, begin: Any, finish: Any, timeout_s: float, doing: str, *,
                     loop: FprintLoop | None = None, retry_on_timeout: bool = False,
                     removed_too: bool = False) -> Any:
        loop = loop or self._loop
        assert loop is not None
        glib_error = loop.GLib.Error

        def start(cancellable: Any, callback: Any) -> None:
            dev = loop.device(key, removed_too=removed_too)
            if dev is None:
                raise DeviceDisconnected(f"{self.device_id}: the scanner was removed")
            begin(dev, cancellable, callback)

        def end(result: Any) -> Any:
            dev = loop.device(key, removed_too=True)
            if dev is None:  # libfprint dropped it from its list while the call ran
                raise DeviceDisconnected(f"{self.device_id}: the scanner was removed")
            return finish(dev, result)

        try:
            value, timed_out = loop.run_async(start, end, timeout_s, grace_s=self.config.open_timeout_s)
        except glib_error as exc:
            raise classify(_domain(loop, exc), exc.code, exc.message, self.device_id) from None
        if timed_out:
            if retry_on_timeout:
                raise CaptureRetry("no finger", "place the finger on the sensor")
            raise TransientDeviceError(f"{self.device_id}: {doing} took over {timeout_s:.0f} s")
        return value


def _read_image(dev: Any, result: Any) -> tuple[int, int, float, bytes, int]:
    """(width, height, px/mm, pixels, minutiae) of a finished capture; runs in the loop thread,
    so nothing of libfprint's leaves it."""
    image = dev.capture_finish(result)
    width, height = int(image.get_width()), int(image.get_height())
    # The pixels are copied only when the size is plausible (up to 65535 x 65535 is allowed).
    fits = MIN_SIDE_PX <= width <= MAX_SIDE_PX and MIN_SIDE_PX <= height <= MAX_SIDE_PX
    minutiae = image.get_minutiae()
    return (width, height, float(image.get_ppmm()), bytes(image.get_data()) if fits else b"",
            len(minutiae) if minutiae is not None else 0)


def _domain(loop: FprintLoop, exc: Any) -> str:
    domain = exc.domain
    return domain if isinstance(domain, str) else str(loop.GLib.quark_to_string(domain))
