"""A receiver in a process of its own, for tests that SIGKILL it.

    python -m tests.central.receiver_process CONFIG.json [--receipts-before-commit]

CONFIG.json is a ReceiverServiceConfig dumped as JSON. Prints "ready" once subscribed; stops
cleanly on SIGTERM (exit 0), as the `receiver` command does. The fleet benchmark and the
scenario tests run their receivers through this too.
``--receipts-before-commit`` is the deliberately broken receiver the kill test must catch:
it publishes each receipt as soon as the capture is filed in the open transaction.
``--drop-every N`` is the other one (tests/central/test_fleet_scenarios.py): every Nth
capture is answered ``stored`` without being filed. Both exist only here; no production
config can ask for them.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from receiver.config import ReceiverServiceConfig
from receiver.service import Receiver


def main() -> None:
    config = ReceiverServiceConfig.model_validate(json.loads(Path(sys.argv[1]).read_text()))
    receiver = Receiver(config)
    if "--receipts-before-commit" in sys.argv[2:]:
        # The batch still gathers and commits on its window; only the receipt leaves early,
        # once the capture is written (uncommitted) and so its outcome decided.
        hold = receiver.batch.after_commit

        def early(size: int, send) -> None:  # type: ignore[no-untyped-def]
            receiver.store.flush()
            send()
            receiver.batch.after_sends()
            hold(size, lambda: None)

        receiver.batch.after_commit = early  # type: ignore[method-assign]
    logging.basicConfig(level=config.logging.level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if "--drop-every" in sys.argv[2:]:
        every = int(sys.argv[sys.argv.index("--drop-every") + 1])
        file_it = receiver.store.stage
        seen = [0]

        def dropping(kiosk_id, record, decided):  # type: ignore[no-untyped-def]
            seen[0] += 1
            if seen[0] % every == 0:
                decided("stored")
            else:
                file_it(kiosk_id, record, decided)

        receiver.store.stage = dropping  # type: ignore[method-assign]
    receiver.start()
    while not receiver.link.subscribed:
        time.sleep(0.02)
    print("ready", flush=True)
    stop.wait()  # until SIGTERM (or killed)
    receiver.stop()


if __name__ == "__main__":
    main()
