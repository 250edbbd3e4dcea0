"""Encryption kernels (installed as ``himr_pipe.kernels``).

``reference`` is the torch implementation, the ground truth (and decrypt's
kernel on the CPU); ``cpu`` the CPU's per-image numpy kernel, which encrypt
runs on the CPU; ``triton_kernels`` the GPU implementation; ``api.encrypt``
picks one by device. Every implementation takes a uint8 NHWC batch and returns
bit-identical results. ``make_permutations`` needs only numpy.

The names are loaded on first use, so that importing ``make_permutations``
(the planner in the main process does) does not load torch.
"""

import importlib

_EXPORTS = {
    "encrypt": ".api",
    "decrypt": ".api",
    "defence_mask": ".reference",
    "mi_mix": ".reference",
    "rs_permute": ".reference",
    "rs_unpermute": ".reference",
    "make_permutations": ".perm",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
