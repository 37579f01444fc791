"""Shared fixtures: a real mosquitto on a free loopback port, temporary configs, and a
guard that fails any test leaving threads behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from devtools.broker import MosquittoBroker
from tests.support.soak import SOAK


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A soak-only test is left out of `make test` rather than skipped, so that a skip in CI always
    # means something is wrong (a missing service fails; it never skips).
    if SOAK:
        return
    left_out = [item for item in items if item.get_closest_marker("soak_only")]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not item.get_closest_marker("soak_only")]


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    if not MosquittoBroker.available():
        pytest.fail("mosquitto is not installed: run `make test` (it installs it) or "
                    "`sudo apt-get install mosquitto`")
    b = MosquittoBroker()
    b.start()
    try:
        yield b
    finally:
        b.close()












@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"test left threads running: {[t.name for t in leaked]}"




