"""What a registration captures: the plan's items, finger names and exception codes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.formats.positions import FINGER_NAMES, FINGERS, SLAP_NAMES, SLAPS
from agent.registration.errors import RegistrationError
from drivers import Modality

#: Every position's name: fingers 1..10, slaps 13..15 (agent/formats/positions.py).
POSITION_NAMES = {**FINGER_NAMES, **SLAP_NAMES}
EXCEPTION_CODES = {"XX": "amputated", "UP": "unable to print (bandaged, injured)"}
#: Every item any plan has (a session's plan has some of them).
ITEM_KEYS = (*(f"finger-{p}" for p in sorted(FINGERS)), *(f"slap-{p}" for p in SLAPS), "face")


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
            "name": POSITION_NAMES.get(self.position, "face"),
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
    fingers = SLAPS.get(position, (position,) if position in FINGERS else ())
    return PlanItem(f"single-{position}", modality, position, fingers, device)
