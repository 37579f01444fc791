"""KIOSK_AGENT_SOAK=1: the long profiles (more kills, cuts, examples, kiosks; the full update
bundle). The default suite runs each scaled down so `make test` stays near 20 minutes on two
cores; docs/testing.md lists what each runs at which size."""

from __future__ import annotations

import os

SOAK = os.environ.get("KIOSK_AGENT_SOAK") == "1"
