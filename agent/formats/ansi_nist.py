"""One ANSI/NIST-ITL 1-2011 transaction per registration, written with the ``nistitl`` package.

Records (field numbers and choices in docs/formats.md):

- Type-1: version 0500, type of transaction, date, destination and originating agency, TCN =
  the registration id, native/nominal resolution, and the user-defined domain "KIOSKAGENT".
- Type-2: the registration's references, in user-defined fields 2.101..2.105 of that domain.
- Type-14: one per captured finger (position, resolution, compression, quality, image), and
  one without an image per finger that could not be captured, carrying the AMP exception.
- Type-10: the face, a JPEG, with the subject acquisition profile the capture earned.
- Type-17: one per captured iris (eye label, size, compression, the device's score, image).

Text is 7-bit ASCII where it can be; otherwise the transaction declares UTF-8 in 1.015 DCS
(character set index 3) and carries the text as UTF-8 (docs/formats.md, "Character set").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from agent.formats.positions import EYE_LABELS, FINGERS, SLAP_POSITIONS, position_problem

if TYPE_CHECKING:
    from agent.config import FormatsConfig
    from agent.formats.images import EncodedImage

VERSION = "0500"
DOMAIN = ("KIOSKAGENT", "1.0")
#: ANSI/NIST-ITL compression codes (CGA) for the image formats the kiosk writes.
CGA = {"raw": "NONE", "wsq": "WSQ20", "png": "PNG", "jp2l": "JP2L"}
#: 1.015 DCS entry for UTF-8: character set index 3, name "UTF-8" (ANSI/NIST-ITL 1-2011,
#: Table 6, character encoding set values: 0 7-bit ASCII, 1 8-bit Latin, 2 UTF-16, 3 UTF-8).
DCS_UTF8 = ["3", "UTF-8"]
#: 10.013 SAP codes: 1 unknown profile; 14 ISO/IEC 19794-5 full frontal (docs/formats.md).
SAP_UNKNOWN, SAP_ISO_FULL_FRONTAL = 1, 14
#: Finger image resolutions a record may carry (the drivers' boundary, drivers/base.py).
FINGER_PPI = range(250, 1001)
#: 14.022 NQM "not computed": the kiosk's score is not NFIQ, so it never claims an NFIQ value.
NQM_NOT_COMPUTED = "254"
#: 14.024 FQM quality algorithm vendor and product. 0x0000 is no registered vendor: the
#: built-in assessor has no IBIA vendor id (docs/finger-quality.md).
FQM_VENDOR = "0000"
FQM_PRODUCT = "1"
PPI_PER_PPMM = 25.4
#: 17.011 CGA of the iris image formats the kiosk writes (lossless only: the standard's Table 15).
IRIS_CGA = {"png": "PNG", "jp2l": "JP2L"}
#: HLL/VLL of Type-14, Type-10 and Type-17 records: 2 to 5 digits (ANSI/NIST-ITL 1-2011).
IMAGE_PIXELS = range(10, 100_000)


ExceptionCode = Literal["XX", "UP"]  # amputated, unable to print (e.g. bandaged)


@dataclass(frozen=True)
class FingerImage:
    position: int  # 1 right thumb .. 10 left little
    image: bytes
    format: Literal["png", "wsq", "jp2l", "raw"]
    width: int
    height: int
    ppi: int  # the image's resolution
    quality: int | None = None  # 0..100 from the kiosk's assessor
    impression: int = 0  # 0 live-scan plain, 1 live-scan rolled
    scan_ppi: int = 0  # the scanner's native resolution when WSQ resampled the print; 0: = ppi

    @classmethod
    def from_encoded(cls, position: int, encoded: EncodedImage, quality: int | None = None,
                     impression: int = 0) -> FingerImage:
        """From ``images.encode_finger``'s result, which already knows format, size and ppi."""
        return cls(position, encoded.data, encoded.format, encoded.width, encoded.height, encoded.ppi,
                   quality, impression, encoded.scan_ppi)

    @property
    def native_ppi(self) -> int:
        return self.scan_ppi or self.ppi


@dataclass(frozen=True)
class FingerException:
    position: int
    code: ExceptionCode
    reason: str = ""


@dataclass(frozen=True)
class FaceImage:
    jpeg: bytes
    width: int
    height: int
    #: True when the frame passed the kiosk's ISO/IEC 19794-5 full-frontal checks (SAP 14);
    #: False or None (not judged) writes SAP 1, claiming no profile.
    full_frontal: bool | None = None


@dataclass(frozen=True)
class IrisImage:
    eye: int  # 17.003 ELR: 0 undefined, 1 right, 2 left (agent/formats/positions.py)
    image: bytes
    format: Literal["png", "jp2l"]
    width: int
    height: int
    quality: int | None = None  # 0..100, the device's score (MOSIP SBI qualityScore)


@dataclass(frozen=True)
class RegistrationRecord:
    id: str
    applicant_ref: str
    operator_id: str
    kiosk_id: str
    site: str
    created_at: datetime  # timezone-aware
    fingers: Sequence[FingerImage] = ()
    exceptions: Sequence[FingerException] = ()
    face: FaceImage | None = None
    irises: Sequence[IrisImage] = ()


@dataclass(frozen=True)
class TransactionOptions:
    """The [formats] settings the transaction needs (FormatsConfig carries them)."""

    transaction_type: str = "CAR"
    originating_agency: str = "KIOSK"
    destination_agency: str = "CENTRAL"
    extra_type2: dict[int, str] = field(default_factory=dict)
    #: Edition of the ISO/IEC 19794-4 record written beside the transaction ("2005", "2011").
    iso_edition: str = "2005"

    @classmethod
    def from_config(cls, formats: FormatsConfig) -> TransactionOptions:
        return cls(formats.transaction_type, formats.originating_agency, formats.destination_agency,
                   iso_edition=formats.iso_edition)


def _ppmm(ppi: int) -> str:
    # NSR/NTR are pixels per millimetre as NN.NN; 500 ppi -> 19.69.
    return f"{ppi / PPI_PER_PPMM:05.2f}"


def _clean(value: str) -> str:
    # The separators FS, GS, RS, US (0x1c..0x1f) would split fields, and no other control
    # character belongs in a name or an address; UTF-8 never puts those bytes inside a character.
    cleaned = "".join(ch for ch in value if ch >= " " and ch != "\x7f")
    try:
        cleaned.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text holds a lone surrogate, which is no character at all") from None
    return cleaned


def _wire(value: str) -> str:
    """Text as nistitl must be given it to write UTF-8: nistitl encodes every value as latin-1,
    so each UTF-8 byte goes in as the latin-1 character of the same value (ASCII is unchanged)."""
    return value.encode("utf-8").decode("latin-1")


def _texts(registration: RegistrationRecord, extra: dict[int, str]) -> list[str]:
    return [registration.applicant_ref, registration.operator_id, registration.kiosk_id, registration.site,
            registration.id, *extra.values(), *(e.reason for e in registration.exceptions)]


def _check(registration: RegistrationRecord) -> None:
    if registration.created_at.tzinfo is None:
        raise ValueError("created_at must be timezone-aware")
    slaps = [f.position for f in registration.fingers if f.position in SLAP_POSITIONS]
    if len(slaps) != len(set(slaps)):
        raise ValueError(f"a slap position appears twice: {sorted(slaps)}")
    seen: set[int] = set()
    # Slaps (13 right four, 14 left four, 15 both thumbs) hold several fingers in one image;
    # an exception for a finger inside a slap is how a slap with a missing finger is filed.
    singles = [f.position for f in registration.fingers if f.position not in SLAP_POSITIONS]
    for pos in singles + [e.position for e in registration.exceptions]:
        problem = position_problem(pos, FINGERS)
        if problem is not None:
            raise ValueError(f"finger position {problem} (or a slap, 13..15)")
        if pos in seen:
            raise ValueError(f"finger position {pos} appears twice (a capture and an exception?)")
        seen.add(pos)
    for f in registration.fingers:
        if f.format not in CGA:
            raise ValueError(f"finger {f.position}: format {f.format!r} is not one of {sorted(CGA)}")
        if f.ppi not in FINGER_PPI or (f.scan_ppi and f.scan_ppi not in FINGER_PPI):
            raise ValueError(f"finger {f.position}: resolution {f.ppi} ppi (scanned at {f.native_ppi}) "
                             f"is not {FINGER_PPI.start}..{FINGER_PPI.stop - 1}")
        if f.format == "wsq" and f.ppi != 500:
            raise ValueError(f"finger {f.position}: WSQ is written at 500 ppi only, not {f.ppi}")
        if f.quality is not None and not 0 <= f.quality <= 100:
            raise ValueError(f"finger {f.position}: quality {f.quality} is not 0..100")
    _check_irises(registration.irises)
    sizes = [(f"finger {f.position}", f.width, f.height) for f in registration.fingers]
    sizes += [(f"iris {i.eye}", i.width, i.height) for i in registration.irises]
    if registration.face is not None:
        sizes.append(("face", registration.face.width, registration.face.height))
    for what, width, height in sizes:  # from the capture header, which takes any integer
        if width not in IMAGE_PIXELS or height not in IMAGE_PIXELS:
            raise ValueError(f"{what}: image size {width} x {height} is not {IMAGE_PIXELS.start}.."
                             f"{IMAGE_PIXELS.stop - 1} pixels each way")


def _check_irises(irises: Sequence[IrisImage]) -> None:
    eyes = [i.eye for i in irises]
    if len(eyes) != len(set(eyes)):
        raise ValueError(f"an eye appears twice: {sorted(eyes)}")
    for iris in irises:
        if iris.eye not in EYE_LABELS:
            raise ValueError(f"eye label {iris.eye!r} is not one of {sorted(EYE_LABELS)}")
        if iris.format not in IRIS_CGA:
            raise ValueError(f"iris {iris.eye}: format {iris.format!r} is not one of {sorted(IRIS_CGA)}")
        if iris.quality is not None and not 0 <= iris.quality <= 100:
            raise ValueError(f"iris {iris.eye}: quality {iris.quality} is not 0..100")


def build_transaction(registration: RegistrationRecord, options: TransactionOptions | None = None) -> bytes:
    """The registration as ANSI/NIST-ITL 1-2011 bytes (Type-1, Type-2, Type-14 ..., Type-10)."""
    from nistitl import AsciiRecord, Field, Message

    _check(registration)
    opts = options or TransactionOptions()
    created = registration.created_at.astimezone(UTC)
    date = created.strftime("%Y%m%d")

    msg = Message()
    t1 = msg[0]
    t1.VER = VERSION
    t1.TOT = opts.transaction_type
    t1.DAT = date
    t1.DAI = opts.destination_agency
    t1.ORI = opts.originating_agency
    t1.TCN = _wire(_clean(registration.id))
    # NSR: the scanners' native resolution; NTR: the images' (they differ when WSQ resampled).
    # "00.00" only for a transaction without fingerprint images, as the standard asks.
    t1.NSR = _ppmm(max((f.native_ppi for f in registration.fingers), default=0))
    t1.NTR = _ppmm(max((f.ppi for f in registration.fingers), default=0))
    t1 += Field(1, 13, [list(DOMAIN)])  # DOM: the domain that defines our Type-2 fields
    t1 += Field(1, 14, created.strftime("%Y%m%d%H%M%SZ"))  # GMT
    if not all(_clean(text).isascii() for text in _texts(registration, opts.extra_type2)):
        t1 += Field(1, 15, [DCS_UTF8])  # DCS: the text beyond 7-bit ASCII is UTF-8

    t2 = AsciiRecord(2)
    t2.IDC = 0
    for tag, value in {101: registration.applicant_ref, 102: registration.operator_id,
                       103: registration.kiosk_id, 104: registration.site,
                       105: created.strftime("%Y-%m-%dT%H:%M:%SZ"), **opts.extra_type2}.items():
        if value:
            t2 += Field(2, tag, _wire(_clean(value)))
    msg += t2

    idc = 1
    for finger in sorted(registration.fingers, key=lambda f: f.position):
        msg += _type14(finger, idc, opts.originating_agency, date)
        idc += 1
    for exc in sorted(registration.exceptions, key=lambda e: e.position):
        msg += _type14_exception(exc, idc, opts.originating_agency, date)
        idc += 1
    if registration.face is not None:
        msg += _type10(registration.face, idc, opts.originating_agency, date)
        idc += 1
    for iris in sorted(registration.irises, key=lambda i: i.eye):
        msg += _type17(iris, idc, opts.originating_agency, date)
        idc += 1
    return msg.NIST


def _type14(finger: FingerImage, idc: int, agency: str, date: str) -> object:
    from nistitl import AsciiRecord, BinaryField, Field

    r = AsciiRecord(14)
    r.IDC = idc
    r += Field(14, 3, str(finger.impression))  # IMP
    r += Field(14, 4, agency)  # SRC
    r += Field(14, 5, date)  # FCD
    r += Field(14, 6, str(finger.width))  # HLL
    r += Field(14, 7, str(finger.height))  # VLL
    r += Field(14, 8, "1")  # SLC: pixels per inch
    r += Field(14, 9, str(finger.ppi))  # THPS
    r += Field(14, 10, str(finger.ppi))  # TVPS
    r += Field(14, 11, CGA[finger.format])  # CGA
    r += Field(14, 12, "8")  # BPX
    r += Field(14, 13, str(finger.position))  # FGP
    r += Field(14, 16, str(finger.native_ppi))  # SHPS: the scanner's own resolution
    r += Field(14, 17, str(finger.native_ppi))  # SVPS
    r += Field(14, 22, [[str(finger.position), NQM_NOT_COMPUTED]])  # NQM
    if finger.quality is not None:
        r += Field(14, 24, [[str(finger.position), str(finger.quality), FQM_VENDOR, FQM_PRODUCT]])  # FQM
    r += BinaryField(14, 999, finger.image)
    return r


def _type14_exception(exc: FingerException, idc: int, agency: str, date: str) -> object:
    from nistitl import AsciiRecord, Field

    r = AsciiRecord(14)
    r.IDC = idc
    r += Field(14, 3, "0")
    r += Field(14, 4, agency)
    r += Field(14, 5, date)
    r += Field(14, 13, str(exc.position))
    r += Field(14, 18, [[str(exc.position), exc.code]])  # AMP: FRAP, ABC
    if exc.reason:
        r += Field(14, 20, _wire(_clean(exc.reason)))  # COM
    return r


def _type10(face: FaceImage, idc: int, agency: str, date: str) -> object:
    from nistitl import AsciiRecord, BinaryField, Field

    r = AsciiRecord(10)
    r.IDC = idc
    r += Field(10, 3, "FACE")  # IMT
    r += Field(10, 4, agency)  # SRC
    r += Field(10, 5, date)  # PHD
    r += Field(10, 6, str(face.width))  # HLL
    r += Field(10, 7, str(face.height))  # VLL
    r += Field(10, 8, "0")  # SLC: no scale, square pixels
    r += Field(10, 9, "1")  # THPS
    r += Field(10, 10, "1")  # TVPS
    r += Field(10, 11, "JPEGB")  # CGA: baseline JPEG
    r += Field(10, 12, "YCC")  # CSP: a JPEG's colour space
    r += Field(10, 13, str(subject_acquisition_profile(face)))  # SAP
    r += Field(10, 20, "F")  # POS: full face frontal
    r += BinaryField(10, 999, face.jpeg)
    return r


def _type17(iris: IrisImage, idc: int, agency: str, date: str) -> object:
    from nistitl import AsciiRecord, BinaryField, Field

    r = AsciiRecord(17)
    r.IDC = idc
    r += Field(17, 3, str(iris.eye))  # ELR: eye label
    r += Field(17, 4, agency)  # SRC
    r += Field(17, 5, date)  # ICD: iris capture date
    r += Field(17, 6, str(iris.width))  # HLL
    r += Field(17, 7, str(iris.height))  # VLL
    # SLC 0 with THPS = TVPS = 1: no resolution, square pixels. SBI iris devices report none.
    r += Field(17, 8, "0")  # SLC
    r += Field(17, 9, "1")  # THPS
    r += Field(17, 10, "1")  # TVPS
    r += Field(17, 11, IRIS_CGA[iris.format])  # CGA
    r += Field(17, 12, "8")  # BPX
    r += Field(17, 13, "GRAY")  # CSP: near-infrared grey
    if iris.quality is not None:
        # IQS: quality value, algorithm vendor (hex; 0000 none registered), product code.
        r += Field(17, 24, [[str(iris.quality), FQM_VENDOR, FQM_PRODUCT]])
    r += BinaryField(17, 999, iris.image)
    return r


def subject_acquisition_profile(face: FaceImage) -> int:
    """10.013 SAP: 14 (ISO/IEC 19794-5 full frontal) for a frame that passed the kiosk's
    full-frontal checks; 1 (unknown) for one that did not or was not judged. The NIST
    best-practice levels 40..52 need a portrait frame of at least 480 x 600 pixels, which the
    kiosk's landscape camera frames are not (docs/formats.md)."""
    return SAP_ISO_FULL_FRONTAL if face.full_frontal else SAP_UNKNOWN
