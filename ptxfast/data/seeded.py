"""Seeded orders that depend only on the seed and each item's own key.

The splits and the negative rotation sort images and patients by a hash of `(seed, key)` rather
than by a generator's draws: an item's place then depends on nothing else (not the library
version, not the other items), so a split or a rotation block can be recomputed exactly.
"""

from __future__ import annotations

import hashlib

__all__ = ["rank"]


def rank(seed: int, *key: object) -> bytes:
    """A stable pseudo-random sort key for `key` under `seed` (same on every machine and version)."""
    text = "\x1f".join(str(k) for k in (seed, *key))
    return hashlib.blake2b(text.encode(), digest_size=8).digest()
