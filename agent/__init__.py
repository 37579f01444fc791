"""kiosk-agent: the edge agent for biometric registration kiosks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kiosk-agent")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
