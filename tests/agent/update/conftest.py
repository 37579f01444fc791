"""The updater's fixtures live in kiosks.py (tests import its classes; never a conftest)."""

from tests.agent.update.kiosks import bundles, deps_site, kiosk  # noqa: F401
