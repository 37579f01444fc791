"""Driver ``gt521f``: ADH-Tech GT-521F32 / GT-521F52 optical modules on a UART.

Capture: CmosLed on, poll IsPressFinger until a finger is on the glass, CaptureFinger (the
module judges the print: "bad finger" is a retry for the person), CmosLed off, then GetImage
(258 x 202, 8 bits). ``image = "raw"`` (GetRawImage, 160 x 120, the live camera frame) is
refused at capture: that frame has no known resolution, so no record may be made from it.
The LED is on only from the first poll to the end of the capture, so the person sees when
to lift the finger.

The module starts at 9600 baud after power-on; a GetImage takes 54 s at that rate, so
``open()`` switches it to ``transfer_baud`` (not persistent: after a power loss it is back
at 9600, which is why identification tries the configured rate, the transfer rate and then
the others). The wire format is drivers/gt521f_codec.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from drivers.base import CapturedImage, CaptureRequest, DeviceInfo, Driver, Health, Modality
from drivers.errors import (
    CaptureRetry,
    DeviceDisconnected,
    DeviceError,
    ImplausibleResolution,
    PermanentDeviceError,
    TransientDeviceError,
)
from drivers.gt521f_codec import (
    DEVICE_ID,
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    NACK,
    OPEN_INFO_SIZE,
    PACKET_SIZE,
    Command,
    Corrupt,
    Error,
    OpenInfo,
    PacketDecoder,
    Response,
    encode_command,
    error_text,
)
from drivers.png_phys import encode_grey_png
from drivers.serial_port import (
    BadReply,
    CommandLink,
    NoValidReply,
    SerialDriverConfig,
    SerialLink,
    setting,
    wire_time_s,
)

log = logging.getLogger(__name__)

BAUDS = (9600, 19200, 38400, 57600, 115200)
#: CheckEnrolled on this id tells the models apart without changing anything: the F52 holds
#: 3000 templates, the F32 200 and calls the id an invalid position.
_F52_ONLY_ID = 2999


class Gt521fConfig(SerialDriverConfig):
    driver: Literal["gt521f"] = "gt521f"
    #: The rate the module talks at after power-on (datasheet default 9600).
    baud: int = 9600
    #: After opening, switch the module to this rate for image transfers (GetImage: 54 s at
    #: 9600, 4.5 s at 115200). Set it equal to ``baud`` to never switch.
    transfer_baud: int = 115200
    #: "full": GetImage, 258 x 202 at the native resolution. "raw" (GetRawImage, 160 x 120, no
    #: known resolution) is accepted here so an old config loads, and refused at capture.
    image: Literal["full", "raw"] = "full"
    #: CaptureFinger in best-quality mode (slower) rather than fast mode.
    best_quality: bool = True
    #: Native resolution of GetImage (GT-521F32/F52 datasheets: 450 dpi).
    ppi: int = Field(450, ge=250, le=1000)

    @field_validator("baud", "transfer_baud")
    @classmethod
    def _family_baud(cls, value: int) -> int:
        if value not in BAUDS:
            raise ValueError(f"must be one of {', '.join(map(str, BAUDS))}")
        return value


class GtLink(CommandLink):
    """Command/response transactions in GT-521F packets (drivers/gt521f_codec.py)."""

    #: Quiet for two packets' time: the rest of a broken reply has been read off.
    quiet_bytes = 2 * PACKET_SIZE
    decoder: PacketDecoder

    def __init__(self, device_id: str, serial: SerialLink) -> None:
        super().__init__(device_id, serial, PacketDecoder())

    def command(self, command: Command, parameter: int = 0, *, timeout_s: float, attempts: int,
                data_size: int = 0) -> tuple[Response, bytes]:
        """Send a command; return its response and, after an ACK, its ``data_size`` bytes of data."""

        def reply(deadline: float) -> tuple[Response, bytes]:
            response = self._read_response(deadline)
            if response.code == NACK and response.parameter == Error.COMM_ERR:
                raise BadReply("the module received a corrupt command")
            if not response.ack or not data_size:
                return response, b""
            return response, self._read_data(data_size, timeout_s)

        # Long enough to read off the rest of a broken data packet.
        drain_limit_s = wire_time_s(data_size + 64, self.baud) * 1.5 + 1.0
        return self.transaction(encode_command(command, parameter), reply, what=command.name,
                                timeout_s=timeout_s, attempts=attempts, drain_limit_s=drain_limit_s)

    def _read_response(self, deadline: float) -> Response:
        while True:
            item = self.decoder.next_response()
            if isinstance(item, Corrupt):
                raise BadReply(f"response checksum error (computed 0x{item.expected:04X}, "
                               f"received 0x{item.received:04X})")
            if item is not None:
                if item.device_id == DEVICE_ID:
                    return item
                continue
            if time.monotonic() >= deadline:
                raise BadReply("timed out waiting for a response")
            self._fill()

    def _read_data(self, size: int, idle_s: float) -> bytes:
        # A long packet gets its time on the wire (twice over), but a line that has gone quiet
        # for idle_s will not finish it: a lost byte would otherwise cost the whole budget.
        last_byte = time.monotonic()
        deadline = last_byte + idle_s + 2 * wire_time_s(size + 6, self.baud)
        while True:
            item = self.decoder.next_data(size)
            if isinstance(item, Corrupt):
                raise BadReply(f"data checksum error (computed 0x{item.expected:04X}, "
                               f"received 0x{item.received:04X})")
            if item is not None:
                return item.data
            now = time.monotonic()
            if now >= deadline or now - last_byte >= idle_s:
                raise BadReply(f"timed out waiting for {size} bytes of data "
                               f"({self.decoder.pending} arrived)")
            if self._fill():
                last_byte = time.monotonic()

    def _fill(self) -> int:
        chunk = self.serial.read(65536)
        if chunk:
            self.decoder.feed(chunk)
        return len(chunk)


class Gt521fDriver(Driver):
    name = "gt521f"
    modality = Modality.FINGER
    vendor = "ADH-Tech (GT-521F32, GT-521F52)"
    config_model = Gt521fConfig
    config: Gt521fConfig

    def __init__(self, device_id: str, config: Gt521fConfig) -> None:
        super().__init__(device_id, config)
        self._link: GtLink | None = None

    # --- life cycle -----------------------------------------------------------------------

    def probe(self) -> DeviceInfo:
        if self._link is not None:
            return self._identify(self._link)
        link = self._connect()
        try:
            return self._identify(link)
        finally:
            link.close()

    def open(self) -> DeviceInfo:
        self.close()
        link = self._connect()
        try:
            info = self._identify(link)
            self._switch_baud(link)
            self._set_led(link, False)  # a crash mid-capture may have left it on
        except BaseException:
            link.close()
            raise
        self._link = link
        return replace(info, extra={**info.extra, "baud": link.baud})

    def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()

    def health(self) -> Health:
        if self._link is None:
            return Health(False, "not open")
        try:
            response, _ = self._link.command(Command.OPEN, 0, timeout_s=self.config.reply_timeout_s,
                                             attempts=1)
        except DeviceError as exc:
            return Health(False, str(exc))
        return Health(response.ack, "" if response.ack else error_text(response.parameter))

    def _connect(self) -> GtLink:
        return GtLink(self.device_id, SerialLink.open(self.device_id, self.config.port, self.config.baud))

    # --- identification -------------------------------------------------------------------

    def _identify(self, link: GtLink) -> DeviceInfo:
        """Open (with device information) at each candidate rate, then tell F32 from F52."""
        cfg = self.config
        candidates = list(dict.fromkeys([link.baud, cfg.baud, cfg.transfer_baud, *BAUDS]))
        for baud in candidates:
            if link.baud != baud:
                link.set_baud(baud)
            try:
                response, data = link.command(Command.OPEN, 1, timeout_s=cfg.probe_timeout_s, attempts=1,
                                              data_size=OPEN_INFO_SIZE)
            except NoValidReply as exc:
                log.debug("%s: nothing at %d baud: %s", self.device_id, baud, exc)
                continue
            if not response.ack:
                raise TransientDeviceError(
                    f"{self.device_id}: Open refused: {error_text(response.parameter)}")
            info = OpenInfo.parse(data)
            model, capacity = self._model(link)
            return DeviceInfo(
                driver=self.name, model=model, serial=info.serial_hex, firmware=f"{info.firmware:08X}",
                extra={"port": cfg.port, "baud": baud, "capacity": capacity,
                       "iso_area_max_size": info.iso_area_max_size, "image": cfg.image,
                       "ppi": cfg.ppi if cfg.image == "full" else 0},
            )
        raise TransientDeviceError(
            f"{self.device_id}: no GT-521F module answers on {cfg.port} at "
            f"{', '.join(map(str, candidates))} baud; check power and wiring (module TX to host RX) "
            f"and {setting(self.device_id, 'baud')}")

    def _model(self, link: GtLink) -> tuple[str, int | None]:
        response, _ = link.command(Command.CHECK_ENROLLED, _F52_ONLY_ID,
                                   timeout_s=self.config.reply_timeout_s, attempts=self.config.attempts)
        if not response.ack and response.parameter == Error.INVALID_POS:
            return "GT-521F32", 200
        if response.ack or response.parameter == Error.IS_NOT_USED:
            return "GT-521F52", 3000
        return "GT-521F", None

    def _switch_baud(self, link: GtLink) -> None:
        cfg = self.config
        if link.baud == cfg.transfer_baud:
            return
        response, _ = link.command(Command.CHANGE_BAUD, cfg.transfer_baud, timeout_s=cfg.reply_timeout_s,
                                   attempts=cfg.attempts)
        if not response.ack:
            raise PermanentDeviceError(
                f"{self.device_id}: the module refused {setting(self.device_id, 'transfer_baud')} = "
                f"{cfg.transfer_baud}: {error_text(response.parameter)}")
        link.set_baud(cfg.transfer_baud)
        # Confirm the module really listens at the new rate before relying on it.
        response, _ = link.command(Command.OPEN, 0, timeout_s=cfg.reply_timeout_s, attempts=cfg.attempts)
        if not response.ack:
            raise TransientDeviceError(f"{self.device_id}: Open refused at {cfg.transfer_baud} baud: "
                                       f"{error_text(response.parameter)}")
        log.info("%s: switched the module to %d baud for transfers", self.device_id, cfg.transfer_baud)

    # --- capture --------------------------------------------------------------------------

    def capture(self, request: CaptureRequest) -> CapturedImage:
        link = self._require_open()
        cfg = self.config
        timeout_s = request.timeout_s if request.timeout_s is not None else cfg.capture_timeout_s
        deadline = time.monotonic() + timeout_s
        if cfg.image == "raw":
            # GetRawImage is the camera's uncorrected frame at no known resolution: refused
            # here, before the LED comes on, as drivers/base.py FINGER_PPI would refuse it.
            raise ImplausibleResolution(
                f"{self.device_id}: {setting(self.device_id, 'image')} = \"raw\" gives the module's "
                f"uncorrected camera frame, which has no known resolution and cannot become a "
                f"fingerprint record; set image = \"full\"")
        with self._led_on(link):
            self._wait_for_finger(link, deadline)
            self._capture_finger(link)
        data = self._image_data(link, Command.GET_IMAGE, IMAGE_WIDTH * IMAGE_HEIGHT)
        image = np.frombuffer(data, dtype=np.uint8).reshape(IMAGE_HEIGHT, IMAGE_WIDTH)
        return self._captured(request, image, ppi=cfg.ppi, source="GetImage")

    def _captured(self, request: CaptureRequest, image: np.ndarray, *, ppi: int,
                  source: str) -> CapturedImage:
        return CapturedImage(
            modality=Modality.FINGER, position=request.position, image_format="png",
            image=encode_grey_png(image, ppi), width=image.shape[1], height=image.shape[0], ppi=ppi,
            quality_detail={"bits_per_pixel": 8, "source": source},
        )

    def _wait_for_finger(self, link: GtLink, deadline: float) -> None:
        cfg = self.config
        while True:
            response, _ = link.command(Command.IS_PRESS_FINGER, timeout_s=cfg.reply_timeout_s,
                                       attempts=cfg.attempts)
            if not response.ack:
                raise TransientDeviceError(f"{self.device_id}: IsPressFinger refused: "
                                           f"{error_text(response.parameter)}")
            if response.parameter == 0:
                return
            if time.monotonic() + cfg.poll_interval_s >= deadline:
                raise CaptureRetry("no finger", "place your finger flat on the glass")
            time.sleep(cfg.poll_interval_s)

    def _capture_finger(self, link: GtLink) -> None:
        cfg = self.config
        response, _ = link.command(Command.CAPTURE_FINGER, 1 if cfg.best_quality else 0,
                                   timeout_s=cfg.reply_timeout_s, attempts=cfg.attempts)
        if response.ack:
            return
        if response.parameter == Error.FINGER_IS_NOT_PRESSED:
            raise CaptureRetry("finger lifted", "keep the finger on the glass until the light goes off")
        if response.parameter == Error.BAD_FINGER:
            raise CaptureRetry("image too messy",
                               "wipe the finger and the glass, then press gently without rolling")
        raise TransientDeviceError(
            f"{self.device_id}: CaptureFinger refused: {error_text(response.parameter)}")

    def _image_data(self, link: GtLink, command: Command, size: int) -> bytes:
        response, data = link.command(command, timeout_s=self.config.reply_timeout_s,
                                      attempts=self.config.attempts, data_size=size)
        if not response.ack:
            raise TransientDeviceError(f"{self.device_id}: {command.name} refused: "
                                       f"{error_text(response.parameter)}")
        return data

    @contextmanager
    def _led_on(self, link: GtLink) -> Iterator[None]:
        self._set_led(link, True)
        try:
            yield
        except BaseException as exc:
            # Best effort: the capture's own error is what the caller must see.
            if not isinstance(exc, DeviceDisconnected):
                try:
                    self._set_led(link, False)
                except DeviceError as led_error:
                    log.warning("%s: could not switch the LED off after a failed capture: %s",
                                self.device_id, led_error)
            raise
        self._set_led(link, False)

    def _set_led(self, link: GtLink, on: bool) -> None:
        response, _ = link.command(Command.CMOS_LED, 1 if on else 0, timeout_s=self.config.reply_timeout_s,
                                   attempts=self.config.attempts)
        if not response.ack:
            raise TransientDeviceError(f"{self.device_id}: CmosLed refused: {error_text(response.parameter)}")

    def _require_open(self) -> GtLink:
        if self._link is None:
            raise TransientDeviceError(f"{self.device_id}: device not open")
        return self._link
