"""Sealing and opening one 100 KB capture: sealed envelope version 2 (Ed25519 over the header,
which carries the SHA-256 of nonce and ciphertext) against version 1 (Ed25519 over the whole
capture envelope), and both against the raw primitives they are built from.

All in this process, single-threaded, the same inner envelope (a real capture envelope of a
100 KB image) for every side. Each figure is the best of ROUNDS rounds of N operations (the
machine is shared; the best round is the least disturbed), and the rounds alternate between
the sides so that a slow spell hits all of them.

- kiosk: ``Sealer.seal`` (fresh X25519 key, HKDF, AES-256-GCM, Ed25519, framing), v1 and v2;
- receiver: ``Opener.open`` (header, key exchange, HKDF, hash, signature check, decryption), v1 and v2;
- raw: Ed25519 sign and verify over 100 KB and over a 450-byte header; SHA-256 of 100 KB;
  AES-256-GCM of 100 KB; X25519 key generation and exchange.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.capture.ids import uuid7
from agent.security.sealing import Opener, Sealer
from bench.common import IMAGE_BYTES, ImagePool, seal_capture

ROUNDS = 5


def best_us(fn: Callable[[], object], n: int) -> float:
    """Microseconds per call, the best of one round of n calls (callers alternate rounds)."""
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def run(n: int = 300) -> dict[str, Any]:
    kiosk, central = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    sealers = {v: Sealer(kiosk, central.public_key(), version=v) for v in (1, 2)}
    opener = Opener(central, {"bench": kiosk.public_key()})
    # A real capture envelope around a 100 KB image, as the capture path makes it.
    _, sealed_v2 = seal_capture(sealers[2], "bench", 1, ImagePool(1).next())
    inner = opener.open(sealed_v2)[1]
    item = uuid7()
    envelopes = {v: s.seal(item_id=item, kiosk_id="bench", seq=1, kind="capture", inner=inner)
                 for v, s in sealers.items()}
    header = envelopes[2][8:8 + int.from_bytes(envelopes[2][4:8], "big")]
    sig_big, sig_small = kiosk.sign(inner), kiosk.sign(header)
    public, aes, nonce = kiosk.public_key(), AESGCM(os.urandom(32)), os.urandom(12)
    peer = X25519PrivateKey.generate().public_key()
    fields = {"item_id": item, "kiosk_id": "bench", "seq": 1, "kind": "capture", "inner": inner}
    cases: dict[str, Callable[[], object]] = {
        "seal_v1": lambda: sealers[1].seal(**fields),
        "seal_v2": lambda: sealers[2].seal(**fields),
        "open_v1": lambda: opener.open(envelopes[1]),
        "open_v2": lambda: opener.open(envelopes[2]),
        "raw_ed25519_sign_100kb": lambda: kiosk.sign(inner),
        "raw_ed25519_sign_header": lambda: kiosk.sign(header),
        "raw_ed25519_verify_100kb": lambda: public.verify(sig_big, inner),
        "raw_ed25519_verify_header": lambda: public.verify(sig_small, header),
        "raw_sha256_100kb": lambda: hashlib.sha256(inner).digest(),
        "raw_aes_gcm_100kb": lambda: aes.encrypt(nonce, inner, None),
        "raw_x25519_generate_exchange": lambda: X25519PrivateKey.generate().exchange(peer),
    }
    rounds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(ROUNDS):
        for name, fn in cases.items():
            rounds[name].append(best_us(fn, n))
    us = {name: round(min(values), 1) for name, values in rounds.items()}
    spread = {name: [round(v, 1) for v in values] for name, values in rounds.items()}
    # The part of each side that depends on the capture's size, and the raw floor for v2.
    return {
        "sealing_us_per_100kb": {**us, "inner_bytes": len(inner), "image_bytes": IMAGE_BYTES,
                                 "header_bytes": len(header), "calls_per_round": n, "rounds": ROUNDS},
        "sealing_rounds_us": spread,
        "seal_v2_vs_v1": round(us["seal_v2"] / us["seal_v1"], 3),
        "open_v2_vs_v1": round(us["open_v2"] / us["open_v1"], 3),
    }


if __name__ == "__main__":  # alone: python -m bench.sealing
    import json
    import sys

    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 300), indent=2))
