"""What answering registration queries may cost: signatures per second, per kiosk and in all.

A query is unsigned (anyone on the broker may send one on any kiosk's topic) and each status
in its answer is a fresh Ed25519 signature and a message (~0.5 ms, ~300 bytes): 64 ids cost
~30 ms. Ids with nothing on record are not answered at all (receiver/status.py), so junk costs
no signature; what does is budgeted here, counted in statuses: at most
``PER_KIOSK_PER_S`` a second for one kiosk (two full queries; a kiosk asks on connect and
every few minutes) and ``receiver.query_answers_per_s`` across all kiosks. Over budget the
query's remaining ids are dropped and counted (``queries_dropped``): the kiosk asks again at
its next interval. The budget is spent on answers, not on queries, so junk sent on a kiosk's
topic cannot use up that kiosk's share: its own query is still answered.
"""

from __future__ import annotations

from receiver.warnings_limit import PerSecondBudget

#: Statuses answered per kiosk and second: two queries of 64 ids.
PER_KIOSK_PER_S = 128


class QueryBudget:
    def __init__(self, total_per_s: int, per_kiosk_per_s: int = PER_KIOSK_PER_S) -> None:
        self._kiosk = PerSecondBudget(per_kiosk_per_s)
        self._total = PerSecondBudget(total_per_s)

    def take(self, kiosk_id: str) -> bool:
        """One status may be signed for ``kiosk_id`` now (and is charged), or not."""
        return self._total.allow("") and self._kiosk.allow(kiosk_id)
