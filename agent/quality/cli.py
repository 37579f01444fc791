"""``kiosk-agent quality IMAGE --modality face|finger``: assess an image file.

Exit codes: 0 every check passes, 1 a check fails, 2 bad input (missing file, not an image,
bad config). Thresholds come from the config file's quality settings when one is given.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
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


def add_parser(sub: Any) -> None:
    p = sub.add_parser("quality", help="check an image file's quality (exit 0 passes, 1 fails, "
                                       "2 bad input)")
    p.add_argument("image", type=Path, metavar="IMAGE", help="PNG, JPEG, BMP or TIFF file")
    p.add_argument("--modality", required=True, choices=sorted(ASSESSORS))
    p.add_argument("--config", metavar="PATH",
                   help="take the thresholds from this config file (default: built-in defaults)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_quality)


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
