"""Permutations for RS from random sort keys.

The caller supplies the randomness as sort keys (a keyed cryptographic stream
in the pipeline, see ``himr_pipe.keys``; any generator in
tests). Keys are non-negative int64, so numpy (CPU) and torch (any device)
sort them alike and the CPU and GPU paths draw the same permutations.
"""

from __future__ import annotations

import numpy as np


def make_permutations(sort_keys):
    """One uniform permutation per row of ``sort_keys`` (B, N): the stable argsort of each row.

    With independent uniform keys every ordering is equally likely (ties, at
    63 bits, have probability below N^2 / 2^63). A numpy array is sorted on
    the CPU; a torch tensor on its own device (one call for the whole batch,
    no per-image loop). Returns int64 of the same kind.
    """
    if isinstance(sort_keys, np.ndarray):
        if sort_keys.ndim != 2:
            raise ValueError(f"sort_keys must be 2-D (batch, patches), got shape {sort_keys.shape}")
        return np.argsort(sort_keys, axis=1, kind="stable").astype(np.int64)
    import torch

    if sort_keys.dim() != 2:
        raise ValueError(f"sort_keys must be 2-D (batch, patches), got shape {tuple(sort_keys.shape)}")
    return torch.argsort(sort_keys, dim=1, stable=True)
