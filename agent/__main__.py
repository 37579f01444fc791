"""``python -m agent``: the kiosk's own commands (``kiosk-agent`` adds the receiver and the demo)."""

import sys

from agent import shutdown

if sys.argv[1:2] == ["run"]:
    shutdown.install()  # before the heavy imports below: a stop during start-up ends cleanly

from agent.cli import main  # noqa: E402

sys.exit(main())
