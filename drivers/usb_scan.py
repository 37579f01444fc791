"""Which recognised USB scanners are plugged in, by vendor and product id.

Used by ``kiosk-agent devices scan``, by the hot-plug monitor (agent/capture/hotplug.py) and by the
USB drivers to pick one of several scanners. The recognised ids come from drivers/registry.py's
table, so listing imports no driver. Only descriptors are read (and, once per plugged
device, its serial number string), never a claimed interface: a scanner the agent is using is
listed without being disturbed. pyusb is imported when a scan runs, so this module imports on
machines without it; ``backend`` lets the tests plug in an emulated bus.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import asdict, dataclass
from typing import Any

from drivers.registry import known_usb_ids

log = logging.getLogger(__name__)

RULES_FILE = "systemd/60-kiosk-agent.rules"
#: The pyusb backend used when a caller passes none; None lets pyusb pick libusb. The tests
#: set it to an emulated bus so that the command line and the daemon see emulated scanners.
default_backend: Any = None


class UsbUnavailable(Exception):
    """No USB access at all: pyusb or libusb missing, or no USB bus visible."""


@dataclass(frozen=True)
class UsbScanner:
    vendor_id: int
    product_id: int
    bus: int
    address: int
    #: sysfs-style place: bus, then the hub ports from the root ("1-1.4"); stays the same as
    #: long as the cable stays in its socket.
    usb_port: str
    driver: str
    model: str
    #: None when it could not be read (often: no permission, see RULES_FILE).
    serial: str | None = None
    error: str = ""

    @property
    def usb_id(self) -> str:
        return f"{self.vendor_id:04x}:{self.product_id:04x}"

    @property
    def identity(self) -> tuple[int, int, int, int]:
        # The address changes on every re-plug, so a re-plugged scanner is a new identity.
        return (self.bus, self.address, self.vendor_id, self.product_id)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "usb_id": self.usb_id}


def usb_port_of(dev: Any) -> str:
    ports = getattr(dev, "port_numbers", None)
    if ports:
        return f"{dev.bus}-{'.'.join(map(str, ports))}"
    return f"{dev.bus}-{getattr(dev, 'port_number', None) or 0}"


def read_serial(dev: Any, dispose: bool = True) -> tuple[str | None, str]:
    """(serial number or None, why not); reading it opens the device, which needs permission.

    ``dispose=False`` for a device the caller holds open: disposing would release its interface.
    """
    if not getattr(dev, "iSerialNumber", 0):
        return None, ""
    import usb.util

    try:
        try:
            return usb.util.get_string(dev, dev.iSerialNumber), ""
        except ValueError:
            # pyusb turns a failed language list into "no langid", losing the errno (EACCES);
            # asking in US English, which these scanners speak, brings the real error back.
            return usb.util.get_string(dev, dev.iSerialNumber, 0x0409), ""
    except (OSError, ValueError) as exc:
        if getattr(exc, "errno", None) == errno.EACCES:
            return None, f"permission denied: install {RULES_FILE} (sudo make install)"
        return None, f"serial number unreadable: {exc}"
    finally:
        if dispose:
            try:
                usb.util.dispose_resources(dev)
            except Exception as exc:  # closing an unplugged device can fail; nothing to undo
                log.debug("releasing %s: %s", usb_port_of(dev), exc)


def find_devices(ids: set[tuple[int, int]] | dict[tuple[int, int], Any], backend: Any = None) -> list[Any]:
    """pyusb Device objects with one of ``ids``, in bus order; UsbUnavailable without USB."""
    try:
        import usb.core
    except ImportError as exc:
        raise UsbUnavailable(f"pyusb is not installed ({exc})") from None
    try:
        found = list(usb.core.find(find_all=True, backend=backend if backend is not None else default_backend,
                                   custom_match=lambda d: (d.idVendor, d.idProduct) in ids))
    except usb.core.NoBackendError:
        raise UsbUnavailable("no USB access: libusb-1.0 is not installed "
                             "(sudo apt-get install libusb-1.0-0)") from None
    except OSError as exc:
        raise UsbUnavailable(f"no USB access: {exc}") from None
    return sorted(found, key=lambda d: (d.bus or 0, d.address or 0))


class UsbEnumerator:
    """Lists recognised scanners; reads each plugged device's serial number only once."""

    def __init__(self, backend: Any = None,
                 known: dict[tuple[int, int], tuple[str, str]] | None = None) -> None:
        self.backend = backend
        self.known = known if known is not None else known_usb_ids()
        self._serials: dict[tuple[int, int, int, int], tuple[str | None, str]] = {}

    def scan(self) -> list[UsbScanner]:
        out = []
        for dev in find_devices(self.known, self.backend):
            identity = (dev.bus, dev.address, dev.idVendor, dev.idProduct)
            if identity not in self._serials:
                self._serials[identity] = read_serial(dev)
            serial, error = self._serials[identity]
            driver, model = self.known[(dev.idVendor, dev.idProduct)]
            out.append(UsbScanner(dev.idVendor, dev.idProduct, dev.bus, dev.address, usb_port_of(dev),
                                  driver, model, serial, error))
        gone = set(self._serials) - {s.identity for s in out}
        for identity in gone:
            del self._serials[identity]
        return out


def scan_usb(backend: Any = None) -> list[UsbScanner]:
    """Every recognised scanner on the bus; UsbUnavailable when there is no USB access."""
    return UsbEnumerator(backend).scan()
