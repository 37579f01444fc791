"""The driver interface every device adapter implements.

A driver is synchronous and blocking: the agent calls it from one named worker thread per
device (see agent/capture/workers.py), never from two threads at once, so drivers need no locks.
Hardware libraries are imported inside ``open()`` so the package imports on any machine.

Cameras do not judge faces themselves: whoever builds one hands it a ``MakeFaceJudge``
(the agent: agent/capture/build.py), so the drivers never depend on the agent's checks.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from drivers.errors import ImplausibleResolution

#: The resolutions (pixels per inch) a finger image may declare. Every scanner the kiosk drives
#: is 450..512 ppi and every driver's ``ppi`` setting is bounded to this range; ISO/IEC
#: 19794-4 and ANSI/NIST-ITL Type-14 records need a real one (0 ppi would reach a record as
#: "0" or "00.00" and a matcher would misjudge every ridge distance).
FINGER_PPI = range(250, 1001)
#: Pixels each way an iris image may have. Iris images carry no resolution (SBI devices report
#: none; ISO/IEC 19794-6 has no field for one), so their size is what is bounded: a device
#: claiming a 0 x 0 or 60,000-pixel eye is broken or hostile.
IRIS_SIDE = range(16, 4097)


class Modality(enum.StrEnum):
    FINGER = "finger"
    FACE = "face"
    IRIS = "iris"


class DriverConfig(BaseModel):
    """Settings every driver accepts; each driver subclasses this with its own fields.

    ``extra="forbid"`` makes a misspelt key an error that names the key instead of a
    setting that is silently ignored.
    """

    model_config = ConfigDict(extra="forbid")

    driver: str
    enabled: bool = True
    #: Seconds to wait for the person (finger on the glass, face in view) per attempt.
    capture_timeout_s: float = 10.0


@dataclass(frozen=True)
class DeviceInfo:
    """What ``probe()`` learns about a device without changing its state."""

    driver: str
    model: str
    serial: str
    firmware: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class CaptureRequest:
    """What the agent asks of a device for one capture."""

    #: ANSI/NIST finger position 0..10 (0 = unknown); 0 for a face; for an iris the eye label
    #: (17.003: 0 undefined, 1 right, 2 left).
    position: int = 0
    timeout_s: float | None = None  # None: the driver config's capture_timeout_s
    #: Fingers of a slap recorded as exceptions (amputated, unable to print): devices that take
    #: a whole slap in one request (drivers/sbi.py) are told not to wait for them.
    exceptions: tuple[int, ...] = ()
    #: The registration session the capture belongs to ("" outside any): devices that chain
    #: their captures (MOSIP SBI's hash chain) keep one chain per session.
    session: str = ""


@dataclass(frozen=True)
class CapturedImage:
    """One image as the device produced it, already encoded in a standard format."""

    modality: Modality
    position: int
    image_format: str  # "png", "jpeg", "wsq"
    image: bytes
    width: int
    height: int
    #: Native resolution in pixels per inch; 0 when unknown (cameras only: a finger image must
    #: declare one in FINGER_PPI).
    ppi: int
    #: Quality measured on the device or kiosk, 0..100, None when not measured.
    quality: int | None = None
    quality_detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The driver boundary: whatever a driver does, a finger image without a plausible
        # resolution never becomes a capture.
        if self.modality is Modality.FINGER and self.ppi not in FINGER_PPI:
            raise ImplausibleResolution(
                f"a finger image at position {self.position} declares {self.ppi} ppi; finger "
                f"images must carry the scanner's native resolution, {FINGER_PPI.start}.."
                f"{FINGER_PPI.stop - 1} ppi (check the driver's ppi setting)")
        if self.modality is Modality.IRIS and (self.width not in IRIS_SIDE or self.height not in IRIS_SIDE):
            raise ImplausibleResolution(
                f"an iris image of {self.width} x {self.height} pixels; iris images are "
                f"{IRIS_SIDE.start}..{IRIS_SIDE.stop - 1} pixels each way")


@dataclass(frozen=True)
class FaceVerdict:
    """What a camera needs from the judgement of one frame, as plain data."""

    passed: bool
    #: 0..100; every failing frame scores below every passing one, so the best frame wins.
    score: int
    #: Faces seen in the frame: with none, the capture asks the person to come into view.
    faces: int
    #: What the operator tells the person, for the failed checks, in check order.
    hints: tuple[str, ...]
    #: The whole quality report (checks, values, thresholds), JSON-ready: the capture's
    #: ``quality_detail`` is built from it.
    report: dict[str, Any]
    #: Size and affine map (frame -> token) of the ISO/IEC 19794-5 token image, for
    #: drivers/face_image.py ``token_image``; None unless exactly one face was found.
    token: dict[str, Any] | None = None


#: Judges one frame (a BGR numpy array) for a face capture.
FaceJudge = Callable[[Any], FaceVerdict]
#: Makes a camera's FaceJudge. Called in ``open()``, on the device thread, since loading a face
#: detector takes a while; raises PermanentDeviceError when it cannot (a model file missing),
#: naming the setting. A camera given none still probes and previews, and its ``capture()``
#: returns the sharpest of a few frames with no face checks at all: ``quality`` None,
#: ``quality_detail["judged"]`` False and a note saying so, no token image.
MakeFaceJudge = Callable[[], FaceJudge]


class Driver(abc.ABC):
    """Base class of every device driver.

    Life cycle: ``probe()`` (optional, side-effect free) -> ``open()`` -> ``capture()`` any
    number of times, ``health()`` between captures -> ``close()``. ``open()`` leaves no state
    behind when it fails. Errors come from drivers/errors.py only.
    """

    #: The ``driver`` key in a ``[devices.NAME]`` config table.
    name: ClassVar[str]
    modality: ClassVar[Modality]
    vendor: ClassVar[str] = ""
    #: USB (vendor id, product id) pairs this driver recognises, for hot-plug matching.
    usb_ids: ClassVar[tuple[tuple[int, int], ...]] = ()
    #: The pydantic model of this driver's config table.
    config_model: ClassVar[type[DriverConfig]] = DriverConfig

    def __init__(self, device_id: str, config: DriverConfig) -> None:
        self.device_id = device_id
        self.config = config

    @abc.abstractmethod
    def probe(self) -> DeviceInfo:
        """Identify the device without side effects (no LED, no state change)."""

    @abc.abstractmethod
    def open(self) -> DeviceInfo:
        """Open the device for capture and return what it reported."""

    @abc.abstractmethod
    def capture(self, request: CaptureRequest) -> CapturedImage:
        """Take one image; raise CaptureRetry, TransientDeviceError or PermanentDeviceError."""

    @abc.abstractmethod
    def health(self) -> Health:
        """A cheap liveness check of an open device."""

    def preview(self) -> Any:
        """One live frame (a BGR numpy array) for the operator's preview; cameras only.

        Not a capture: nothing is judged, kept or counted. A device without a preview raises
        NotImplementedError: asking is a caller's mistake, not a fault of the device, so the
        device must not be marked failed for it.
        """
        raise NotImplementedError(f"{self.name} devices have no live preview")

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device; safe to call twice or after a failed open."""
