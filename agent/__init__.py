"""kiosk-agent: the edge agent for biometric registration kiosks."""

from __future__ import annotations

from functools import cache


@cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kiosk-agent")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+source"


def __getattr__(name: str) -> str:
    # Looked up on first use, not at import: reading the installed metadata takes tens of
    # milliseconds, and `import agent` comes before `run` can install its stop-signal
    # handlers (agent/shutdown.py), so every millisecond here is a window in which
    # SIGTERM kills the process without an orderly stop.
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
