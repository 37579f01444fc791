"""What a registration captures: the plan's items, finger names and exception codes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.registration.errors import RegistrationError
from drivers import Modality

#: ANSI/NIST slap positions and the fingers each holds.
SLAPS: dict[int, tuple[int, ...]] = {13: (2, 3, 4, 5), 14: (7, 8, 9, 10), 15: (1, 6)}
FINGER_NAMES = {
    1: "right thumb",
    2: "right index",
    3: "right middle",
    4: "right ring",
    5: "right little",
    6: "left thumb",
    7: "left index",
    8: "left middle",
    9: "left ring",
    10: "left little",
    13: "right four fingers",
    14: "left four fingers",
    15: "both thumbs",
}
EXCEPTION_CODES = {"XX": "amputated", "UP": "unable to print (bandaged, injured)"}


@dataclass(frozen=True)
class PlanItem:
    key: str
    modality: Modality
    #: Finger position 1..10, slap position 13..15, 0 for the face.
    position: int
    fingers: tuple[int, ...]
    device: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "modality": self.modality.value,
            "position": self.position,
            "fingers": list(self.fingers),
            "device": self.device,
            "name": FINGER_NAMES.get(self.position, "face"),
        }


def plan_items(plan: str, face: bool, finger_device: str, face_device: str) -> list[PlanItem]:
    if plan == "ten-flat":
        items = [PlanItem(f"finger-{p}", Modality.FINGER, p, (p,), finger_device) for p in range(1, 11)]
    elif plan == "slaps-442":
        items = [
            PlanItem(f"slap-{p}", Modality.FINGER, p, fingers, finger_device) for p, fingers in SLAPS.items()
        ]
    else:
        raise RegistrationError("invalid", f"unknown plan {plan!r}; plans: ten-flat, slaps-442")
    if face:
        items.append(PlanItem("face", Modality.FACE, 0, (), face_device))
    return items


def single_item(device: str, modality: Modality, position: int) -> PlanItem:
    """The item for one capture outside any session (a finger, a slap or a face)."""
    fingers = SLAPS.get(position, (position,) if 1 <= position <= 10 else ())
    return PlanItem(f"single-{position}", modality, position, fingers, device)
