"""The [registration] and [local_api] config sections."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from agent.config_types import Section


class RegistrationConfig(Section):
    """Registration sessions (agent/registration/service.py, docs/local-api.md)."""

    #: "ten-flat": ten fingers one by one; "slaps-442": right four, left four, both thumbs.
    plan: Literal["ten-flat", "slaps-442"] = "ten-flat"
    #: Take the face too, after the fingers.
    face: bool = True
    #: The [devices.NAME] that takes fingers (a slap scanner for "slaps-442") and the face.
    finger_device: str = "finger"
    face_device: str = "camera"
    #: A finger capture passes at this score (agent/quality/finger.py, 0..100) or above.
    finger_min_quality: int = Field(40, ge=0, le=100)
    #: A face passes when every face check passes and its score is at least this.
    face_min_quality: int = Field(50, ge=0, le=100)
    #: Attempts per item; the best is kept, flagged force_captured, when none passes.
    max_attempts: int = Field(3, ge=1, le=10)
    #: Sessions are kept here (no images: those go to the queue, sealed, as they are taken).
    #: Default: registrations.db beside the queue.
    store_path: Path | None = None



def _loopback(value: str) -> str:
    try:
        if ipaddress.ip_address(value).is_loopback:
            return value
    except ValueError:
        if value == "localhost":
            return value
    raise ValueError("must be a loopback address (127.0.0.1, ::1): the local API has no "
                     "authentication and serves only the registration app on this machine")



class LocalApiConfig(Section):
    """The HTTP API for the kiosk's registration app (docs/local-api.md)."""

    #: Off by default: a kiosk without a registration app (a capture-only station, a demo)
    #: opens no port. The kiosk config examples turn it on.
    enabled: bool = False
    host: Annotated[str, AfterValidator(_loopback)] = "127.0.0.1"
    #: 0: any free port (tests); the port in use is logged.
    port: int = Field(8765, ge=0, le=65535)
    #: Serve on this Unix socket instead of TCP (file permissions then decide who may call).
    unix_socket: Path | None = None
    #: Frames per second of the live camera preview (MJPEG).
    preview_fps: float = Field(5.0, ge=1, le=30)
