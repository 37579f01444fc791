from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.broker import MosquittoBroker
from tests.console.support import ConsoleKiosk


@pytest.fixture
def kiosk(tmp_path: Path, broker: MosquittoBroker) -> Iterator[ConsoleKiosk]:
    k = ConsoleKiosk(tmp_path, broker)
    try:
        yield k
    finally:
        k.stop()
