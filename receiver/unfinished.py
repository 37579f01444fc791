"""How many registrations each kiosk has that this receiver cannot finish: the per-kiosk cap.

A registration is *unfinished* here while its manifest waits for parts or its assembly has
failed for its data (``bad-data``, ``encoding``, ``internal``: the kiosk's doing). Each costs
the receiver work (a retry, a status, an "incomplete" report), and a kiosk holding its own key
could make thousands of them. So at most ``receiver.max_unfinished_registrations`` per kiosk:
beyond that a new manifest from the kiosk is refused on arrival (``rejected``, a security
event) until some of them finish. A genuine kiosk has a handful at a time (the parts of the
sessions in flight). Failures of the central store itself (``storage``) are not counted: a
full disk is the receiver's fault, and must not make kiosks set their registrations aside.

With the file store the count is kept in memory for this run (registrations failed before a
restart join when they fail again), bounded by the cap per enrolled kiosk. With PostgreSQL
it is counted in ``registrations`` (state and failure code), under a per-kiosk lock held
until the batch commits (receiver/storage/pg_registrations.py): the cap holds for the kiosk
across every receiver of the share group, and two receivers cannot both admit the manifest
one over it.
"""

from __future__ import annotations

from receiver.storage.base import RegistrationRecords


class Unfinished:
    def __init__(self, limit: int, shared: RegistrationRecords | None = None) -> None:
        self.limit = limit
        self._shared = shared
        self._by_kiosk: dict[str, set[str]] = {}

    def note(self, kiosk_id: str, registration_id: str, unfinished: bool) -> None:
        if self._shared is not None:
            return  # the state the records keep is the count
        ids = self._by_kiosk.setdefault(kiosk_id, set())
        if unfinished:
            ids.add(registration_id)
        else:
            ids.discard(registration_id)
            if not ids:
                del self._by_kiosk[kiosk_id]

    def count(self, kiosk_id: str) -> int:
        if self._shared is not None:
            return self._shared.unfinished(kiosk_id)
        return len(self._by_kiosk.get(kiosk_id, ()))

    def full(self, kiosk_id: str, registration_id: str) -> bool:
        """True when a manifest for ``registration_id`` would be one unfinished too many.
        (Asked only for a manifest not stored yet: with shared records it is not among them.)"""
        if self._shared is not None:
            return self._shared.unfinished(kiosk_id) >= self.limit
        ids = self._by_kiosk.get(kiosk_id, set())
        return registration_id not in ids and len(ids) >= self.limit
