"""libfprint's minutiae count in the finger report: a print fed to libfprint's virtual image
device (its real capture path and NBIS detection, as in tests/drivers/test_libfprint.py) is
judged as a registration judges it, and the count is a ``minutiae`` check that quality
analytics bucket; a driver's hostile detail is no count at all."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from agent.quality import analytics as qa
from agent.quality.config import QualityConfig
from agent.quality.finger import MIN_MINUTIAE, minutiae_check
from agent.registration.config import RegistrationConfig
from agent.registration.judging import Judge
from agent.registration.plan import PlanItem
from drivers import CapturedImage, CaptureRequest, Modality
from drivers.fingerprint_synth import synthesize
from drivers.libfprint import LibfprintConfig, LibfprintDriver
from drivers.libfprint_loop import import_fprint
from tests.support.waiting import wait_until


class VirtualImage:
    """The feeding end of libfprint's virtual image device (as in tests/drivers/test_libfprint.py):
    width and height, two little-endian int32, then the pixels."""

    def __init__(self, path: str) -> None:
        self.path, self.sock = path, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def connect(self) -> None:
        wait_until(lambda: os.path.exists(self.path), 10, what="libfprint's virtual image socket")
        self.sock.connect(self.path)

    def image(self, image: np.ndarray) -> None:
        self.sock.sendall(struct.pack("<ii", image.shape[1], image.shape[0]) + image.tobytes())

    def close(self) -> None:
        self.sock.close()


def when_waiting(driver: LibfprintDriver, act: Callable[[], None]) -> CapturedImage:
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(driver.capture, CaptureRequest(position=1))
        assert driver.waits_for_finger(10), "libfprint never asked for a finger"
        act()
        return future.result(30)


ITEM = PlanItem("finger-1", Modality.FINGER, 1, (1,), "finger")


@pytest.fixture
def scanner(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LibfprintDriver, VirtualImage]]:
    import_fprint()
    folder = tempfile.mkdtemp(prefix="fpm-", dir="/tmp")  # Unix socket paths are short
    path = os.path.join(folder, "image.sock")
    monkeypatch.setenv("FP_VIRTUAL_IMAGE", path)
    monkeypatch.delenv("FP_VIRTUAL_DEVICE", raising=False)
    feeder = VirtualImage(path)
    config = LibfprintConfig(libfprint_driver="virtual_image", capture_timeout_s=10)
    driver = LibfprintDriver("finger", config)
    driver.open()
    feeder.connect()
    try:
        yield driver, feeder
    finally:
        driver.close()
        feeder.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_libfprints_minutiae_are_a_check_of_the_report_and_of_analytics(
        scanner: tuple[LibfprintDriver, VirtualImage], tmp_path: Path) -> None:
    driver, feeder = scanner
    print_ = synthesize(7, 320, 400)
    shot = when_waiting(driver, lambda: feeder.image(print_))
    found = shot.quality_detail["minutiae"]
    assert found > 10
    report = Judge(RegistrationConfig(), QualityConfig()).judge(ITEM, shot, 1).detail.report
    (check,) = [c for c in report.checks if c.name == "minutiae"]
    assert (check.value, check.threshold, check.passed) == (found, ">= 5", True)
    analytics = qa.QualityAnalytics(tmp_path / qa.FILE_NAME)
    analytics.record_attempt("op", "finger", report)
    (row,) = [c for c in analytics.read("2000-01-01").checks if c.name == "minutiae"]
    assert (row.n, row.low, row.hist) == (1, found, [int(i == found // 10) for i in range(10)])
    analytics.close()
    # The gate the driver applied is the report's too: above the count, the check fails with
    # the scanner's hint (the driver itself would have asked for a retry first).
    driver.config.min_minutiae = found
    shot = when_waiting(driver, lambda: feeder.image(print_))
    assert shot.quality_detail["min_minutiae"] == found
    shot.quality_detail["min_minutiae"] = found + 1
    report = Judge(RegistrationConfig(), QualityConfig()).judge(ITEM, shot, 1).detail.report
    (check,) = [c for c in report.checks if c.name == "minutiae"]
    assert not check.passed and check.threshold == f">= {found + 1}" and "pressing" in check.hint
    assert not report.passed


@pytest.mark.parametrize("detail", [{}, {"minutiae": True}, {"minutiae": -1}, {"minutiae": "40"},
                                    {"minutiae": 4.5}, {"minutiae": 10**9}, {"minutiae": None}])
def test_no_plausible_count_is_no_check(detail: dict[str, object]) -> None:
    assert minutiae_check(detail) is None


def test_a_hostile_gate_falls_back_to_nfiq2s() -> None:
    for gate in (True, 0, -3, 10**6, "9", 2.5):
        check = minutiae_check({"minutiae": 7, "min_minutiae": gate})
        assert check is not None and check.threshold == f">= {MIN_MINUTIAE}" and check.passed
    check = minutiae_check({"minutiae": 3})
    assert check is not None and not check.passed and check.value == 3
