"""An SBI (MOSIP Device Service, spec 0.9.5) device service, written from the specification: a
real HTTP server on 127.0.0.1 answering MOSIPDISC, MOSIPDINFO, RCAPTURE and STREAM as a
registration slap scanner, face camera or iris camera (subtype Double) does, with scripted
faults.

Fingers are ISO/IEC 19794-4:2011 records holding JPEG 2000 lossless images (the kiosk's own
writers make them); faces are ISO/IEC 19794-5:2011 records holding a JPEG; irises are ISO/IEC
19794-6:2011 records holding JPEG 2000 lossless images of synthetic eyes (concentric rings
with noise, made here: tests/emulators/sbi_iris.py). The face record's
fields between its headers and the image are zero-filled: the adapter under test reads only
the headers and the image. The hash chain is computed here from the specification's words,
independently of the adapter's code, so a wrong rule on either side fails the tests.

Faults, one per RCAPTURE call, then "ok": "busy" (error 111), "not-ready" (110), "no-finger"
(101), "timeout" (no answer until the service stops or ``hang_s``), "bad-signature" (one byte
of the data block's signature changed), "alg-none" (an unsigned data block claiming alg none),
"broken-chain" (a hash that does not continue the request's previousHash), "wrong-eye" (an
iris record labelled with the other eye than its bioSubType). ``slow_stream``
makes STREAM send its headers and then no frame.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import struct
import threading
import zlib
from collections import deque
from datetime import UTC, datetime
from typing import Any

import cv2
import numpy as np

from agent.formats.iso19794_4 import FingerImageRecord, FingerView
from agent.formats.iso19794_4_2011 import write_record_2011
from agent.formats.jp2 import encode_jp2_lossless
from drivers.fingerprint_synth import synthesize
from drivers.sim_camera import draw_face
from tests.emulators.sbi_iris import IRIS_SCORES, SUB_TYPES, iris_record
from tests.emulators.sbi_pki import DevicePki, tamper, unsigned

SUBTYPES = {"Right Thumb": 1, "Right IndexFinger": 2, "Right MiddleFinger": 3, "Right RingFinger": 4,
            "Right LittleFinger": 5, "Left Thumb": 6, "Left IndexFinger": 7, "Left MiddleFinger": 8,
            "Left RingFinger": 9, "Left LittleFinger": 10}
SPEC = "0.9.5"
OK = {"errorCode": "0", "errorInfo": "Success"}
BOUNDARY = "sbiframe"
#: Synthesised prints by (position, width, height), shared by every emulator in the run: a print
#: takes ~0.3 s to make, which would otherwise count against the adapter's capture timeout.
_PRINTS: dict[tuple[int, int, int], np.ndarray] = {}
_PRINTS_LOCK = threading.Lock()


def chain(previous: str, iso: bytes) -> str:
    """Specification: sha256 hex upper-case of (previous "hash" + sha256 hash of the ISO data)."""
    inner = hashlib.sha256(iso).hexdigest().upper()
    return hashlib.sha256(f"{previous}{inner}".encode()).hexdigest().upper()


def b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SbiService:
    def __init__(self, pki: DevicePki, bio_type: str = "Finger", ports: tuple[int, int] = (4501, 4600),
                 serial: str = "SBI0000000001", faults: list[str] | None = None, slow_stream: bool = False,
                 hang_s: float = 20.0, finger_size: tuple[int, int] = (256, 320)) -> None:
        self.pki, self.bio_type, self.serial = pki, bio_type, serial
        self.faults: deque[str] = deque(faults or [])
        self.slow_stream, self.hang_s, self.finger_size = slow_stream, hang_s, finger_size
        self.stopping = threading.Event()
        self.requests: list[tuple[str, Any]] = []
        self._server = self._bind(*ports)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"sbi-emulator-{self.port}",
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def _bind(self, low: int, high: int) -> http.server.ThreadingHTTPServer:
        handler = type("Handler", (_Handler,), {"service": self})
        for port in range(low, high + 1):
            try:
                server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
            except OSError:
                continue
            server.daemon_threads = True
            return server
        raise RuntimeError(f"no free port in {low}-{high}")

    def __enter__(self) -> SbiService:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # --- what the device says about itself -------------------------------------------------------

    def digital_id(self) -> dict[str, Any]:
        return {"serialNo": self.serial, "make": "Emulated", "model": f"SBI {self.bio_type}",
                "type": self.bio_type, "deviceSubType": SUB_TYPES[self.bio_type],
                "deviceProvider": "Test Device Provider", "deviceProviderId": "TDP",
                "dateTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}

    def _common(self) -> dict[str, Any]:
        return {"deviceId": "1", "deviceStatus": "Ready", "certification": "L0", "serviceVersion": SPEC,
                "deviceSubId": ["1", "2", "3"] if self.bio_type in ("Finger", "Iris") else ["0"],
                "callbackId": f"http://127.0.0.1:{self.port}/", "deviceCode": self.serial,
                "specVersion": [SPEC], "purpose": "Registration"}

    def discovery(self, body: dict[str, Any]) -> Any:
        if body.get("type") not in ("Biometric Device", self.bio_type):
            return []
        return [{**self._common(), "digitalId": unsigned(self.digital_id()), "error": OK}]

    def info(self) -> Any:
        info = {**self._common(), "firmware": "1.0.0", "env": "Production",
                "digitalId": self.pki.sign(self.digital_id())}
        return [{"deviceInfo": self.pki.sign(info), "error": OK}]

    # --- captures ---------------------------------------------------------------------------------

    def finger_record(self, position: int, quality: int) -> bytes:
        gray = self.print_of(position)
        view = FingerView(position, encode_jp2_lossless(gray, 500), gray.shape[1], gray.shape[0], quality)
        return write_record_2011(FingerImageRecord("jp2l", 500, (view,), captured_at=datetime.now(UTC)))

    def print_of(self, position: int) -> np.ndarray:
        """The finger this device sees at ``position`` (the same image every capture)."""
        w, h = self.finger_size
        with _PRINTS_LOCK:
            key = (position, w, h)
            if key not in _PRINTS:
                _PRINTS[key] = synthesize(zlib.crc32(f"sbi:{position}".encode()), w, h, 500)
            return _PRINTS[key]

    @staticmethod
    def face_record() -> bytes:
        frame = draw_face(640, 480, np.random.default_rng(7))
        jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
        # Representation: its length, then 40 zero bytes standing for the 2011 edition's capture
        # time, device, quality, facial information and image information blocks, then the image.
        representation = struct.pack(">I", 4 + 40 + len(jpeg)) + bytes(40) + jpeg
        return b"FAC\x00030\x00" + struct.pack(">IHB", 15 + len(representation), 1, 0) + representation

    def capture(self, body: dict[str, Any]) -> dict[str, Any] | None:
        fault = self.faults.popleft() if self.faults else "ok"
        bio = body["bio"][0]
        codes = {"busy": ("111", "Device is Busy"), "not-ready": ("110", "Device is not ready"),
                 "no-finger": ("101", "Unable to detect a biometric object")}
        if fault in codes:
            code, text = codes[fault]
            return {"biometrics": [{"specVersion": SPEC, "data": "", "hash": "",
                                    "error": {"errorCode": code, "errorInfo": text}}]}
        if fault == "timeout":
            self.stopping.wait(self.hang_s)
            return None
        previous = "0" * 64 if fault == "broken-chain" else bio["previousHash"]
        subtypes = bio.get("bioSubType") or [""]
        entries = []
        for subtype in subtypes:
            if self.bio_type == "Finger":
                score = 60 + SUBTYPES[subtype]
                iso = self.finger_record(SUBTYPES[subtype], score)
            elif self.bio_type == "Iris":
                score = IRIS_SCORES[subtype]
                iso = iris_record(subtype, score, wrong_eye=fault == "wrong-eye")
            else:
                score, iso = 88, self.face_record()
            data = {"digitalId": self.pki.sign(self.digital_id()), "bioType": self.bio_type,
                    "deviceCode": self.serial, "deviceServiceVersion": SPEC, "bioSubType": subtype,
                    "purpose": "Registration", "env": body.get("env"), "bioValue": b64url(iso),
                    "transactionId": body["transactionId"],
                    "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "requestedScore": bio["requestedScore"], "qualityScore": score}
            token = self.pki.sign(data, alg="none" if fault == "alg-none" else "RS256")
            if fault == "bad-signature":
                token = tamper(token)
            previous = chain(previous, iso)
            entries.append({"specVersion": SPEC, "data": token, "hash": previous, "error": OK})
        return {"biometrics": entries}


class _Handler(http.server.BaseHTTPRequestHandler):
    service: SbiService
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # the tests' output stays clean; requests are kept in service.requests

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def _json(self, value: Any) -> None:
        data = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Location", f"http://127.0.0.1:{self.service.port}")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(data)
        except OSError:
            pass  # the adapter gave up waiting (a timeout test) and hung up

    def do_MOSIPDISC(self) -> None:  # noqa: N802 - the specification's HTTP method
        body = self._body() or {}
        self.service.requests.append(("MOSIPDISC", body))
        self._json(self.service.discovery(body))

    def do_MOSIPDINFO(self) -> None:  # noqa: N802
        self._body()
        self.service.requests.append(("MOSIPDINFO", None))
        self._json(self.service.info())

    def do_RCAPTURE(self) -> None:  # noqa: N802
        body = self._body()
        self.service.requests.append(("RCAPTURE", body))
        answer = self.service.capture(body)
        if answer is None:
            self.close_connection = True
            return
        self._json(answer)

    def do_STREAM(self) -> None:  # noqa: N802
        body = self._body()
        self.service.requests.append(("STREAM", body))
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.service.slow_stream:
            self.wfile.flush()
            self.service.stopping.wait(self.service.hang_s)
            return
        frame = draw_face(320, 240, np.random.default_rng(1))
        jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
        try:
            for _ in range(3):  # about 3 frames a second, the specification's minimum
                part = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                self.wfile.write(part.encode() + jpeg + b"\r\n")
                self.wfile.flush()
                if self.service.stopping.wait(0.3):
                    return
        except OSError:
            return  # the client took its frame and hung up
