"""Quality assessors from elsewhere: a ``module:callable`` import path named in the config.

Apart from agent/quality/finger.py so that the config can check the path at load time
without importing the assessors (and they, in turn, import the config's types).
"""

from __future__ import annotations

import importlib
from typing import Any


def resolve_factory(spec: str) -> Any:
    """Import "module:callable"; ValueError says what is wrong (used at config load too)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{spec!r} is neither 'builtin' nor a 'module:callable' import path")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"module {module_name!r} has no callable {attr!r}")
    return factory
