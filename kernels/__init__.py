"""Encryption kernels (installed as ``himr_pipe.kernels``).

The building blocks the scheme definitions (:mod:`himr_pipe.schemes`) compose:
``reference`` is the torch implementation, the ground truth on any device;
``cpu`` the CPU's per-image numpy kernels; ``triton_kernels`` the GPU's, with
the same functions as ``reference``. ``api.encrypt`` / ``api.decrypt`` run a
scheme's definition on the implementation the device and ``impl`` pick. Every
implementation takes a uint8 NHWC batch and returns bit-identical results.
``make_permutations`` needs only numpy. This package imports nothing of the
schemes: a scheme is passed in and asked for its definition.

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
