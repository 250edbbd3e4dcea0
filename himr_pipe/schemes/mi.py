"""``mi`` and ``mi-shuffle``.

* ``mi``: every PxP patch becomes the mean of its four (P/2)x(P/2) sub-patches; stored (H/2)x(W/2), patch
  positions kept (a blurred picture; the scheme detection trains on, boxes stay true).
* ``mi-shuffle`` (``Scheme(kind="mi", shuffle=True)``): MI, then the (P/2)x(P/2) cells shuffled per image as rs
  shuffles patches, with the gap, drop and flip defences; the default for classification, with flip.
"""

from __future__ import annotations

from .base import SchemeDef, SchemeError, register_scheme
from .rs import shuffle_cells, unshuffle_cells


def full_size(m):
    """An MI image (HxWxC numpy) shown at the plain image's geometry: each value as a 2x2 block (what a person
    sees: preview, decrypt and the audit's pictures)."""
    import numpy as np

    return np.repeat(np.repeat(m, 2, axis=0), 2, axis=1)


@register_scheme
class MI(SchemeDef):
    name = kind = "mi"
    help = "mi: without the shuffle (keeps positions: a blurred picture)"
    mixed = True
    triton = True
    families = {"classification": "mivit", "detection": "peyolos"}  # positions kept: boxes stay true
    augment = {"cutmix_alpha": 0.0}  # mixup only by default; > 0 gives cell-aligned box cutmix

    def validate(self, s):
        if s.patch % 2:
            raise SchemeError(f"scheme mi needs an even patch size (2x2 sub-patches), got {s.patch}")

    def out_size(self, s):
        return (s.height // 2, s.width // 2)

    def out_cell(self, s):
        return s.patch // 2

    def encrypt(self, s, x, perms, ops, out=None):
        return ops.mi_mix(x, s.patch, out=out)

    def image_kernel(self, s, channels=3):
        from himr_pipe.kernels.cpu import ImageKernel

        return ImageKernel(s, channels)

    def plain_geometry(self, s, img):
        return full_size(img)  # MI's averaging has no inverse: each value shown as a 2x2 block


@register_scheme
class MIShuffle(MI):
    name, shuffle = "mi-shuffle", True
    help = ("mi-shuffle: mean of the 2x2 sub-patches of every PxP patch, then its cells shuffled and turned per image "
            "(the default, with --flip: within the leak budget under the audit at the smallest cost we measured, "
            "README 'Privacy')")
    shuffled = True
    triton = True  # its own transform (below), composed of the kernels' ops: Triton runs it as it is
    # the defences it takes when the user names none: flip and no gap (the measured trade-off, docs/ and
    # benchmarks/RESULTS.md); --no-flip / --gap ask for other settings explicitly
    defaults = {"gap": 0, "flip": True}
    families = {"classification": "mivit_shuffle{flip}"}
    augment = {"patch_drop_prob": 0.25}  # shuffled cells: as rs, on the MI cell

    def encrypt(self, s, x, perms, ops, out=None):
        # the same RS kernel on the MI image's cells (P/2): the reference and Triton compose the same two kernels
        return shuffle_cells(s, ops.mi_mix(x, s.patch), perms, ops, out)

    def image_kernel(self, s, channels=3):
        from himr_pipe.kernels.cpu import ImageKernel

        return ImageKernel(s, channels)

    def decrypt(self, s, y, perms, ops):
        return unshuffle_cells(s, y, perms, ops)
