"""The [formats] config section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.config_types import Section


class FormatsConfig(Section):
    """How registrations are encoded (agent/formats/, docs/formats.md)."""

    #: Fingerprint images: "png" (lossless, native resolution), "jp2l" (JPEG 2000 lossless,
    #: native resolution) or "wsq" (the FBI's wavelet codec, 500 ppi only: prints at another
    #: resolution are resampled to 500 ppi, the native one kept as the scan resolution).
    finger_format: Literal["png", "wsq", "jp2l"] = "png"
    #: WSQ bits per pixel. The wsq package fixes its encoder at 0.75 (the FBI's rate for 500 ppi
    #: prints), so no other value is accepted rather than one that would be silently ignored.
    wsq_bitrate: Literal[0.75] = 0.75
    #: Edition of the ISO/IEC 19794-4 finger image record (.fir) the receiver writes: "2005"
    #: (version 010) or "2011" (version 020); the face record (.fac) is ISO/IEC 19794-5:2011.
    iso_edition: Literal["2005", "2011"] = "2005"
    #: ANSI/NIST-ITL Type-1 type of transaction (1.004), e.g. "CAR" (criminal answer required).
    transaction_type: str = Field("CAR", pattern=r"^[A-Z0-9]{1,16}$")
    #: Originating agency (1.008 ORI, also the source agency 14.004/10.004) and destination (1.007 DAI).
    originating_agency: str = Field("KIOSK", pattern=r"^[A-Za-z0-9]{1,35}$")
    destination_agency: str = Field("CENTRAL", pattern=r"^[A-Za-z0-9]{1,35}$")
