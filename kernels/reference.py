"""Torch reference implementation of the RS and MI schemes.

All functions are batched over a uint8 NHWC tensor; there is no per-image
Python loop. They run on whatever device the tensor lives on.

Conventions (the GPU kernels must match them bit for bit):

* RS: ``perms[b, j]`` is the index (row-major in the patch grid) of the input
  patch that lands in output slot ``j`` of image ``b``:
  ``out_patch[b, j] = in_patch[b, perms[b, j]]``.
* MI: every PxP patch becomes the mean of its four (P/2)x(P/2) sub-patches,
  rounded to the nearest integer with ties going up:
  ``out = (a + b + c + d + 2) // 4`` computed exactly in integers.
  (Half-up on a sum of four uint8 values is exact and cheap on any device;
  torch.round's half-to-even would need a float detour.)
"""

from __future__ import annotations

import numpy as np
import torch

from himr_pipe.scheme import Scheme


def _check(x: torch.Tensor, patch: int) -> tuple[int, int, int, int]:
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"expected a uint8 NHWC batch, got {x.dtype} with shape {tuple(x.shape)}")
    b, h, w, c = x.shape
    if h % patch or w % patch:
        raise ValueError(f"patch {patch} does not divide the image size {h}x{w}")
    return b, h, w, c


def _to_patches(x: torch.Tensor, p: int) -> torch.Tensor:
    b, h, w, c = x.shape
    return x.reshape(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p, p, c)


def _from_patches(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, n, p, _, c = t.shape
    return t.reshape(b, h // p, w // p, p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def rs_permute(x: torch.Tensor, perms: torch.Tensor, patch: int) -> torch.Tensor:
    """RS: out patch j of image b is input patch perms[b, j]."""
    b, h, w, c = _check(x, patch)
    n = (h // patch) * (w // patch)
    perms = torch.as_tensor(perms, device=x.device).long()
    if perms.shape != (b, n):
        raise ValueError(f"perms must have shape {(b, n)}, got {tuple(perms.shape)}")
    t = _to_patches(x, patch)
    rows = torch.arange(b, device=x.device)[:, None]
    return _from_patches(t[rows, perms], h, w).contiguous()


def rs_unpermute(y: torch.Tensor, perms: torch.Tensor, patch: int) -> torch.Tensor:
    """Inverse of :func:`rs_permute` for the same ``perms`` (the owner's keyed decrypt)."""
    perms = torch.as_tensor(perms, device=y.device).long()
    return rs_permute(y, torch.argsort(perms, dim=1), patch)


def mi_mix(x: torch.Tensor, patch: int) -> torch.Tensor:
    """MI: mean of the 2x2 sub-patches of every patch; output is (H/2)x(W/2)."""
    b, h, w, c = _check(x, patch)
    if patch % 2:
        raise ValueError(f"MI needs an even patch size, got {patch}")
    s = patch // 2
    gh, gw = h // patch, w // patch
    t = x.reshape(b, gh, 2, s, gw, 2, s, c).to(torch.int16)
    total = t.sum(dim=(2, 5))  # (b, gh, s, gw, s, c), at most 4*255 = 1020
    return ((total + 2) // 4).to(torch.uint8).reshape(b, gh * s, gw * s, c).contiguous()


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


def encrypt(scheme: Scheme, x: torch.Tensor, perms: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Apply ``scheme`` to the uint8 NHWC batch ``x`` (already resized to scheme.size)."""
    if tuple(x.shape[1:3]) != scheme.size:
        raise ValueError(f"batch images are {tuple(x.shape[1:3])}, scheme expects {scheme.size}")
    if scheme.kind == "rs":
        if perms is None:
            raise ValueError("scheme rs needs per-image permutations")
        return rs_permute(x, torch.as_tensor(perms), scheme.patch)
    if scheme.kind == "mi":
        return mi_mix(x, scheme.patch)
    return x
