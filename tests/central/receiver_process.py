"""A receiver in a process of its own, for tests that SIGKILL it.

    python -m tests.central.receiver_process CONFIG.json [--receipts-before-commit]

CONFIG.json is a ReceiverServiceConfig dumped as JSON. Prints "ready" once subscribed.
``--receipts-before-commit`` is the deliberately broken receiver the kill test must catch:
it publishes each receipt as soon as the capture is filed in the open transaction. It
exists only here; no production config can ask for it.
"""

from __future__ import annotations

import json
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
        # The batch still gathers and commits on its window; only the receipt leaves early.
        hold = receiver.batch.after_commit

        def early(size: int, send) -> None:  # type: ignore[no-untyped-def]
            send()
            hold(size, lambda: None)

        receiver.batch.after_commit = early  # type: ignore[method-assign]
    receiver.start()
    while not receiver.link.subscribed:
        time.sleep(0.02)
    print("ready", flush=True)
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main()
