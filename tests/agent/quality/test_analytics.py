"""Quality analytics (agent/quality/analytics.py) and ``kiosk-agent quality stats``: daily
aggregates in a real SQLite file, operators as pseudonyms, mergeable fixed buckets, pruning,
restarts, and hostile input on the command line and in reports."""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from agent.quality import analytics as qa
from agent.quality.report import Check, QualityReport
from cli.main import main
from tests.support.config import to_toml

DAY = 86400.0
#: Noon UTC on 2026-11-28: "today" for the clocked tests.
T0 = datetime(2026, 11, 28, 12, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, at: float = T0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def report(score: int, passed: bool, **values: float | None) -> QualityReport:
    checks = tuple(Check(name, value, ">= x", value is not None and passed) for name, value in values.items())
    return QualityReport("finger", score, (*checks, Check("score", score, ">= 40", passed)))


def open_at(tmp_path: Path, clock: Clock, keep_days: int = 90) -> qa.QualityAnalytics:
    return qa.QualityAnalytics(tmp_path / qa.FILE_NAME, keep_days, clock=clock)


def test_attempts_items_and_exceptions_add_up_in_fixed_buckets(tmp_path: Path) -> None:
    a = open_at(tmp_path, Clock())
    # One finger passing at once; one passing at the third attempt; one forced after five.
    a.record_attempt("alice", "finger", report(95, True, orientation_certainty=0.9))
    a.record_item("alice", "finger", 95, 1, False, 1)
    for score in (12, 30, 100):
        a.record_attempt("alice", "finger", report(score, score >= 40, orientation_certainty=score / 100))
    a.record_item("alice", "finger", 100, 3, False, 1)
    a.record_attempt("alice", "finger", report(9, False, orientation_certainty=None))
    a.record_item("alice", "finger", 9, 7, True, 4)
    a.record_exception("alice", "XX")
    a.record_exception("alice", "UP")
    a.record_exception("alice", "XX")
    data = a.read("2026-11-28")
    (o,) = data.outcomes
    assert (o.day, o.modality, o.operator) == ("2026-11-28", "finger", a.pseudonym("alice"))
    assert (o.judged, o.judged_passed, o.items, o.items_passed, o.force_captured) == (5, 2, 3, 2, 1)
    assert o.attempts == 11 and o.attempts_hist == [1, 0, 1, 0, 1]  # 7 attempts count as "5+"
    # Scores: 9 -> 0-9, 12 -> 10-19, 30 -> 30-39, 95 and 100 -> 90-100.
    assert o.judged_scores == [1, 1, 0, 1, 0, 0, 0, 0, 0, 2]
    assert o.item_scores == [1, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert o.exceptions == 3 and o.exception_codes == {"UP": 1, "XX": 2} and o.fingers == 6
    certainty = next(c for c in data.checks if c.name == "orientation_certainty")
    assert (certainty.n, certainty.unmeasured, certainty.failed) == (5, 1, 3)
    assert certainty.low == pytest.approx(0.12) and certainty.high == pytest.approx(1.0)
    assert certainty.mean() == pytest.approx((0.9 + 0.12 + 0.3 + 1.0) / 4)
    assert certainty.hist == [0, 1, 0, 1, 0, 0, 0, 0, 0, 2]  # 1.0 is in the top bucket
    a.close()


def test_aggregates_merge_by_adding(tmp_path: Path) -> None:
    # Two kiosks' days merged, as the central side would: counts and buckets add, min/max hold.
    rows = []
    for name, scores in (("k1", (50, 70)), ("k2", (90,))):
        folder = tmp_path / name
        folder.mkdir()
        a = qa.QualityAnalytics(folder / qa.FILE_NAME, clock=Clock())
        for s in scores:
            a.record_attempt("op", "face", report(s, True, centre=s / 100))
            a.record_item("op", "face", s, 1, False)
        rows.append(a.read("2026-11-01"))
        a.close()
    (merged,) = qa.merge_outcomes([o for r in rows for o in r.outcomes], ("modality",))
    assert merged.items == 3 and merged.item_scores[5] == merged.item_scores[7] == merged.item_scores[9] == 1
    assert merged.operator == "*" and merged.day == "*"
    (centre,) = qa.merge_checks([c for r in rows for c in r.checks if c.name == "centre"], ("name",))
    assert (centre.n, centre.low, centre.high, centre.hist) == (3, 0.5, 0.9, None)  # no fixed scale


def test_it_survives_a_restart_with_the_same_pseudonyms(tmp_path: Path) -> None:
    clock = Clock()
    a = open_at(tmp_path, clock)
    a.record_item("alice", "finger", 80, 2, False, 1)
    alias = a.pseudonym("alice")
    a.close()
    b = open_at(tmp_path, clock)
    assert b.pseudonym("alice") == alias and b.pseudonym("bob") != alias
    b.record_item("alice", "finger", 60, 1, False, 1)
    (o,) = b.read("2026-11-28").outcomes
    assert o.items == 2 and o.operator == alias
    b.close()
    # Another kiosk (another file, another key): the same operator is unrelated there.
    other = qa.QualityAnalytics(tmp_path / "other.db", clock=clock)
    assert other.pseudonym("alice") != alias
    other.close()


def test_operator_ids_never_reach_the_file_or_telemetry(tmp_path: Path) -> None:
    operator = "Zoë Operatorname-4711"
    a = open_at(tmp_path, Clock())
    a.record_attempt(operator, "finger", report(70, True, orientation_certainty=0.8))
    a.record_item(operator, "finger", 70, 1, False, 1)
    a.record_exception(operator, "XX")
    telemetry = json.dumps(a.telemetry(2))
    a.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(qa.FILE_NAME))
    for form in (operator.encode(), operator.encode("utf-16-le"), b"Operatorname"):
        assert form not in stored
    assert "Operatorname" not in telemetry and qa.pseudonym(_key(tmp_path), operator) in telemetry
    assert oct((tmp_path / qa.FILE_NAME).stat().st_mode & 0o777) == oct(0o600)


def _key(tmp_path: Path) -> bytes:
    db, key = qa.open_readonly(tmp_path / qa.FILE_NAME)
    db.close()
    return key


def test_old_days_are_pruned(tmp_path: Path) -> None:
    clock = Clock(T0 - 9 * DAY)
    a = open_at(tmp_path, clock, keep_days=3)
    for _ in range(10):  # ten days, one item each
        a.record_item("op", "finger", 50, 1, False, 1)
        a.record_attempt("op", "finger", report(50, True, orientation_certainty=0.5))
        clock.at += DAY
    days = sorted({o.day for o in a.read("2000-01-01").outcomes})
    assert days == ["2026-11-26", "2026-11-27", "2026-11-28"]
    assert sorted({c.day for c in a.read("2000-01-01").checks}) == days
    a.close()


def test_telemetry_has_the_last_days_with_checks_summed_over_operators(tmp_path: Path) -> None:
    clock = Clock(T0 - 2 * DAY)
    a = open_at(tmp_path, clock)
    a.record_attempt("a", "finger", report(10, False, orientation_certainty=0.1))  # too old for 2 days
    clock.at = T0 - DAY
    a.record_attempt("a", "finger", report(20, False, orientation_certainty=0.2))
    clock.at = T0
    a.record_attempt("a", "finger", report(30, False, orientation_certainty=0.3))
    a.record_attempt("b", "finger", report(40, True, orientation_certainty=0.4))
    t = a.telemetry(2)
    assert t is not None and t["since"] == "2026-11-27" and t["score_buckets"][0] == "0-10"
    # One row per day and operator; the day before yesterday is not in it.
    assert sorted((o["day"], o["operator"], o["judged"]) for o in t["outcomes"]) == sorted([
        ("2026-11-27", a.pseudonym("a"), 1), ("2026-11-28", a.pseudonym("a"), 1),
        ("2026-11-28", a.pseudonym("b"), 1)])
    today = [c for c in t["checks"] if c["day"] == "2026-11-28" and c["name"] == "orientation_certainty"]
    assert len(today) == 1 and today[0]["n"] == 2 and today[0]["operator"] == "*"
    assert a.telemetry(0) is None
    a.close()


def test_hostile_report_content_is_contained(tmp_path: Path) -> None:
    a = open_at(tmp_path, Clock())
    odd = QualityReport("finger", 50, (
        Check("'; DROP TABLE checks; --", 1.0, "", True),
        Check("x" * 500, 2.0, "", True),
        Check("nan_value", float("nan"), "", False),
        Check("inf_value", float("inf"), "", False),
        Check("bool_value", True, "", True),  # type: ignore[arg-type]
    ))
    a.record_attempt("op", "hologram", odd)
    a.record_exception("op", "../../etc")
    data = a.read("2026-11-28")
    names = {c.name: c for c in data.checks}
    assert set(names) == {"other", "nan_value", "inf_value", "bool_value"}
    assert names["other"].n == 2
    assert all(names[n].unmeasured == 1 for n in ("nan_value", "inf_value", "bool_value"))
    assert {o.modality for o in data.outcomes} == {"other", "finger"}
    assert next(o for o in data.outcomes if o.modality == "finger").exception_codes == {"other": 1}
    a.close()


def test_a_database_error_never_fails_the_capture(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = open_at(tmp_path, Clock())
    other = sqlite3.connect(tmp_path / qa.FILE_NAME)
    other.execute("DROP TABLE outcomes")
    other.commit()
    other.close()
    with caplog.at_level(logging.WARNING, "agent.quality.analytics"):
        a.record_item("op", "finger", 50, 1, False, 1)  # does not raise
        a.record_item("op", "finger", 50, 1, False, 1)
    warnings = [r for r in caplog.records if "cannot record" in r.getMessage()]
    assert len(warnings) == 1  # once, not per capture
    assert "op" not in warnings[0].getMessage().replace("operator", "")
    a.close()


# --- kiosk-agent quality stats ---------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(to_toml({"kiosk": {"id": "k9", "state_dir": str(tmp_path / "state")},
                             "mqtt": {"allow_plaintext": True}}))
    return path


def _fill(tmp_path: Path) -> None:
    a = qa.QualityAnalytics(tmp_path / "state" / qa.FILE_NAME)  # today, by the real clock
    for op, scores in (("alice", (95, 30, 88)), ("bob\x1b[31m", (12,))):
        for s in scores:
            a.record_attempt(op, "finger", report(s, s >= 40, orientation_certainty=s / 100))
        a.record_item(op, "finger", max(scores), len(scores), max(scores) < 40, 1)
    a.record_exception("alice", "XX")
    a.record_attempt("alice", "face", report(77, True))
    a.record_item("alice", "face", 77, 1, False)
    a.close()


def test_stats_by_modality_operator_and_check(tmp_path: Path, config_file: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _fill(tmp_path)
    assert main(["quality", "stats", "--config", str(config_file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["modality"]: r for r in out["rows"]}
    assert out["by"] == "modality" and out["kiosk"] == "k9" and set(rows) == {"finger", "face"}
    finger = rows["finger"]
    assert finger["items"] == 2 and finger["attempts_per_item"] == 2.0 and finger["retried_rate"] == 0.5
    assert finger["force_captured_rate"] == 0.5 and finger["exception_rate"] == round(1 / 3, 4)
    assert rows["face"]["exception_rate"] is None

    assert main(["quality", "stats", "--config", str(config_file), "--by", "operator",
                 "--operator", "alice"]) == 0
    text = capsys.readouterr().out
    assert "alice" in text and "op-" in text and "bob" not in text
    assert main(["quality", "stats", "--config", str(config_file), "--by", "operator"]) == 0
    text = capsys.readouterr().out
    # Without --operator, pseudonyms only; an id is never printed raw (escape sequences).
    assert "alice" not in text and "bob" not in text and "\x1b" not in text
    assert text.count("op-") == 3  # alice's finger and face rows, bob's finger row
    # Named in clear, an id is shown printable: no terminal escape sequence gets through.
    assert main(["quality", "stats", "--config", str(config_file), "--by", "operator",
                 "--operator", "bob\x1b[31m"]) == 0
    text = capsys.readouterr().out
    assert "bob?[31m" in text and "\x1b" not in text

    assert main(["quality", "stats", "--config", str(config_file), "--by", "check"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["modality", "check", "judged"]
    certainty = next(line for line in lines if "orientation_certainty" in line)
    assert certainty.split()[2] == "4" and "50.0%" in certainty  # 4 judged, 2 failed


def test_stats_exit_codes_and_hostile_arguments(tmp_path: Path, config_file: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quality", "stats", "--config", str(config_file)]) == 1  # nothing recorded yet
    assert "no quality statistics" in capsys.readouterr().err
    _fill(tmp_path)
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()
    assert main(["quality", "stats", "--config", str(config_file), "--since", tomorrow]) == 2
    assert "after today" in capsys.readouterr().err
    for bad in (["--days", "0"], ["--days", "x"], ["--days", "99999"], ["--since", "2026-13-01"],
                ["--since", "20261201"], ["--since", "../../etc/passwd"], ["--operator", " "],
                ["--operator", "x" * 129], ["--by", "applicant"], ["--days", "3", "--since", "2026-01-01"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["quality", "stats", "--config", str(config_file), *bad])
        assert exit_info.value.code == 2, bad
    capsys.readouterr()
    # An old --since shows the same rows; an operator nobody is shows nothing, still exit 0.
    assert main(["quality", "stats", "--config", str(config_file), "--since", "2020-01-01", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["rows"]) == 2
    assert main(["quality", "stats", "--config", str(config_file), "--operator", "nobody"]) == 0
    assert "nothing recorded" in capsys.readouterr().out
    # Not a statistics file: said, exit 1.
    (tmp_path / "state" / qa.FILE_NAME).write_bytes(b"garbage" * 100)
    for side in ("-wal", "-shm"):
        (tmp_path / "state" / f"{qa.FILE_NAME}{side}").unlink(missing_ok=True)
    assert main(["quality", "stats", "--config", str(config_file)]) == 1
    assert "cannot read" in capsys.readouterr().err


# --- face checks and telemetry's latest day ----------------------------------------------------


def test_face_checks_get_histograms_with_their_thresholds_on_bucket_edges(tmp_path: Path) -> None:
    from agent.quality.config import FaceQualityConfig
    from agent.quality.face import FaceAssessor
    from drivers.sim_camera import draw_face

    cfg = FaceQualityConfig()
    report = FaceAssessor(cfg).assess(draw_face(640, 480, np.random.default_rng(0))).report
    assert report.extra["path"] == "landmarks" and len(report.checks) == 20
    a = open_at(tmp_path, Clock())
    a.record_attempt("alice", "face", report)
    stats = {c.name: c for c in a.read("2026-11-28").checks}
    for check in report.checks:
        row = stats[check.name]
        assert row.hist is not None and sum(row.hist) == 1, check.name
        # The value lands in its own bucket, not an end bucket it was clamped into.
        low, high = qa.CHECK_RANGES[check.name]
        assert low <= check.value < high, check
        assert row.hist[qa.value_bucket(check.value, low, high)] == 1
    edges = {"eye_distance": [cfg.min_eye_distance_px],
             "horizontal_centre": [cfg.centre_min, cfg.centre_max],
             "eye_line_height": [cfg.eye_line_min, cfg.eye_line_max],
             "roll": [-cfg.max_roll_deg, cfg.max_roll_deg],
             "luminance": [cfg.luminance_max], "dark_pixels": [cfg.max_dark_share],
             "bright_pixels": [cfg.max_bright_share], "sharpness": [cfg.min_sharpness],
             "background": [cfg.max_background_gradient], "yaw": [-cfg.max_yaw_deg, cfg.max_yaw_deg],
             "pitch": [-cfg.max_pitch_deg, cfg.max_pitch_deg], "eyes_open": [cfg.min_eye_aspect_ratio],
             "mouth_closed": [cfg.max_mouth_opening], "expression": [cfg.max_smile],
             "gaze": [-cfg.max_gaze_offset, cfg.max_gaze_offset], "eyes_visible": [cfg.min_eye_contrast],
             "eye_glare": [cfg.max_eye_glare_share], "lighting_balance": [cfg.max_lighting_imbalance],
             "face_scale": [cfg.face_scale_min, cfg.face_scale_max]}
    for name, thresholds in edges.items():
        low, high = qa.CHECK_RANGES[name]
        for t in thresholds:
            # Passing and failing values of a default threshold never share a bucket.
            step = (high - low) * 1e-6
            assert qa.value_bucket(t - step, low, high) + 1 == qa.value_bucket(t + step, low, high), (name, t)
    a.close()


def test_telemetrys_latest_day_is_today_or_the_last_day_with_figures(tmp_path: Path) -> None:
    clock = Clock(T0 - DAY)
    a = open_at(tmp_path, clock)
    a.record_attempt("a", "finger", report(20, False, orientation_certainty=0.2))
    clock.at = T0
    before_today = a.telemetry(2)
    assert before_today is not None
    # Before today's first capture: yesterday's final totals.
    latest = qa.latest_day(before_today)
    assert latest["since"] == "2026-11-27" and [o["day"] for o in latest["outcomes"]] == ["2026-11-27"]
    a.record_attempt("b", "finger", report(40, True, orientation_certainty=0.4))
    full = a.telemetry(2)
    assert full is not None and {o["day"] for o in full["outcomes"]} == {"2026-11-27", "2026-11-28"}
    latest = qa.latest_day(full)
    assert latest["since"] == "2026-11-28" and latest["score_buckets"] == full["score_buckets"]
    assert [(o["day"], o["operator"]) for o in latest["outcomes"]] == [("2026-11-28", a.pseudonym("b"))]
    assert {c["day"] for c in latest["checks"]} == {"2026-11-28"} and latest["checks"]
    a.close()
    (tmp_path / "other").mkdir()
    empty = open_at(tmp_path / "other", Clock())
    nothing = empty.telemetry(2)
    assert nothing is not None and qa.latest_day(nothing) == nothing  # no day to cut to
    empty.close()
