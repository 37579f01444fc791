"""What a registration captures: the plan's items, finger names and exception codes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.formats.positions import EYE_LABELS, FINGER_NAMES, FINGERS, LEFT_EYE, RIGHT_EYE, SLAP_NAMES, SLAPS
from agent.registration.errors import RegistrationError
from drivers import Modality

#: Every position's name: fingers 1..10, slaps 13..15 (agent/formats/positions.py).
POSITION_NAMES = {**FINGER_NAMES, **SLAP_NAMES}
EXCEPTION_CODES = {"XX": "amputated", "UP": "unable to print (bandaged, injured)"}
#: The iris items and their eye labels (ANSI/NIST-ITL 17.003: 1 right, 2 left), in capture order.
IRIS_ITEMS = {"iris-right": RIGHT_EYE, "iris-left": LEFT_EYE}
#: The finger plans; each with the suffix "-iris" also takes both irises after the face.
FINGER_PLANS = ("ten-flat", "slaps-442")
IRIS_SUFFIX = "-iris"
PLANS = (*FINGER_PLANS, *(p + IRIS_SUFFIX for p in FINGER_PLANS))
#: Every item any plan has (a session's plan has some of them).
ITEM_KEYS = (*(f"finger-{p}" for p in sorted(FINGERS)), *(f"slap-{p}" for p in SLAPS), "face", *IRIS_ITEMS)


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
            "name": self.name,
        }


    @property
    def name(self) -> str:
        if self.modality is Modality.IRIS:
            return EYE_LABELS[self.position]
        return POSITION_NAMES.get(self.position, "face")


def plan_items(plan: str, face: bool, finger_device: str, face_device: str,
               iris_device: str = "iris") -> list[PlanItem]:
    """The items of ``plan`` in capture order: fingers, the face, then (plans ending in
    "-iris") the right and the left iris."""
    iris = plan.endswith(IRIS_SUFFIX) and plan in PLANS
    fingers = plan.removesuffix(IRIS_SUFFIX) if iris else plan
    if fingers == "ten-flat":
        items = [PlanItem(f"finger-{p}", Modality.FINGER, p, (p,), finger_device) for p in range(1, 11)]
    elif fingers == "slaps-442":
        items = [
            PlanItem(f"slap-{p}", Modality.FINGER, p, fingers, finger_device) for p, fingers in SLAPS.items()
        ]
    else:
        raise RegistrationError("invalid", f"unknown plan {plan!r}; plans: {', '.join(PLANS)}")
    if face:
        items.append(PlanItem("face", Modality.FACE, 0, (), face_device))
    if iris:
        items += [PlanItem(key, Modality.IRIS, eye, (), iris_device) for key, eye in IRIS_ITEMS.items()]
    return items


def single_item(device: str, modality: Modality, position: int) -> PlanItem:
    """The item for one capture outside any session (a finger, a slap, a face or an iris)."""
    if modality is not Modality.FINGER:
        return PlanItem(f"single-{position}", modality, position, (), device)
    fingers = SLAPS.get(position, (position,) if position in FINGERS else ())
    return PlanItem(f"single-{position}", modality, position, fingers, device)
