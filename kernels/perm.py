"""Permutations for RS from random sort keys.

The caller supplies the randomness as sort keys (a keyed cryptographic stream
in the pipeline, see ``himr_pipe.keys``; any generator in
tests). Keys are non-negative int64, so numpy (CPU) and torch (any device)
sort them alike and the CPU and GPU paths draw the same permutations.
"""

from __future__ import annotations

import numpy as np


def make_permutations(sort_keys, orient: bool = False):
    """One uniform permutation per row of ``sort_keys`` (B, N): the stable argsort of each row.

    With independent uniform keys every ordering is equally likely (ties, at
    63 bits, have probability below N^2 / 2^63). A numpy array is sorted on
    the CPU; a torch tensor on its own device (one call for the whole batch,
    no per-image loop). Returns int64 of the same kind.

    ``orient`` (the flip defence, ``Scheme.flip``): each entry also carries the orientation of its
    cell, packed as ``perm + N * o`` with ``o`` (0..7) the low 3 bits of the sort key of the cell
    that lands there. The order depends on the keys' high bits (the low three decide only ties of
    the other 60, probability below N^2 / 2^60), so the orientations are uniform and independent of
    the permutation, and one keyed stream regenerates both. ``kernels.encrypt`` / ``decrypt`` unpack
    them for a ``flip`` scheme (:func:`split_cells`).
    """
    if isinstance(sort_keys, np.ndarray):
        if sort_keys.ndim != 2:
            raise ValueError(f"sort_keys must be 2-D (batch, patches), got shape {sort_keys.shape}")
        perm = np.argsort(sort_keys, axis=1, kind="stable").astype(np.int64)
        if orient:
            perm = perm + sort_keys.shape[1] * (np.take_along_axis(sort_keys, perm, 1) & 7)
        return perm
    import torch

    if sort_keys.dim() != 2:
        raise ValueError(f"sort_keys must be 2-D (batch, patches), got shape {tuple(sort_keys.shape)}")
    perm = torch.argsort(sort_keys, dim=1, stable=True)
    if orient:
        perm = perm + sort_keys.shape[1] * (torch.gather(sort_keys, 1, perm) & 7)
    return perm


def split_cells(cells, n: int):
    """(permutation, orientation) of packed entries ``perm + n * o`` (see :func:`make_permutations`)."""
    return cells % n, cells // n



def turn(x, code: int, rows: int, cols: int):
    """``x`` turned by orientation ``code`` (0..7, one of the square's eight symmetries) in its ``rows`` and
    ``cols`` dimensions: bit 0 transposes, then bit 1 reverses the columns, then bit 2 the rows. The one statement
    of the convention the kernels, the attack and the recognition test share; a torch tensor or a numpy array."""
    if code & 1:
        x = x.swapaxes(rows, cols)
    if code & 2:
        x = _flip(x, cols)
    if code & 4:
        x = _flip(x, rows)
    return x


def _flip(x, dim: int):
    return x.flip(dim) if hasattr(x, "flip") else np.flip(x, dim)  # a torch tensor, else a numpy array (a view)
