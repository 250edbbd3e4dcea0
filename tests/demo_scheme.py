"""A scheme that only the tests register: rs with every stored pixel inverted (255 - x).

It is here to show what adding a scheme takes: this one module, no product file. It brings only its torch
transform and inverse; the CPU and the GPU then run that reference (it inherits rs's fast kernels' *absence*:
a definition that overrides ``encrypt`` does not inherit a parent's CPU or Triton kernel), and everything else
(geometry, the defences, decrypt, the audit, the model family, the augmentation) is rs's, from its parent.
"""

from __future__ import annotations

import torch

from himr_pipe.schemes import register_scheme
from himr_pipe.schemes.rs import RS, shuffle_cells, unshuffle_cells


@register_scheme
class RSInvert(RS):
    name = kind = "rs-invert"
    help = "rs-invert: rs, then every pixel inverted (a test's scheme)"

    def encrypt(self, s, x, perms, ops, out=None):
        y = shuffle_cells(s, x, perms, ops, out)
        return torch.bitwise_not(y, out=y)  # uint8: ~y == 255 - y

    def decrypt(self, s, y, perms, ops):
        return unshuffle_cells(s, torch.bitwise_not(y), perms, ops)
