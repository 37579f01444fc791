"""The memory-limit benchmark's harness (bench/memory_limit.py) must be able to fail: an agent
that does not fit its limit is reported as not completed, with the OOM kill named."""

from __future__ import annotations

import sys

import pytest

from bench.common import BenchError, Workspace
from bench.memory_limit import one_run, run


def test_an_agent_that_does_not_fit_its_memory_limit_is_reported_as_failed() -> None:
    with Workspace() as ws:
        free = one_run(ws, None, sessions=1, drop_cache=False)
        assert free["completed"], free["failure"]
        assert free["sessions_done"] == 1
        # The agent ran inside the group: its private memory alone is charged to it.
        assert free["peak_charge_mb"] > 40
        assert free["oom_kills"] == 0

        # An idle agent holds about 45 MB of private memory: it cannot start in 30 MB.
        tight = one_run(ws, 30, sessions=1, drop_cache=False)
        assert not tight["completed"]
        assert tight["sessions_done"] == 0
        assert tight["oom_kills"] >= 1
        assert "OOM killer" in tight["failure"]
        assert tight["peak_charge_mb"] <= 30


def test_the_step_refuses_a_process_that_has_already_mapped_opencv() -> None:
    import cv2  # noqa: F401 (the point: its pages are now resident in this process)

    assert "cv2" in sys.modules
    with Workspace() as ws, pytest.raises(BenchError, match="NumPy or OpenCV"):
        run(ws, [100])
