"""The van every media test starts from: one registration taken offline (tests/vans/van.py),
made once per module and copied for each test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vans.van import Van, make_template


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("van-template")
    return root, make_template(root)


@pytest.fixture
def van(template: tuple[Path, str], tmp_path: Path) -> Van:
    return Van(template[0], tmp_path, template[1])
