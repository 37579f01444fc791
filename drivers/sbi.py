"""MOSIP SBI (MDS 0.9.5) device services: certified slap scanners and cameras behind their
vendor's service on 127.0.0.1, ports 4501-4600.

The adapter finds the device (MOSIPDISC over the port range), trusts it only once its signed
device info and digital ID verify against the configured device-provider certificates
(MOSIPDINFO), and takes registration captures (RCAPTURE) whose every signed block and the
session's hash chain must verify before any image leaves the driver: a capture that fails
either is refused (DeviceUntrusted, a permanent fault) and never reaches the queue. What the
specification says and which subset is used: docs/drivers.md, "MOSIP SBI device services".
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from drivers.base import CapturedImage, CaptureRequest, DeviceInfo, Driver, DriverConfig, Health, Modality
from drivers.errors import CaptureRetry, PermanentDeviceError, TransientDeviceError
from drivers.png_phys import encode_grey_png
from drivers.sbi_http import SbiEndpoint, SbiProtocolError, SbiUnreachable, check_loopback
from drivers.sbi_iso import decode, face_image, read_finger
from drivers.sbi_jws import (
    EMPTY_HASH,
    SignatureRefused,
    b64url_decode,
    is_hash,
    load_trusted,
    next_hash,
    parse_json_object,
    verify_jws,
)

#: The specification's finger names (bioSubType) and ANSI/NIST positions.
FINGER_SUBTYPES = {
    1: "Right Thumb", 2: "Right IndexFinger", 3: "Right MiddleFinger", 4: "Right RingFinger",
    5: "Right LittleFinger", 6: "Left Thumb", 7: "Left IndexFinger", 8: "Left MiddleFinger",
    9: "Left RingFinger", 10: "Left LittleFinger",
}
SUBTYPE_POSITIONS = {name: p for p, name in FINGER_SUBTYPES.items()}
#: Slap positions -> fingers, and the device sub id of each (1 left slap, 2 right, 3 thumbs).
SLAPS: dict[int, tuple[int, ...]] = {13: (2, 3, 4, 5), 14: (7, 8, 9, 10), 15: (1, 6)}
SLAP_SUB_ID = {13: 2, 14: 1, 15: 3}
SLAP_GAP_PX = 40
#: Error codes (specification, "Error Codes") that may pass by themselves.
TRANSIENT_CODES = {"104": "cannot reach its management server", "110": "not ready", "111": "busy"}
#: Error codes the person at the kiosk can fix.
RETRY_CODES = {"101": "no finger, face or eye detected", "105": "image orientation error"}
RETRY_HINTS = {"Finger": "place the fingers flat on the glass", "Face": "look at the camera",
               "Iris": "look into the iris camera with both eyes wide open"}
MB = 1024 * 1024
#: Sessions whose hash chain is kept (the oldest forgotten first): far more than are ever open.
MAX_CHAINS = 256


class DeviceUntrusted(PermanentDeviceError):
    """The device's signature, certificate or hash chain did not verify: nothing it sent is kept."""


class SbiConfig(DriverConfig):
    driver: Literal["sbi"] = "sbi"
    #: Loopback only: the specification binds device services to 127.0.0.1.
    host: str = "127.0.0.1"
    port_min: int = Field(4501, ge=1, le=65535)
    port_max: int = Field(4600, ge=1, le=65535)
    #: The device's serial number (deviceCode) when the kiosk has more than one of this type.
    serial: str = ""
    #: PEM files of the device-provider (or FTM root) CA certificates trusted to issue device keys.
    trusted_certs: list[Path] = Field(default_factory=list)
    #: Asked of the device (bio.requestedScore), 0..100; the device's own score is reported.
    requested_score: int = Field(40, ge=0, le=100)
    env: Literal["Staging", "Developer", "Pre-Production", "Production"] = "Production"
    spec_version: str = "0.9.5"
    #: Seconds for each discovery or device-info answer.
    call_timeout_s: float = Field(2.0, gt=0, le=30)
    #: Seconds the device may take beyond the capture timeout to send its answer.
    answer_grace_s: float = Field(5.0, ge=0, le=60)
    #: Seconds to wait for one preview frame of the STREAM.
    preview_timeout_s: float = Field(3.0, gt=0, le=30)
    #: Largest capture answer read, in MB (ten fingers as lossless JPEG 2000 are a few MB).
    max_answer_mb: int = Field(32, ge=1, le=256)

    @field_validator("host")
    @classmethod
    def _loopback(cls, value: str) -> str:
        return check_loopback(value)

    @model_validator(mode="after")
    def _ports(self) -> SbiConfig:
        if self.port_min > self.port_max:
            raise ValueError(f"port_min {self.port_min} is above port_max {self.port_max}")
        return self


class SbiFaceConfig(SbiConfig):
    driver: Literal["sbi-face"] = "sbi-face"  # type: ignore[assignment]


class SbiDriver(Driver):
    name = "sbi"
    modality = Modality.FINGER
    vendor = "MOSIP SBI"
    config_model: ClassVar[type[DriverConfig]] = SbiConfig
    bio_type: ClassVar[str] = "Finger"
    config: SbiConfig

    def __init__(self, device_id: str, config: SbiConfig) -> None:
        super().__init__(device_id, config)
        self._endpoint: SbiEndpoint | None = None
        self._device: dict[str, Any] = {}
        #: Each session's hash chain: the hash of its last accepted capture.
        self._chains: OrderedDict[str, str] = OrderedDict()

    # --- finding and trusting the device ----------------------------------------------------

    def _trusted(self) -> list[Any]:
        if not self.config.trusted_certs:
            raise PermanentDeviceError(
                f"devices.{self.device_id}.trusted_certs is empty: name the device provider's CA "
                "certificate (PEM) so the device's signatures can be verified")
        try:
            return load_trusted(self.config.trusted_certs)
        except ValueError as exc:
            raise PermanentDeviceError(f"devices.{self.device_id}.trusted_certs: {exc}") from None

    def _discover(self) -> tuple[SbiEndpoint, dict[str, Any]]:
        cfg = self.config
        for port in range(cfg.port_min, cfg.port_max + 1):
            endpoint = SbiEndpoint(cfg.host, port)
            try:
                answer = endpoint.call("MOSIPDISC", "/device", {"type": self.bio_type},
                                       cfg.call_timeout_s, MB)
            except TransientDeviceError:
                continue  # nothing there, or not in time: the next port
            except SbiProtocolError:
                continue  # something that is not an SBI service
            for entry in answer if isinstance(answer, list) else ():
                if self._wanted(entry):
                    return endpoint, entry
        raise SbiUnreachable(
            f"no SBI {self.bio_type} device for registration on {cfg.host} ports "
            f"{cfg.port_min}-{cfg.port_max}" + (f" with serial {cfg.serial}" if cfg.serial else ""))

    def _wanted(self, entry: Any) -> bool:
        if not isinstance(entry, dict) or entry.get("purpose") != "Registration":
            return False
        try:
            digital = parse_json_object(b64url_decode(entry.get("digitalId", ""), "digitalId"), "digitalId")
        except ValueError:
            return False
        return digital.get("type") == self.bio_type and (
            not self.config.serial or entry.get("deviceCode") == self.config.serial)

    def _info(self, endpoint: SbiEndpoint, found: dict[str, Any]) -> dict[str, Any]:
        """The device's verified info and digital ID; DeviceUntrusted when either does not verify."""
        trusted = self._trusted()
        answer = endpoint.call("MOSIPDINFO", "/info", None, self.config.call_timeout_s, MB)
        for entry in answer if isinstance(answer, list) else ():
            if not isinstance(entry, dict):
                continue
            try:
                info = verify_jws(entry.get("deviceInfo"), trusted).json()
                if info.get("deviceId") != found.get("deviceId"):
                    continue
                digital = verify_jws(info.get("digitalId"), trusted).json()
            except SignatureRefused as exc:
                raise DeviceUntrusted(
                    f"SBI device on port {endpoint.port} refused: device info: {exc}") from None
            except ValueError as exc:
                raise SbiProtocolError(f"SBI device info on port {endpoint.port}: {exc}") from None
            if digital.get("serialNo") != info.get("deviceCode") or digital.get("type") != self.bio_type:
                raise DeviceUntrusted(f"SBI device on port {endpoint.port}: the signed digital ID names "
                                      "another device than its device info")
            status = info.get("deviceStatus")
            if status != "Ready":
                raise TransientDeviceError(f"SBI device {info.get('deviceCode')} is {status!r}, not Ready")
            return {**info, "digital": digital}
        raise SbiProtocolError(f"SBI device info on port {endpoint.port} does not list device "
                               f"{found.get('deviceId')!r}")

    def _device_info(self, info: dict[str, Any]) -> DeviceInfo:
        digital = info["digital"]
        return DeviceInfo(
            driver=self.name, model=f"{digital.get('make', '')} {digital.get('model', '')}".strip(),
            serial=str(digital.get("serialNo", "")), firmware=str(info.get("firmware", "")),
            extra={"certification": info.get("certification"), "port": self._endpoint.port if self._endpoint
                   else None, "device_provider": digital.get("deviceProvider"),
                   "spec_versions": info.get("specVersion")})

    def probe(self) -> DeviceInfo:
        endpoint, found = self._discover()
        # Side-effect free: probing an open device leaves it open on the endpoint it had.
        opened, self._endpoint = self._endpoint, endpoint
        try:
            return self._device_info(self._info(endpoint, found))
        finally:
            self._endpoint = opened

    def open(self) -> DeviceInfo:
        endpoint, found = self._discover()
        info = self._info(endpoint, found)
        self._endpoint, self._device = endpoint, info
        self._chains.clear()
        return self._device_info(info)

    def health(self) -> Health:
        if self._endpoint is None:
            return Health(False, "not open")
        try:
            self._info(self._endpoint, self._device)
        except (TransientDeviceError, PermanentDeviceError) as exc:
            return Health(False, str(exc))
        return Health(True)

    def close(self) -> None:
        self._endpoint, self._device = None, {}

    # --- capture ------------------------------------------------------------------------------

    def _bio(self, request: CaptureRequest, previous: str) -> tuple[dict[str, Any], list[int]]:
        excepted = [p for p in request.exceptions if p in FINGER_SUBTYPES]
        if request.position in SLAPS:
            fingers = [p for p in SLAPS[request.position] if p not in excepted]
            sub_id = SLAP_SUB_ID[request.position]
        elif request.position in FINGER_SUBTYPES:
            fingers = [request.position]
            sub_id = next(s for slap, s in SLAP_SUB_ID.items() if request.position in SLAPS[slap])
        else:
            raise PermanentDeviceError(f"position {request.position} is not a finger or slap an SBI "
                                       "finger device can capture")
        return {
            "type": "Finger", "count": len(fingers), "bioSubType": [FINGER_SUBTYPES[p] for p in fingers],
            "exception": [FINGER_SUBTYPES[p] for p in excepted],
            "requestedScore": self.config.requested_score,
            "deviceId": self._device["deviceId"], "deviceSubId": sub_id, "previousHash": previous,
        }, fingers

    def _rcapture(self, request: CaptureRequest) -> tuple[list[dict[str, Any]], list[float], list[int]]:
        """The verified captures of one RCAPTURE; the chain advances only once all verify."""
        if self._endpoint is None:
            raise TransientDeviceError("the SBI device is not open")
        cfg = self.config
        timeout_s = request.timeout_s or cfg.capture_timeout_s
        transaction = f"kiosk-{secrets.token_hex(12)}"
        bio, fingers = self._bio(request, self.chain_of(request.session))
        body = {"env": cfg.env, "purpose": "Registration", "specVersion": cfg.spec_version,
                "timeout": int(timeout_s * 1000),
                "captureTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "transactionId": transaction, "bio": [bio], "customOpts": None}
        answer = self._endpoint.call("RCAPTURE", "/capture", body, timeout_s + cfg.answer_grace_s,
                                     cfg.max_answer_mb * MB)
        entries = answer.get("biometrics") if isinstance(answer, dict) else None
        if not isinstance(entries, list) or not entries:
            raise SbiProtocolError("the RCAPTURE answer holds no biometrics")
        for entry in entries:
            self._check_error(entry)
        trusted, chain, datas, scores = self._trusted(), bio["previousHash"], [], []
        for entry in entries:
            data, score, chain = self._verify_entry(entry, trusted, transaction, bio, chain)
            datas.append(data)
            scores.append(score)
        self._chains[request.session] = chain
        self._chains.move_to_end(request.session)
        while len(self._chains) > MAX_CHAINS:
            self._chains.popitem(last=False)
        return datas, scores, fingers

    def chain_of(self, session: str) -> str:
        """The hash the next capture of ``session`` continues from."""
        return self._chains.get(session, EMPTY_HASH)

    def _check_error(self, entry: Any) -> None:
        error = entry.get("error") if isinstance(entry, dict) else None
        code = str(error.get("errorCode", "0")) if isinstance(error, dict) else "0"
        if code == "0":
            return
        info = str(error.get("errorInfo", ""))[:200] if isinstance(error, dict) else ""
        if code in RETRY_CODES:
            raise CaptureRetry(RETRY_CODES[code], RETRY_HINTS[self.bio_type])
        if code in TRANSIENT_CODES or code.startswith("5"):
            what = TRANSIENT_CODES.get(code, "error")
            raise TransientDeviceError(f"SBI device {what} (code {code}: {info})")
        raise PermanentDeviceError(f"SBI device error {code}: {info}")

    def _verify_entry(self, entry: dict[str, Any], trusted: list[Any], transaction: str,
                      bio: dict[str, Any], previous: str) -> tuple[dict[str, Any], float, str]:
        serial = self._device.get("deviceCode")
        try:
            data = verify_jws(entry.get("data"), trusted).json()
            digital = verify_jws(data.get("digitalId"), trusted).json()
        except SignatureRefused as exc:
            raise DeviceUntrusted(f"SBI capture refused, nothing kept: {exc}") from None
        except ValueError as exc:
            raise SbiProtocolError(f"SBI capture: {exc}") from None
        if digital.get("serialNo") != serial or data.get("deviceCode") != serial:
            raise DeviceUntrusted("SBI capture refused: it was signed for another device than the one opened")
        if data.get("transactionId") != transaction or data.get("purpose") != "Registration":
            raise DeviceUntrusted("SBI capture refused: its transaction or purpose is not the one requested "
                                  "(a replayed or foreign capture)")
        if data.get("bioType") != bio["type"] or (
                bio["bioSubType"] and data.get("bioSubType") not in bio["bioSubType"]):
            raise SbiProtocolError(f"SBI capture holds {data.get('bioType')} {data.get('bioSubType')}, "
                                   "which was not requested")
        score = data.get("qualityScore")
        try:
            score = float(score)
        except (TypeError, ValueError):
            raise SbiProtocolError("SBI capture has no numeric qualityScore") from None
        if not 0 <= score <= 100:
            raise SbiProtocolError(f"SBI capture qualityScore {score} is outside 0..100")
        try:
            value = b64url_decode(data.get("bioValue"), "bioValue")
        except ValueError as exc:
            raise SbiProtocolError(f"SBI capture: {exc}") from None
        expected = next_hash(previous, value)
        claimed = entry.get("hash")
        if not is_hash(claimed) or claimed.upper() != expected:
            raise DeviceUntrusted("SBI capture refused, nothing kept: its hash does not continue the "
                                  "session's hash chain (a capture was replaced, reordered or replayed)")
        return {**data, "bioValue": value}, score, expected

    def capture(self, request: CaptureRequest) -> CapturedImage:
        datas, scores, fingers = self._rcapture(request)
        images: dict[int, Any] = {}
        for data in datas:
            position = SUBTYPE_POSITIONS[data["bioSubType"]]
            if position in images:
                raise SbiProtocolError(f"SBI capture holds finger {position} twice")
            try:
                finger = read_finger(data["bioValue"])
            except ValueError as exc:
                raise SbiProtocolError(f"SBI capture of finger {position}: {exc}") from None
            if finger.position != position:
                raise SbiProtocolError(f"SBI capture says {data['bioSubType']} but its record says position "
                                       f"{finger.position}")
            images[position] = finger
        ppis = {f.ppi for f in images.values()}
        if len(ppis) != 1:
            raise SbiProtocolError("SBI capture fingers differ in resolution")
        ppi = ppis.pop()
        gray = self._compose([images[p].gray for p in fingers if p in images])
        by_finger = {str(SUBTYPE_POSITIONS[d["bioSubType"]]): round(s, 1)
                     for d, s in zip(datas, scores, strict=True)}
        return CapturedImage(
            modality=Modality.FINGER, position=request.position, image_format="png",
            image=encode_grey_png(gray, ppi), width=gray.shape[1], height=gray.shape[0], ppi=ppi,
            # The specification judges a slap by the average of its fingers' scores.
            quality=round(sum(scores) / len(scores)),
            quality_detail=self._detail(by_finger, request.session))

    def _detail(self, scores: dict[str, float], session: str) -> dict[str, Any]:
        return {"assessor": "sbi-device", "device_scores": scores,
                "requested_score": self.config.requested_score,
                "device_serial": self._device.get("deviceCode"),
                "certification": self._device.get("certification"), "hash": self.chain_of(session)}

    @staticmethod
    def _compose(grays: list[np.ndarray]) -> np.ndarray:
        """Segmented fingers side by side on a white platen, as the slap judge expects them."""
        if len(grays) == 1:
            return grays[0]
        height = max(g.shape[0] for g in grays)
        width = sum(g.shape[1] for g in grays) + SLAP_GAP_PX * (len(grays) - 1)
        canvas = np.full((height, width), 255, np.uint8)
        x = 0
        for g in grays:
            canvas[: g.shape[0], x: x + g.shape[1]] = g
            x += g.shape[1] + SLAP_GAP_PX
        return canvas

    def preview(self) -> Any:
        """One frame of the device's STREAM (M-JPEG), decoded."""
        if self._endpoint is None:
            raise TransientDeviceError("the SBI device is not open")
        cfg = self.config
        sub_ids = self._device.get("deviceSubId") or [0]
        body = {"deviceId": self._device["deviceId"], "deviceSubId": str(sub_ids[0]),
                "timeout": int(cfg.preview_timeout_s * 1000)}
        frame = self._endpoint.stream_frame(body, cfg.preview_timeout_s, 4 * MB)
        try:
            return decode(frame, colour=True)
        except ValueError as exc:
            raise SbiProtocolError(f"SBI preview frame: {exc}") from None


class SbiFaceDriver(SbiDriver):
    """A camera behind an SBI service: one face per RCAPTURE, judged again by the kiosk."""

    name = "sbi-face"
    modality = Modality.FACE
    config_model = SbiFaceConfig
    bio_type = "Face"

    def _bio(self, request: CaptureRequest, previous: str) -> tuple[dict[str, Any], list[int]]:
        return {"type": "Face", "count": 1, "bioSubType": [], "exception": [],
                "requestedScore": self.config.requested_score, "deviceId": self._device["deviceId"],
                "deviceSubId": 0, "previousHash": previous}, []

    def capture(self, request: CaptureRequest) -> CapturedImage:
        datas, scores, _ = self._rcapture(request)
        if len(datas) != 1:
            raise SbiProtocolError(f"an SBI face capture holds {len(datas)} images, not 1")
        try:
            encoded = face_image(datas[0]["bioValue"])
            frame = decode(encoded, colour=True)
        except ValueError as exc:
            raise SbiProtocolError(f"SBI face capture: {exc}") from None
        fmt = "jpeg" if encoded.startswith(b"\xff\xd8") else "png"
        if fmt == "png":  # JPEG 2000 faces become lossless PNG, which every reader here takes
            import cv2

            encoded = cv2.imencode(".png", frame)[1].tobytes()
        return CapturedImage(
            modality=Modality.FACE, position=0, image_format=fmt, image=encoded,
            width=frame.shape[1], height=frame.shape[0], ppi=0, quality=round(scores[0]),
            # No "checks": the kiosk judges the face itself with its ICAO checks.
            quality_detail=self._detail({"face": round(scores[0], 1)}, request.session))
