"""``none``: no encryption, the plain resized image (the baseline, and tests)."""

from __future__ import annotations

from .base import SchemeDef, register_scheme


@register_scheme
class NoScheme(SchemeDef):
    name = kind = "none"
    help = "none: plain"
    encrypts = False
    families = {"classification": "vit", "detection": "peyolos_none"}  # vit: timm's own ViT

    def encrypt(self, s, x, perms, ops, out=None):
        if out is None:
            return x  # the batch itself: nothing to copy
        out.copy_(x)
        return out

    def image_kernel(self, s, channels=3):
        from himr_pipe.kernels.cpu import ImageKernel

        return ImageKernel(s, channels)  # a copy
