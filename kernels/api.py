"""One entry point for encryption, whatever the device: ``encrypt(scheme, batch, perms)``.

``impl="auto"`` runs the Triton kernels on CUDA tensors and the CPU's numpy
kernels (:mod:`.cpu`, one image at a time) otherwise; ``impl="torch"`` the torch
reference, the ground truth, on any device; ``impl="triton"`` forces Triton (on
CPU tensors that needs ``TRITON_INTERPRET=1``: the tests' way of running the GPU
code path on the CPU). All give bit-identical results.
"""

from __future__ import annotations

import numpy as np
import torch

from himr_pipe.scheme import Scheme

from .reference import defence_mask  # noqa: F401 (the kernels' public name, kernels.defence_mask)

IMPLS = ("auto", "torch", "cpu", "triton")


def _module(x: torch.Tensor, impl: str):
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}")
    if impl == "triton" or (impl == "auto" and x.is_cuda):  # decrypt's "auto" and "cpu" on the CPU: the reference
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
    if impl == "cpu" or (impl == "auto" and not x.is_cuda):
        if x.is_cuda:
            raise ValueError("impl='cpu' takes CPU tensors")
        from . import cpu

        return cpu.encrypt(scheme, x, perms, out=out)
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
