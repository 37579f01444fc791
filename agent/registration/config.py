"""The [registration] and [local_api] config sections."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from agent.config_types import Section


class RegistrationConfig(Section):
    """Registration sessions (agent/registration/service.py, docs/local-api.md)."""

    #: "ten-flat": ten fingers one by one; "slaps-442": right four, left four, both thumbs.
    #: Either with "-iris" ("ten-flat-iris", "slaps-442-iris") also takes the right and the left
    #: iris after the face, from ``iris_device`` (an SBI iris device: drivers/sbi_iris.py).
    plan: Literal["ten-flat", "slaps-442", "ten-flat-iris", "slaps-442-iris"] = "ten-flat"
    #: Take the face too, after the fingers.
    face: bool = True
    #: The [devices.NAME] that takes fingers (a slap scanner for "slaps-442") and the face.
    finger_device: str = "finger"
    face_device: str = "camera"
    iris_device: str = "iris"
    #: A finger capture passes at this score (agent/quality/finger.py, 0..100) or above.
    finger_min_quality: int = Field(40, ge=0, le=100)
    #: A face passes when every face check passes and its score is at least this.
    face_min_quality: int = Field(50, ge=0, le=100)
    #: An iris passes at this device score (the SBI device's qualityScore, 0..100) or above;
    #: the kiosk has no iris quality measure of its own.
    iris_min_quality: int = Field(40, ge=0, le=100)
    #: Attempts per item; the best is kept, flagged force_captured, when none passes.
    max_attempts: int = Field(3, ge=1, le=10)
    #: Sessions are kept here (no images: those go to the queue, sealed, as they are taken).
    #: Default: registrations.db beside the queue.
    store_path: Path | None = None
    #: The kiosk asks the central side where its closed registrations stand (those without a
    #: final word: complete or cancelled) on every connect and then this often, each once it
    #: has been closed this long (agent/registration/central_status.py).
    central_query_interval_s: float = Field(300.0, ge=10)
    central_query_after_s: float = Field(60.0, ge=0)



def _loopback(value: str) -> str:
    try:
        if ipaddress.ip_address(value).is_loopback:
            return value
    except ValueError:
        if value == "localhost":
            return value
    raise ValueError("must be a loopback address (127.0.0.1, ::1): the local API serves only "
                     "the registration app on this machine")


class LocalApiConfig(Section):
    """The HTTP API for the kiosk's registration app (docs/local-api.md)."""

    #: Off by default: a kiosk without a registration app (a capture-only station, a demo)
    #: opens no port. The kiosk config examples turn it on.
    enabled: bool = False
    host: Annotated[str, AfterValidator(_loopback)] = "127.0.0.1"
    #: 0: any free port (tests); the port in use is logged.
    port: int = Field(8765, ge=0, le=65535)
    #: Serve on this Unix socket instead of TCP (mode 0660; callers must also pass the checks
    #: below: allowed_uids/allowed_gids or the token).
    unix_socket: Path | None = None
    #: The bearer token the registration app sends (Authorization: Bearer ...), one line in a
    #: file that only the agent and the app's group may read (0640 or stricter; `make
    #: install` creates /etc/kiosk-local-api/token). Required over TCP: loopback is reachable
    #: from every web page the kiosk's browser shows.
    token_file: Path | None = None
    #: Over the Unix socket: callers whose user or primary group id (SO_PEERCRED) is listed
    #: are let in without the token.
    allowed_uids: list[Annotated[int, Field(ge=0)]] = []
    allowed_gids: list[Annotated[int, Field(ge=0)]] = []
    #: Frames per second of the live camera preview (MJPEG).
    preview_fps: float = Field(5.0, ge=1, le=30)

    @model_validator(mode="after")
    def _someone_can_call(self) -> LocalApiConfig:
        if not self.enabled or self.token_file is not None:
            return self
        if self.unix_socket is None:
            raise ValueError(
                "token_file is required when the API listens on TCP: any web page in the kiosk's "
                "browser can reach loopback (`make install` creates /etc/kiosk-local-api/token)"
            )
        if not self.allowed_uids and not self.allowed_gids:
            raise ValueError("set token_file, allowed_uids or allowed_gids: nobody could call the API")
        return self
