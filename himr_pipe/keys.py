"""The job key and the named random streams drawn from it: the only module that derives anything from the key.

A job's randomness comes from one 256-bit key, drawn from the OS's
cryptographic source (``secrets``) or derived from ``--seed``. It is kept in
the owner's state, never in OUT. Three named streams come from it, each a
SHAKE-256 stream keyed by the job key and a context:

* :func:`sample_order`: the order of the (input, view) pairs across shards;
* :func:`permutation_keys`: one row of sort keys per planned sample of a
  shard; the argsort of a row is that sample's permutation (on any device,
  :func:`himr_pipe.kernels.make_permutations`);
* :func:`view_draws`: five uniform draws per planned sample of a shard (the
  random-resized-crop window and the flip of ``--views``);
* :func:`image_ids`: the opaque image ids of a detection job's ground truth
  (a permutation of 1..n over the inputs, so an id says nothing about which
  source file it is, nor about its place in the source listing).

A cryptographic stream rather than a statistical PRNG: an attacker who solves
some images' jigsaws learns nothing about the permutations of the others, and
one shard's stream can be regenerated on resume (or by the owner's decrypt and
audit) without touching any other. The contexts below are part of the output's
definition: changing one changes every shard.
"""

from __future__ import annotations

import hashlib
import secrets

import numpy as np

# stream name -> context prefix (the bytes after the key); the shard index follows for per-shard streams
_ORDER, _PERMUTATIONS, _VIEWS, _IMAGE_IDS = (0,), 1, 2, (3,)
VIEW_DRAWS = 5  # per planned sample: crop area, aspect, anchor x, anchor y, flip


def new_key() -> str:
    """A fresh job key from the OS's cryptographic source (hex)."""
    return secrets.token_hex(32)


def key_from_seed(seed: int) -> str:
    """The job key of a seeded run (reproducible by whoever holds the seed)."""
    return hashlib.sha256(f"himr-pipe/v1/seed:{seed}".encode()).hexdigest()


def seed_digest(seed: int, key_hex: str) -> str:
    """A check value for 'same seed as before' that can't be brute-forced without the key."""
    return hashlib.sha256(f"{key_hex}:{seed}".encode()).hexdigest()


def _stream(key_hex: str, context: tuple[int, ...], n: int) -> np.ndarray:
    """``n`` uniform 63-bit values (int64) of the stream named by ``context``.

    63 bits so that numpy and torch (which has no uint64 sort) order them alike.
    """
    h = hashlib.shake_256(bytes.fromhex(key_hex) + b"|himr-pipe|" + ",".join(map(str, context)).encode())
    return (np.frombuffer(h.digest(8 * n), dtype="<u8") >> np.uint64(1)).astype(np.int64)


def sample_order(key_hex: str, n: int) -> np.ndarray:
    """The shuffled order of ``n`` planned items: a permutation (int64)."""
    return np.argsort(_stream(key_hex, _ORDER, n), kind="stable").astype(np.int64)


def permutation_keys(key_hex: str, shard: int, planned: int, cells: int) -> np.ndarray:
    """(planned, cells) sort keys of shard ``shard``: row ``pos`` belongs to the planned sample at that
    position (output key ``{shard:06d}_{pos:06d}``); its argsort is the sample's permutation."""
    return _stream(key_hex, (_PERMUTATIONS, shard), planned * cells).reshape(planned, cells)


def view_draws(key_hex: str, shard: int, planned: int) -> np.ndarray:
    """(planned, 5) uniform draws in [0, 1) for the views of shard ``shard``'s planned samples."""
    return _stream(key_hex, (_VIEWS, shard), planned * VIEW_DRAWS).reshape(planned, VIEW_DRAWS) / float(2**63)


def image_ids(key_hex: str, n: int) -> np.ndarray:
    """(n,) opaque image ids, a permutation of 1..n: input ``i`` (source order) gets ``image_ids[i]``."""
    ids = np.empty(n, np.int64)
    ids[np.argsort(_stream(key_hex, _IMAGE_IDS, n), kind="stable")] = np.arange(1, n + 1)
    return ids
