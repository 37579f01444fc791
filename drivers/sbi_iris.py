"""MOSIP SBI iris devices (type "Iris", subtypes "Single" and "Double") behind their vendor's
service: the discovery, trust checks, signatures and hash chain of drivers/sbi.py, with the
iris capture on top.

Eyes are the ANSI/NIST-ITL 17.003 eye labels (1 right, 2 left; agent/formats/positions.py).
``capture()`` takes one eye: a Double device is asked on that eye's sub id (1 left, 2 right,
as the specification numbers them), a Single device on sub id 0. ``capture_eyes()`` asks a
Double device for both eyes in one RCAPTURE (sub id 3), a missing eye named in
``bio.exception``. Each eye comes back as an ISO/IEC 19794-6:2011 record whose image the
strict reader in drivers/sbi_iso.py takes out; the kiosk keeps it as a lossless PNG with the
device's own score, which is all an iris is judged by (agent/registration/judging.py).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from drivers.base import IRIS_SIDE, CapturedImage, CaptureRequest, DriverConfig, Modality
from drivers.errors import PermanentDeviceError
from drivers.png_phys import encode_grey_png
from drivers.sbi import SbiConfig, SbiDriver
from drivers.sbi_http import SbiProtocolError
from drivers.sbi_iso import read_iris

RIGHT, LEFT = 1, 2
#: The specification's iris names (bioSubType) by eye label, and back ("UNKNOWN": label 0).
EYE_SUBTYPES = {RIGHT: "Right", LEFT: "Left"}
SUBTYPE_EYES = {"Right": RIGHT, "Left": LEFT, "UNKNOWN": 0}
#: Double device sub ids (specification, device sub id): 1 left, 2 right, 3 both; Single: 0.
DOUBLE_SUB_IDS = {LEFT: 1, RIGHT: 2}
BOTH_SUB_ID, SINGLE_SUB_ID = 3, 0


class SbiIrisConfig(SbiConfig):
    driver: Literal["sbi-iris"] = "sbi-iris"  # type: ignore[assignment]


class SbiIrisDriver(SbiDriver):
    name = "sbi-iris"
    modality = Modality.IRIS
    config_model: ClassVar[type[DriverConfig]] = SbiIrisConfig
    bio_type = "Iris"

    def _double(self) -> bool:
        return self._device.get("digital", {}).get("deviceSubType") == "Double"

    def _bio(self, request: CaptureRequest, previous: str) -> tuple[dict[str, Any], list[int]]:
        excepted = [e for e in request.exceptions if e in EYE_SUBTYPES]
        if request.position == 0:  # both eyes, a Double device's sub id 3
            if not self._double():
                raise PermanentDeviceError("only a Double SBI iris device takes both eyes at once")
            eyes, sub_id = [e for e in (RIGHT, LEFT) if e not in excepted], BOTH_SUB_ID
            if not eyes:
                raise PermanentDeviceError("both eyes are exceptions: there is nothing to capture")
        elif request.position in EYE_SUBTYPES:
            eyes = [request.position]
            # One eye: the specification allows no exception on a one-eye sub id.
            excepted = []
            sub_id = DOUBLE_SUB_IDS[request.position] if self._double() else SINGLE_SUB_ID
        else:
            raise PermanentDeviceError(f"position {request.position} is not an eye label (1 right, "
                                       "2 left) an SBI iris device can capture")
        return {"type": "Iris", "count": len(eyes), "bioSubType": [EYE_SUBTYPES[e] for e in eyes],
                "exception": [EYE_SUBTYPES[e] for e in excepted],
                "requestedScore": self.config.requested_score, "deviceId": self._device["deviceId"],
                "deviceSubId": sub_id, "previousHash": previous}, eyes

    def capture_eyes(self, request: CaptureRequest) -> dict[int, CapturedImage]:
        """Each eye the one RCAPTURE took, by eye label; ``request.position`` 0 asks for both."""
        datas, scores, eyes = self._rcapture(request)
        images: dict[int, CapturedImage] = {}
        for data, score in zip(datas, scores, strict=True):
            eye = SUBTYPE_EYES.get(data.get("bioSubType"), -1)
            if eye not in eyes or eye in images:
                raise SbiProtocolError(f"SBI iris capture holds {data.get('bioSubType')!r}, which was not "
                                       "requested or came twice")
            try:
                found = read_iris(data["bioValue"])
            except ValueError as exc:
                raise SbiProtocolError(f"SBI capture of the {EYE_SUBTYPES[eye]} iris: {exc}") from None
            if len(found) != 1 or found[0].eye not in (0, eye):
                raise SbiProtocolError(f"SBI capture says {EYE_SUBTYPES[eye]} but its record holds eye "
                                       f"labels {[f.eye for f in found]}")
            gray = found[0].gray
            if gray.shape[0] not in IRIS_SIDE or gray.shape[1] not in IRIS_SIDE:
                raise SbiProtocolError(f"SBI iris image of {gray.shape[1]} x {gray.shape[0]} pixels")
            images[eye] = CapturedImage(
                modality=Modality.IRIS, position=eye, image_format="png", image=encode_grey_png(gray, 0),
                width=gray.shape[1], height=gray.shape[0], ppi=0, quality=round(score),
                quality_detail=self._detail({EYE_SUBTYPES[eye]: round(score, 1)}, request.session))
        if len(images) != len(eyes):
            raise SbiProtocolError(f"SBI iris capture holds {len(images)} of the {len(eyes)} eyes asked for")
        return images

    def capture(self, request: CaptureRequest) -> CapturedImage:
        if request.position not in EYE_SUBTYPES:
            raise PermanentDeviceError(f"position {request.position} is not an eye label (1 right, 2 left)")
        return self.capture_eyes(request)[request.position]
