"""KIOSK_AGENT_SOAK=1: the long profiles (more kills, cuts, examples, kiosks; the full update
bundle). The default suite runs each scaled down to keep `make test` short; each test module
states its two sizes, and docs/reliability.md and docs/performance.md give the soak figures."""

from __future__ import annotations

import os

SOAK = os.environ.get("KIOSK_AGENT_SOAK") == "1"
