"""``kiosk-agent quality``: assess an image file, or show the kiosk's quality statistics.

``kiosk-agent quality IMAGE --modality face|finger`` (also ``quality check IMAGE ...``):
exit 0 every check passes, 1 a check fails, 2 bad input (missing file, not an image, bad
config). Thresholds come from the config file's quality settings when one is given.

``kiosk-agent quality stats [--days N | --since DATE] [--by modality|operator|check]``: the
daily aggregates agent/quality/analytics.py records, summed over the days asked for; exit 0,
1 when there are none to read (the agent has not recorded any with this config), 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sqlite3
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.quality.report import BadImage, QualityReport

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: modality -> "module:function"; each function is ``assess_file(path, config) -> QualityReport``
#: where config is the config file's [quality] tables or None (defaults). Imported lazily:
#: OpenCV is slow to load.
ASSESSORS: dict[str, str] = {
    "face": "agent.quality.face:assess_file",
    "finger": "agent.quality.finger:assess_file",
}
BY = ("modality", "operator", "check")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: As many days as analytics can keep (quality.analytics.keep_days' maximum).
MAX_DAYS = 3660


class _AnyWord(dict[str, Any]):
    """Subcommands by name that let any first word through argparse's choice check."""

    def __contains__(self, key: object) -> bool:
        return True


class _ImageOrCommand(argparse._SubParsersAction):  # type: ignore[type-arg]
    """``quality IMAGE ...`` is ``quality check IMAGE ...``: a first word that names no
    subcommand is an image file (a file called "stats" is ``quality check stats``). Kept so
    the command line of earlier releases, and scripts using it, still work."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if values and values[0] not in self._name_parser_map:
            values = ["check", *values]
        super().__call__(parser, namespace, values, option_string)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("quality", help="check an image file's quality (exit 0 passes, 1 fails, "
                                       "2 bad input), or show the kiosk's quality statistics",
                       description="kiosk-agent quality IMAGE --modality face|finger: assess an "
                                   "image file. kiosk-agent quality stats: the kiosk's daily "
                                   "quality aggregates.")
    commands = p.add_subparsers(dest="quality_command", metavar="IMAGE|stats", required=True,
                                action=_ImageOrCommand)
    c = commands.add_parser("check", help="assess an image file (the default: quality IMAGE ...)")
    c.add_argument("image", type=Path, metavar="IMAGE", help="PNG, JPEG, BMP or TIFF file")
    c.add_argument("--modality", required=True, choices=sorted(ASSESSORS))
    c.add_argument("--config", metavar="PATH",
                   help="take the thresholds from this config file (default: built-in defaults)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=cmd_quality)

    from agent.cliutil import config_arg

    s = commands.add_parser(
        "stats", help="scores, checks, retries, force-captured items and exceptions, per "
                      "modality, operator or check (exit 1: none recorded yet)",
        description="Sums of the daily quality aggregates the agent records as registrations are "
                    "taken (quality-stats.db in the state folder). Days are UTC days. Operators "
                    "appear as pseudonyms; --operator ID shows one in clear, on this kiosk only.")
    config_arg(s)
    when = s.add_mutually_exclusive_group()
    when.add_argument("--days", type=_days, default=7, metavar="N",
                      help="the last N UTC days, today included (default 7)")
    when.add_argument("--since", type=_day, metavar="DATE", help="from this UTC day (YYYY-MM-DD) to today")
    s.add_argument("--by", choices=BY, default="modality", help="one row per ... (default modality)")
    s.add_argument("--operator", action="append", type=_operator, metavar="ID", default=[],
                   help="only this operator (repeatable), named in clear beside its pseudonym")
    s.add_argument("--json", action="store_true", help="print the rows as JSON")
    s.set_defaults(func=cmd_stats)
    # Once every subcommand is added: argparse checks the first word against ``choices``.
    commands.choices = _AnyWord(commands._name_parser_map)


def _days(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of days") from None
    if not 1 <= days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_DAYS}")
    return days


def _day(value: str) -> date:
    try:
        if not _DAY.match(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value[:40]!r} is not a day as YYYY-MM-DD") from None


def _operator(value: str) -> str:
    # The rule registration sessions apply to operator ids (agent/registration/service.py).
    if not value.strip() or len(value) > 128:
        raise argparse.ArgumentTypeError("an operator id is 1-128 characters")
    return value.strip()


# --- quality IMAGE ----------------------------------------------------------------------------


def cmd_quality(args: argparse.Namespace) -> int:
    config = None
    if args.config:
        from agent.config import load_config

        config = load_config(Path(args.config)).quality  # ConfigError -> exit 2 in cli.main
    module_name, _, func_name = ASSESSORS[args.modality].partition(":")
    assess = getattr(importlib.import_module(module_name), func_name)
    try:
        report: QualityReport = assess(args.image, config)
    except BadImage as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(f"{args.modality} quality {report.score}/100: {'PASS' if report.passed else 'FAIL'}"
              f" ({report.assessor})")
        for c in report.checks:
            value = "n/a" if c.value is None else f"{c.value:.3g}"
            line = f"  {'ok  ' if c.passed else 'FAIL'} {c.name:<22} {value:>8}  ({c.threshold})"
            if not c.passed and c.hint:
                line += f"  -> {c.hint}"
            if c.note:
                line += f"  [{c.note}]"
            print(line)
    return EXIT_OK if report.passed else EXIT_FAILED


# --- quality stats ----------------------------------------------------------------------------


def cmd_stats(args: argparse.Namespace) -> int:
    from agent.cliutil import load
    from agent.quality import analytics as qa

    config = load(args)  # ConfigError -> exit 2 in cli.main
    path = config.state_dir / qa.FILE_NAME
    today = datetime.now(UTC).date()
    since = args.since or today - timedelta(days=args.days - 1)
    if since > today:
        print(f"error: --since {since} is after today ({today}, UTC)", file=sys.stderr)
        return EXIT_USAGE
    if not path.is_file():
        print(f"error: no quality statistics at {path}: the agent records them as registration "
              "items are taken (quality.analytics.enabled)", file=sys.stderr)
        return EXIT_FAILED
    try:
        db, key = qa.open_readonly(path)
        try:
            data = qa.read_aggregates(db, since.isoformat(), today.isoformat())
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        print(f"error: cannot read {path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    named = {qa.pseudonym(key, op): op for op in args.operator}
    outcomes, checks = data.outcomes, data.checks
    if named:
        outcomes = [o for o in outcomes if o.operator in named]
        checks = [c for c in checks if c.operator in named]
    rows = _rows(args.by, outcomes, checks, named)
    if args.json:
        print(json.dumps({"kiosk": config.kiosk.id, "since": since.isoformat(), "until": today.isoformat(),
                          "by": args.by, "score_buckets": qa.bucket_labels(),
                          "attempt_buckets": ["1", "2", "3", "4", "5+"], "rows": rows}))
        return EXIT_OK
    print(f"quality statistics of kiosk {config.kiosk.id}, {since}..{today} (UTC days), by {args.by}"
          + (f", operators {', '.join(_printable(v) for v in sorted(named.values()))}" if named else ""))
    if not rows:
        print("  nothing recorded in these days")
        return EXIT_OK
    _print_table(rows, _COLUMNS[args.by])
    return EXIT_OK


def _rows(by: str, outcomes: list[Any], checks: list[Any], named: dict[str, str]) -> list[dict[str, Any]]:
    from agent.quality import analytics as qa

    if by == "check":
        out = []
        for c in qa.merge_checks(checks, ("modality", "name")):
            measured = c.n - c.unmeasured
            mean = c.mean()
            sd = None
            if measured and mean is not None:
                sd = max(0.0, c.total_sq / measured - mean * mean) ** 0.5
            out.append({"modality": c.modality, "check": c.name, "judged": c.n, "failed": c.failed,
                        "failed_rate": _rate(c.failed, c.n), "unmeasured": c.unmeasured,
                        "mean": _round(mean), "sd": _round(sd), "min": _round(c.low), "max": _round(c.high),
                        "hist": c.hist, "hist_range": list(qa.CHECK_RANGES[c.name])
                        if c.name in qa.CHECK_RANGES else None})
        return out
    keys = ("modality",) if by == "modality" else ("operator", "modality")
    out = []
    for o in qa.merge_outcomes(outcomes, keys):
        row: dict[str, Any] = {"modality": o.modality}
        if by == "operator":
            clear = {"operator_id": named[o.operator]} if o.operator in named else {}
            row = {"operator": o.operator, **clear, **row}
        row.update({
            "items": o.items, "attempts": o.attempts,
            "attempts_per_item": _round(o.attempts / o.items if o.items else None),
            "retried_rate": _rate(o.items - o.attempts_hist[0], o.items),
            "force_captured": o.force_captured, "force_captured_rate": _rate(o.force_captured, o.items),
            "exceptions": o.exceptions, "exception_codes": o.exception_codes,
            # Of the fingers asked for, the share recorded as exceptions (missing, unable to print).
            "exception_rate": _rate(o.exceptions, o.fingers + o.exceptions)
            if o.modality == "finger" else None,
            "mean_score": _round(o.item_score_sum / o.items if o.items else None),
            "item_scores": o.item_scores, "attempts_hist": o.attempts_hist,
            "judged": o.judged, "judged_passed_rate": _rate(o.judged_passed, o.judged),
            "mean_judged_score": _round(o.judged_score_sum / o.judged if o.judged else None),
            "judged_scores": o.judged_scores,
        })
        out.append(row)
    return out


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


_OUTCOME_COLUMNS = [("items", "items"), ("attempts_per_item", "att/item"), ("retried_rate", "retried"),
                    ("force_captured_rate", "forced"), ("exception_rate", "exceptions"),
                    ("mean_score", "mean score"), ("item_scores", "kept scores 0-9 .. 90-100")]
_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "modality": [("modality", "modality"), *_OUTCOME_COLUMNS],
    "operator": [("operator", "operator"), ("operator_id", "id"), ("modality", "modality"),
                 *_OUTCOME_COLUMNS],
    "check": [("modality", "modality"), ("check", "check"), ("judged", "judged"), ("failed_rate", "failed"),
              ("unmeasured", "unmeasured"), ("mean", "mean"), ("min", "min"), ("max", "max"),
              ("hist", "values in 10 buckets")],
}


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key.endswith("_rate"):
        return f"{100 * value:.1f}%"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return _printable(str(value))


def _printable(text: str) -> str:
    # Operator ids are whatever was typed: shown printable, on one line, no terminal escapes.
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    cells = [[_cell(k, r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(title), *(len(row[i]) for row in cells)) for i, (_, title) in enumerate(columns)]
    print("  ".join(title.ljust(w) for (_, title), w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
