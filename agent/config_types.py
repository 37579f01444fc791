"""Building blocks of every config section: the base model, shared field types, ConfigError.

Kept apart from agent/config.py so that each component's own section (agent/*/config.py)
can use them without importing the whole config, which imports every section.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from agent.errors import PermanentError


class ConfigError(PermanentError):
    """A config that cannot be used; ``problems`` lists every ``path: reason``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))



def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("must be between 1 and 65535")
    return value



def topic_segment(value: str) -> str:
    # An id becomes one MQTT topic level: wildcards or slashes would route captures to
    # other kiosks' topics.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
        raise ValueError(
            "must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (it becomes an MQTT topic level)"
        )
    return value



def topic_prefix(value: str) -> str:
    for level in value.split("/"):
        topic_segment(level)
    return value



Port = Annotated[int, AfterValidator(_port)]



TopicSegment = Annotated[str, AfterValidator(topic_segment)]



class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")



def describe_errors(exc: ValidationError, prefix: tuple[str, ...], model: type[BaseModel]) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(str(p) for p in err["loc"])
        where = ".".join(loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            known = _known_keys(model, err["loc"][:-1])
            msg = "unknown key" + (f"; known keys here: {', '.join(known)}" if known else "")
        elif err["type"] == "missing":
            msg = "missing; this setting is required"
        out.append(f"{where}: {msg}")
    return out



def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names at ``loc`` inside ``model``, for 'did you mean' style help."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type):
            return []
        current = field.annotation
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []
