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

from .reference import defence_mask  # noqa: F401 (the kernels' public name, kernels.defence_mask)

IMPLS = ("auto", "torch", "cpu", "triton")


def _module(x: torch.Tensor, impl: str, definition):
    """The ops the scheme's transform runs on: Triton's (on CUDA tensors, or asked for by name) where the scheme's
    definition runs on them, else the torch reference (decrypt's "auto" and "cpu" on the CPU too)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}")
    if definition.triton and (impl == "triton" or (impl == "auto" and x.is_cuda)):
        from . import triton_kernels

        return triton_kernels
    from . import reference

    return reference


def encrypt(scheme, x: torch.Tensor, perms: torch.Tensor | np.ndarray | None = None,
            impl: str = "auto", out: torch.Tensor | None = None) -> torch.Tensor:
    """Apply ``scheme`` to the uint8 NHWC batch ``x`` (already resized to scheme.size).

    ``out``: a contiguous uint8 (B, *scheme.out_size, C) tensor on x's device to write the result
    into (the pipeline reuses its buffers: no allocation per batch); ``none`` returns ``x`` itself.
    The transform is the scheme's definition's (:class:`himr_pipe.schemes.SchemeDef`): on the CPU its
    per-image kernel (:mod:`.cpu`) where it has one, on Triton where it runs there, else its torch reference."""
    if tuple(x.shape[1:3]) != scheme.size:
        raise ValueError(f"batch images are {tuple(x.shape[1:3])}, scheme expects {scheme.size}")
    d = scheme.definition
    if not d.encrypts:
        return x
    if impl == "cpu" or (impl == "auto" and not x.is_cuda):
        if x.is_cuda:
            raise ValueError("impl='cpu' takes CPU tensors")
        from . import cpu

        return cpu.encrypt(scheme, x, perms, out=out)
    if d.shuffled and perms is None:
        raise ValueError(f"scheme {scheme.name} needs per-image permutations")
    return d.encrypt(scheme, x, perms, _module(x, impl, d), out=out)


def decrypt(scheme, y: torch.Tensor, perms: torch.Tensor | np.ndarray | None = None,
            impl: str = "auto") -> torch.Tensor:
    """The owner's inverse: put every stored cell back where it came from (uint8 NHWC, stored size).

    RS and mi-shuffle are inverted exactly (blanked gap borders and dropped cells stay blank);
    MI's averaging has no inverse, so MI images come back as they are (positions already right).
    """
    if tuple(y.shape[1:3]) != scheme.out_size:
        raise ValueError(f"batch images are {tuple(y.shape[1:3])}, scheme stores {scheme.out_size}")
    d = scheme.definition
    if d.shuffled and perms is None:
        raise ValueError(f"scheme {scheme.name} needs the per-image permutations to decrypt")
    return d.decrypt(scheme, y, perms, _module(y, impl, d))
