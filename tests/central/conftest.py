"""Fixtures for the central side at scale: a scratch PostgreSQL database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import scratch_database


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    with scratch_database() as dsn:
        yield dsn
