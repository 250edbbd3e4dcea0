"""Encryption kernels (installed as ``himr_pipe.kernels``).

``reference`` is the torch implementation used on the CPU and as the ground
truth for the GPU kernels: every implementation takes a uint8 NHWC batch and
returns bit-identical results.
"""

from .reference import encrypt, mi_mix, rs_permute, rs_unpermute, make_permutations

__all__ = ["encrypt", "mi_mix", "rs_permute", "rs_unpermute", "make_permutations"]
