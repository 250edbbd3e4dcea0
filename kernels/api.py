"""One entry point for encryption, whatever the device: ``encrypt(scheme, batch, perms)``.

``impl="auto"`` runs the Triton kernels on CUDA tensors and the torch
reference otherwise; ``impl="triton"`` forces Triton (on CPU tensors that
needs ``TRITON_INTERPRET=1``: the tests' way of running the GPU code path on
the CPU). Both give bit-identical results.
"""

from __future__ import annotations

import numpy as np
import torch

from himr_pipe.scheme import Scheme

IMPLS = ("auto", "torch", "triton")


def _module(x: torch.Tensor, impl: str):
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}")
    if impl == "triton" or (impl == "auto" and x.is_cuda):
        from . import triton_kernels

        return triton_kernels
    from . import reference

    return reference


def encrypt(scheme: Scheme, x: torch.Tensor, perms: torch.Tensor | np.ndarray | None = None,
            impl: str = "auto") -> torch.Tensor:
    """Apply ``scheme`` to the uint8 NHWC batch ``x`` (already resized to scheme.size)."""
    if tuple(x.shape[1:3]) != scheme.size:
        raise ValueError(f"batch images are {tuple(x.shape[1:3])}, scheme expects {scheme.size}")
    if scheme.kind == "none":
        return x
    mod = _module(x, impl)
    if scheme.kind == "mi":
        return mod.mi_mix(x, scheme.patch)
    if perms is None:
        raise ValueError("scheme rs needs per-image permutations")
    perms = torch.as_tensor(perms).to(x.device, non_blocking=True)
    y = mod.rs_permute(x, perms, scheme.patch)
    if scheme.gap or scheme.drop:
        y = y * _defence_mask(scheme, x.device)
    return y


def _defence_mask(scheme: Scheme, device) -> torch.Tensor:
    """(H, W, 1) uint8 mask of the RS defences: 0 on every patch's gap border and on the dropped slots.

    The dropped slots are the first ``scheme.dropped`` output slots: after a uniform shuffle they
    hold a uniformly random subset of the image's patches, so no extra randomness is needed.
    """
    p, g = scheme.patch, scheme.gap
    gh, gw = scheme.grid
    cell = torch.ones((p, p), dtype=torch.uint8, device=device)
    if g:
        cell[:g] = 0
        cell[-g:] = 0
        cell[:, :g] = 0
        cell[:, -g:] = 0
    keep = torch.ones(gh * gw, dtype=torch.uint8, device=device)
    keep[:scheme.dropped] = 0
    m = keep.view(gh, 1, gw, 1) * cell.view(1, p, 1, p)
    return m.reshape(gh * p, gw * p, 1)
