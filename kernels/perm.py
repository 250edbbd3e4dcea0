"""Permutations for RS from random sort keys (numpy only)."""

from __future__ import annotations

import numpy as np


def make_permutations(sort_keys: np.ndarray) -> np.ndarray:
    """One uniform permutation per row of ``sort_keys`` (B, N): the argsort of each row.

    With independent uniform 64-bit keys every ordering is equally likely (ties
    have probability below N^2 / 2^64). The keys come from the caller's random
    source: a keyed cryptographic stream in the pipeline (see
    ``himr_pipe.pipeline.keystream``), any generator in tests. One call, no
    per-image Python loop.
    """
    sort_keys = np.asarray(sort_keys)
    if sort_keys.ndim != 2:
        raise ValueError(f"sort_keys must be 2-D (batch, patches), got shape {sort_keys.shape}")
    return np.argsort(sort_keys, axis=1, kind="stable").astype(np.int64)
