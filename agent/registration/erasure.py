"""A registration session leaves the kiosk once the central side has all of it.

The kiosk keeps a session's bookkeeping (who registered whom, which fingers are missing and
why) only as long as it may still need it: while the session is open, and until the
manifest and every capture of a closed session have their receipt, that is, have left the
durable queue. The queue deletes an item only on its receipt (or PUBACK in ``puback``
mode), so "not in the queue" means "the central side has it". A capture the central side
rejected stays in the queue for support, and so does its session until the capture is
retried or purged.

The daemon runs ``erase_delivered`` on its main thread, at most every
``queue.erase_interval_s`` (agent/daemon.py). An open session is never erased here: it may
still be resumed; cancelling it sends a manifest, and then it goes like any other.
"""

from __future__ import annotations

from agent.registration.store import SessionStore
from agent.transport.durable_queue import DurableQueue


def erase_delivered(store: SessionStore, queue: DurableQueue) -> list[str]:
    """Erase every closed session none of whose items is still queued; their ids."""
    closed = store.closed_sessions()
    if not closed:
        return []
    # A session is closed only after its manifest is committed to the queue, and each item is
    # recorded only after its capture is: nothing of a closed session can still be on its way in.
    queued = queue.pending_ids(set().union(*closed.values()))
    delivered = [sid for sid, ids in closed.items() if queued.isdisjoint(ids)]
    store.erase(delivered)
    return delivered
