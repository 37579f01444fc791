"""Where the project lies, for tests that read its shipped files (configs, docs, units)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
