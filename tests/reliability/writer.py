"""A queue writer for the power-loss test: commits sealed items and acknowledges old ones
as fast as it can, printing each id once ``put`` has returned, and before it is acknowledged (deleted).

    python -m tests.reliability.writer QUEUE_PATH KEYS_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from agent.security.keys import load_encryption_public, load_signing_key, public_path
from agent.security.sealing import Sealer
from agent.transport.durable_queue import DurableQueue


def main(queue_path: str, keys_dir: str) -> None:
    keys = Path(keys_dir)
    sealer = Sealer(load_signing_key(keys / "kiosk.key"),
                    load_encryption_public(public_path(keys / "central.key")))
    queue = DurableQueue(queue_path, max_bytes=1 << 40, min_free_bytes=0, erase_interval_s=0.2)
    out = sys.stdout
    n = 0
    while True:
        n += 1
        item_id = f"item-{os.getpid()}-{n}"
        image = os.urandom(20_000 + n % 5 * 10_000)
        queue.put(item_id, "capture", lambda seq, i=item_id, img=image: sealer.seal(
            item_id=i, kiosk_id="k", seq=seq, kind="capture", inner=img))
        out.write(f"committed {item_id}\n")
        out.flush()
        if n % 4 == 0:  # acknowledge the oldest few, as receipts would
            oldest = [item.id for item in queue.next_batch(0, 3)]
            # Announced before the delete: from here on they may be gone at any moment.
            out.write("".join(f"acking {i}\n" for i in oldest))
            out.flush()
            queue.ack(oldest)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
