"""Driver ``zfm``: ZhianTec ZFM / R30x / R503 / AS608 optical and capacitive modules on a UART.

Capture: poll GenImg until a finger is on the glass (the module lights its sensor only while
GenImg runs, so no LED command is needed), optionally Img2Tz to let the module judge the print
(too messy, too few features: the person can fix those), then UpImage: 256 x 288 pixels at
4 bits, two pixels a byte, in data packets. The wire format is drivers/zfm_codec.py.

Every command is retried after a checksum error or a timeout, up to ``attempts`` times, with
the line drained in between so we are back in step; an image upload that breaks is started
again as a whole, because the module cannot resend one packet.
"""

from __future__ import annotations

import logging
import struct
import time
from typing import Literal

from pydantic import Field, field_validator

from drivers.base import CapturedImage, CaptureRequest, DeviceInfo, Driver, Health, Modality
from drivers.errors import CaptureRetry, DeviceError, PermanentDeviceError, TransientDeviceError
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
from drivers.zfm_codec import (
    DEFAULT_ADDRESS,
    DEFAULT_PASSWORD,
    IMAGE_BYTES,
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    MAX_CONTENT,
    Code,
    Corrupt,
    Instruction,
    Packet,
    PacketDecoder,
    PacketId,
    ProductInfo,
    SysPara,
    code_text,
    command,
    unpack_image,
)

log = logging.getLogger(__name__)

#: Every rate the family supports: 9600 x N, N = 1..12.
BAUDS = tuple(9600 * n for n in range(1, 13))
#: Tried, in this order, when the configured rate is silent: the default, then the rates
#: people set on purpose. The odd multiples (28800, 48000, ...) are rarely used and many USB
#: bridges cannot make them; configure those explicitly.
PROBE_BAUDS = (57600, 115200, 9600, 19200, 38400)

#: Bytes of a packet besides its content: header 2, address 4, id 1, length 2, checksum 2.
_PREFIX_AND_CHECKSUM = 11
_RETRY_HINTS = {
    Code.TOO_MESSY: ("image too messy",
                     "wipe the finger and the glass, then press gently without rolling"),
    Code.TOO_FEW_FEATURES: ("too few features",
                            "press the finger flat and a little harder so it covers the glass"),
}


class ZfmConfig(SerialDriverConfig):
    driver: Literal["zfm"] = "zfm"
    #: The module's UART rate (datasheet default 57600 = 9600 x 6).
    baud: int = 57600
    #: The module address every packet carries (datasheet default 0xFFFFFFFF).
    address: int = Field(DEFAULT_ADDRESS, ge=0, le=0xFFFFFFFF)
    #: The module password, sent with VfyPwd (datasheet default 0). Never logged.
    password: int = Field(DEFAULT_PASSWORD, ge=0, le=0xFFFFFFFF, repr=False)
    #: Ask the module to extract features (Img2Tz) before uploading, so a smudged or partial
    #: print becomes a retry for the person instead of a poor capture.
    check_features: bool = True
    #: Native resolution of the sensor: 500 for R30x / AS608 / ZFM-20, 508 for R503.
    ppi: int = Field(500, ge=250, le=1000)

    @field_validator("baud")
    @classmethod
    def _family_baud(cls, value: int) -> int:
        if value not in BAUDS:
            raise ValueError(f"must be 9600 x N with N = 1..12 ({', '.join(map(str, BAUDS))})")
        return value


class ZfmLink(CommandLink):
    """Transactions in ZFM packets (drivers/zfm_codec.py) with the module at one address."""

    #: A packet of the largest content: the module sends an upload's packets back to back.
    quiet_bytes = _PREFIX_AND_CHECKSUM + MAX_CONTENT
    decoder: PacketDecoder

    def __init__(self, device_id: str, serial: SerialLink, address: int) -> None:
        super().__init__(device_id, serial, PacketDecoder())
        self.address = address

    def transact(self, instruction: Instruction, params: bytes = b"", *, timeout_s: float,
                 attempts: int, min_len: int = 1) -> tuple[int, bytes]:
        """Send a command; return (confirmation code, rest of the acknowledgement)."""
        return self.transaction(command(self.address, instruction, params),
                                lambda deadline: self._read_ack(deadline, min_len), what=instruction.name,
                                timeout_s=timeout_s, attempts=attempts, drain_limit_s=self._drain_limit_s())

    def upload_image(self, *, timeout_s: float, attempts: int) -> tuple[int, bytes]:
        """UpImage: (confirmation code, the packed image); started again after any error."""

        def reply(deadline: float) -> tuple[int, bytes]:
            code, _ = self._read_ack(deadline, 1)
            if code != Code.OK:
                return code, b""
            return Code.OK, self._read_image_data(timeout_s)

        return self.transaction(command(self.address, Instruction.UP_IMAGE), reply, what="image upload",
                                timeout_s=timeout_s, attempts=attempts, drain_limit_s=self._drain_limit_s(),
                                failure=f"image upload failed {attempts} time(s)")

    def _drain_limit_s(self) -> float:
        # Long enough to read off the rest of a broken upload, which is what may still be coming.
        return wire_time_s(2 * IMAGE_BYTES, self.baud) + 1.0

    def _read_image_data(self, timeout_s: float) -> bytes:
        data = bytearray()
        while True:
            packet = self._read_packet(time.monotonic() + timeout_s)
            if packet.pid not in (PacketId.DATA, PacketId.END):
                raise BadReply(f"packet id 0x{packet.pid:02X} in the middle of the image")
            data += packet.content
            if len(data) > IMAGE_BYTES:
                raise BadReply(f"more than {IMAGE_BYTES} bytes of image data")
            if packet.pid == PacketId.END:
                if len(data) != IMAGE_BYTES:
                    # A whole packet went missing: its neighbours' checksums were fine.
                    raise BadReply(f"image data ended after {len(data)} of {IMAGE_BYTES} bytes")
                return bytes(data)

    def _read_ack(self, deadline: float, min_len: int) -> tuple[int, bytes]:
        while True:
            packet = self._read_packet(deadline)
            if packet.pid != PacketId.ACK or len(packet.content) < min_len:
                # The tail of an aborted upload, or a late reply of another shape: not ours.
                log.debug("%s: skipping packet id 0x%02X of %d bytes", self.device_id, packet.pid,
                          len(packet.content))
                continue
            code = packet.content[0]
            if code == Code.PACKET_ERROR:
                raise BadReply("the module received a corrupt command")
            return code, packet.content[1:]

    def _read_packet(self, deadline: float) -> Packet:
        while True:
            item = self.decoder.next()
            if isinstance(item, Corrupt):
                raise BadReply(f"checksum error (computed 0x{item.expected:04X}, "
                               f"received 0x{item.received:04X})")
            if item is not None:
                if item.address == self.address:
                    return item
                log.debug("%s: ignoring a packet for address 0x%08X", self.device_id, item.address)
                continue
            if time.monotonic() >= deadline:
                raise BadReply("timed out waiting for a reply")
            chunk = self.serial.read(4096)
            if chunk:
                self.decoder.feed(chunk)


class ZfmDriver(Driver):
    name = "zfm"
    modality = Modality.FINGER
    vendor = "ZhianTec (ZFM, R30x, R503, AS608)"
    config_model = ZfmConfig
    config: ZfmConfig

    def __init__(self, device_id: str, config: ZfmConfig) -> None:
        super().__init__(device_id, config)
        self._link: ZfmLink | None = None

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
        except BaseException:
            link.close()
            raise
        self._link = link
        return info

    def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()

    def health(self) -> Health:
        if self._link is None:
            return Health(False, "not open")
        try:
            code, _ = self._link.transact(Instruction.VFY_PWD, struct.pack(">I", self.config.password),
                                          timeout_s=self.config.reply_timeout_s, attempts=1)
        except DeviceError as exc:
            return Health(False, str(exc))
        return Health(code == Code.OK, "" if code == Code.OK else code_text(code))

    def _connect(self) -> ZfmLink:
        serial = SerialLink.open(self.device_id, self.config.port, self.config.baud)
        return ZfmLink(self.device_id, serial, self.config.address)

    # --- identification -------------------------------------------------------------------

    def _identify(self, link: ZfmLink) -> DeviceInfo:
        """VfyPwd at each candidate rate, then ReadSysPara and ReadProdInfo: all read-only."""
        cfg = self.config
        candidates = [cfg.baud] + [b for b in PROBE_BAUDS if b != cfg.baud]
        for baud in candidates:
            if link.baud != baud:
                link.set_baud(baud)
            try:
                code, _ = link.transact(Instruction.VFY_PWD, struct.pack(">I", cfg.password),
                                        timeout_s=cfg.probe_timeout_s, attempts=1)
            except NoValidReply as exc:
                log.debug("%s: nothing at %d baud: %s", self.device_id, baud, exc)
                continue
            self._check_login(code)
            if baud != cfg.baud:
                log.warning("%s: the module answers at %d baud, not at %s = %d; set that in the "
                            "config to open it faster", self.device_id, baud,
                            setting(self.device_id, "baud"), cfg.baud)
            return self._describe(link)
        raise self._silence(link, candidates)

    def _check_login(self, code: int) -> None:
        if code == Code.OK:
            return
        if code == Code.WRONG_PASSWORD:
            raise PermanentDeviceError(
                f"{self.device_id}: the module on {self.config.port} rejected the password; set "
                f"{setting(self.device_id, 'password')} to its password (the factory default is 0)")
        if code == Code.BAD_ADDRESS:
            raise PermanentDeviceError(
                f"{self.device_id}: the module on {self.config.port} rejected address "
                f"0x{self.config.address:08X}; fix {setting(self.device_id, 'address')} "
                "(the factory default is 0xFFFFFFFF)")
        raise TransientDeviceError(f"{self.device_id}: VfyPwd answered: {code_text(code)}")

    def _silence(self, link: ZfmLink, tried: list[int]) -> DeviceError:
        """Why nothing answered: a module ignores packets for another address, so try ours."""
        cfg = self.config
        if cfg.address != DEFAULT_ADDRESS:
            probe = ZfmLink(self.device_id, link.serial, DEFAULT_ADDRESS)
            for baud in dict.fromkeys([cfg.baud, PROBE_BAUDS[0]]):
                probe.set_baud(baud)
                try:
                    probe.transact(Instruction.VFY_PWD, struct.pack(">I", cfg.password),
                                   timeout_s=cfg.probe_timeout_s, attempts=1)
                except NoValidReply as exc:
                    log.debug("%s: nothing at the factory address either: %s", self.device_id, exc)
                    continue
                return PermanentDeviceError(
                    f"{self.device_id}: the module on {cfg.port} answers at the factory address "
                    f"0xFFFFFFFF, not at {setting(self.device_id, 'address')} = 0x{cfg.address:08X}")
        return TransientDeviceError(
            f"{self.device_id}: no ZFM/R30x/AS608 module answers on {cfg.port} at "
            f"{', '.join(map(str, tried))} baud; check power and wiring (module TX to host RX), "
            f"{setting(self.device_id, 'baud')} and {setting(self.device_id, 'address')}")

    def _describe(self, link: ZfmLink) -> DeviceInfo:
        cfg = self.config
        code, data = link.transact(Instruction.READ_SYS_PARA, timeout_s=cfg.reply_timeout_s,
                                   attempts=cfg.attempts, min_len=17)
        if code != Code.OK:
            raise TransientDeviceError(f"{self.device_id}: ReadSysPara answered: {code_text(code)}")
        sys_para = SysPara.parse(data)
        product = self._product_info(link)
        extra: dict[str, object] = {
            "port": cfg.port, "baud": link.baud, "address": f"0x{sys_para.address:08X}",
            "packet_size": sys_para.packet_size, "library_size": sys_para.library_size,
            "security_level": sys_para.security_level, "system_id": f"0x{sys_para.system_id:04X}",
            "image": f"{IMAGE_WIDTH}x{IMAGE_HEIGHT} at 4 bits", "ppi": cfg.ppi,
        }
        if product is None:
            return DeviceInfo(driver=self.name, model="ZFM-compatible", serial="unknown",
                              firmware="", extra=extra)
        extra.update(sensor=product.sensor, sensor_size=f"{product.sensor_width}x{product.sensor_height}",
                     batch=product.batch)
        return DeviceInfo(driver=self.name, model=product.model or "ZFM-compatible",
                          serial=product.serial or "unknown", firmware=product.hardware, extra=extra)

    def _product_info(self, link: ZfmLink) -> ProductInfo | None:
        # Only the R503 and newer firmware know ReadProdInfo; older modules refuse it.
        try:
            code, data = link.transact(Instruction.READ_PROD_INFO, timeout_s=self.config.probe_timeout_s,
                                       attempts=1)
        except NoValidReply as exc:
            log.debug("%s: no product information: %s", self.device_id, exc)
            return None
        if code != Code.OK or len(data) < 46:
            log.debug("%s: no product information (%s)", self.device_id, code_text(code))
            return None
        return ProductInfo.parse(data)

    # --- capture --------------------------------------------------------------------------

    def capture(self, request: CaptureRequest) -> CapturedImage:
        link = self._require_open()
        cfg = self.config
        timeout_s = request.timeout_s if request.timeout_s is not None else cfg.capture_timeout_s
        self._wait_for_finger(link, time.monotonic() + timeout_s)
        if cfg.check_features:
            code, _ = link.transact(Instruction.IMG2TZ, b"\x01", timeout_s=cfg.reply_timeout_s,
                                    attempts=cfg.attempts)
            if code in _RETRY_HINTS:
                raise CaptureRetry(*_RETRY_HINTS[Code(code)])
            if code != Code.OK:
                raise TransientDeviceError(f"{self.device_id}: Img2Tz answered: {code_text(code)}")
        code, data = link.upload_image(timeout_s=cfg.reply_timeout_s, attempts=cfg.attempts)
        if code != Code.OK:
            raise TransientDeviceError(f"{self.device_id}: UpImage answered: {code_text(code)}")
        image = unpack_image(data)
        return CapturedImage(
            modality=Modality.FINGER, position=request.position, image_format="png",
            image=encode_grey_png(image, cfg.ppi), width=IMAGE_WIDTH, height=IMAGE_HEIGHT,
            ppi=cfg.ppi, quality_detail={"bits_per_pixel": 4},
        )

    def _wait_for_finger(self, link: ZfmLink, deadline: float) -> None:
        cfg = self.config
        while True:
            code, _ = link.transact(Instruction.GEN_IMG, timeout_s=cfg.reply_timeout_s,
                                    attempts=cfg.attempts)
            if code == Code.OK:
                return
            if code not in (Code.NO_FINGER, Code.CAPTURE_FAILED):
                raise TransientDeviceError(f"{self.device_id}: GenImg answered: {code_text(code)}")
            if time.monotonic() + cfg.poll_interval_s >= deadline:
                if code == Code.CAPTURE_FAILED:
                    raise CaptureRetry("capture failed", "hold the finger still on the glass")
                raise CaptureRetry("no finger", "place your finger flat on the glass")
            time.sleep(cfg.poll_interval_s)

    def _require_open(self) -> ZfmLink:
        if self._link is None:
            raise TransientDeviceError(f"{self.device_id}: device not open")
        return self._link
