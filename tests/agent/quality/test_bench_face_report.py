"""`make bench` judges and documents the face checks' frames per second (bench/report.py):
``face_fps`` (the landmarks path) against 15 frames per second on one core and the Haar
fallback's against 25, from the figures bench/face_quality.py wrote in bench/last-run.json."""

from __future__ import annotations

import copy
import json

from bench import report
from bench.common import REPO


def _last_run() -> dict:  # type: ignore[type-arg]
    return json.loads((REPO / "bench" / "last-run.json").read_text())


def test_the_face_figures_are_targets_and_rows_of_the_table() -> None:
    results = _last_run()
    results["targets"] = report.evaluate(results)
    assert results["targets"]["face_fps"] == {"target": ">= 15", "value": results["face_fps"],
                                              "met": results["face_fps"] >= 15}
    assert results["targets"]["face_haar_fps"]["target"] == ">= 25"
    table = report.headline_table(results)
    (landmarks,) = [row for row in table if "(`face_fps`)" in row]
    assert f"| {results['face_fps']}/s (" in landmarks and ">= 15: **met**" in landmarks
    added = results["face_quality"]["landmarks_rss_mb"]["added_mb"]
    assert f"the face mesh adds {added} MB" in landmarks
    (haar,) = [row for row in table if "(`face_haar_fps`" in row]
    assert f"| {results['face_haar_fps']}/s |" in haar and f"{results['face_raw_haar_fps']}/s" in haar
    assert "(`face_fps`)" in report.render(results)


def test_a_slow_face_path_is_not_met_and_a_skipped_one_has_no_row() -> None:
    results = _last_run()
    slow = copy.deepcopy(results)
    slow["face_fps"], slow["face_haar_fps"] = 12.0, 30.0
    slow["targets"] = report.evaluate(slow)
    assert not slow["targets"]["face_fps"]["met"] and slow["targets"]["face_haar_fps"]["met"]
    (row,) = [row for row in report.headline_table(slow) if "(`face_fps`)" in row]
    assert ">= 15: **not met**" in row
    for key in ("face_quality", "face_fps", "face_haar_fps", "face_raw_haar_fps", "face_ratio_vs_haar"):
        results.pop(key)
    results["targets"] = report.evaluate(results)
    assert "face_fps" not in results["targets"]
    assert not [row for row in report.headline_table(results) if "face" in row.lower()]
