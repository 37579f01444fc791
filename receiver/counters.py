"""What the receiver counts: read by the demo, the tests and operators' tools."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReceiverCounters:
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    unreadable: int = 0
    #: Envelopes whose signature did not verify (forged, tampered, unknown kiosk): no receipt.
    unauthenticated: int = 0
    #: Chunked transfers: manifests seen, chunks stored, chunks that failed their hash
    #: (re-requested, never stored), chunks received twice, items reassembled.
    manifests: int = 0
    chunks_received: int = 0
    chunks_corrupt: int = 0
    chunks_duplicate: int = 0
    reassembled: int = 0
    #: Refused as hostile (warning logged): an id that cannot name a file, content that
    #: differs from what is stored under the same id, chunks from a kiosk not enrolled.
    security_events: int = 0
    #: Chunk manifests and chunks refused because the kiosk's chunk quota is full.
    over_quota: int = 0
    #: Registration assemblies that failed (each retried), and registrations that then succeeded.
    assembly_failures: int = 0
    assembly_recovered: int = 0
    #: Registration manifests refused because their kiosk has max_unfinished_registrations.
    manifests_over_cap: int = 0
    #: Registration queries cut short by the answer budget (receiver/query_budget.py).
    queries_dropped: int = 0
    #: Sealed envelopes of version 1 accepted, and refused (receiver.accept_envelope_v1 off):
    #: the first says when the fleet's queues hold no version 1 any more.
    envelopes_v1: int = 0
    envelopes_v1_refused: int = 0
