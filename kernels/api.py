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
            impl: str = "auto", out: torch.Tensor | None = None) -> torch.Tensor:
    """Apply ``scheme`` to the uint8 NHWC batch ``x`` (already resized to scheme.size).

    ``out``: a contiguous uint8 (B, *scheme.out_size, C) tensor on x's device to write the result
    into (the pipeline reuses its buffers: no allocation per batch); ``none`` returns ``x`` itself."""
    if tuple(x.shape[1:3]) != scheme.size:
        raise ValueError(f"batch images are {tuple(x.shape[1:3])}, scheme expects {scheme.size}")
    if scheme.kind == "none":
        return x
    mod = _module(x, impl)
    if not scheme.shuffled:
        return mod.mi_mix(x, scheme.patch, out=out)
    if perms is None:
        raise ValueError(f"scheme {scheme.name} needs per-image permutations")
    perms, orient = _cells(scheme, perms, x.device)
    # mi-shuffle: the same RS kernel on the MI image's cells (P/2); both implementations compose
    # the same two kernels, so they stay bit-identical
    y = mod.mi_mix(x, scheme.patch) if scheme.kind == "mi" else x
    y = mod.rs_permute(y, perms, scheme.out_cell, out=out, orient=orient)
    if scheme.gap or scheme.drop:
        y.mul_(defence_mask(scheme, x.device))
    return y


def decrypt(scheme: Scheme, y: torch.Tensor, perms: torch.Tensor | np.ndarray | None = None,
            impl: str = "auto") -> torch.Tensor:
    """The owner's inverse: put every stored cell back where it came from (uint8 NHWC, stored size).

    RS and mi-shuffle are inverted exactly (blanked gap borders and dropped cells stay blank);
    MI's averaging has no inverse, so MI images come back as they are (positions already right).
    """
    if tuple(y.shape[1:3]) != scheme.out_size:
        raise ValueError(f"batch images are {tuple(y.shape[1:3])}, scheme stores {scheme.out_size}")
    if not scheme.shuffled:
        return y
    if perms is None:
        raise ValueError(f"scheme {scheme.name} needs the per-image permutations to decrypt")
    perms, orient = _cells(scheme, perms, y.device)
    return _module(y, impl).rs_unpermute(y, perms, scheme.out_cell, orient=orient)


def _cells(scheme: Scheme, perms, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(permutation, orientations or None) on ``device``: a ``flip`` scheme's entries are packed
    ``perm + N * orientation`` (``make_permutations(keys, orient=True)``)."""
    perms = torch.as_tensor(perms).to(device, non_blocking=True)
    if not scheme.flip:
        return perms, None
    from .perm import split_cells

    return split_cells(perms, scheme.num_patches)


def defence_mask(scheme: Scheme, device="cpu") -> torch.Tensor:
    """(H, W, 1) uint8 mask of the defences on the stored image: 0 on every cell's gap border and
    on the dropped slots.

    The dropped slots are the first ``scheme.dropped`` output slots: after a uniform shuffle they
    hold a uniformly random subset of the image's cells, so no extra randomness is needed.
    """
    p, g = scheme.out_cell, scheme.gap
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
