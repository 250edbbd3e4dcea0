"""``rs``: cut the HxW image into PxP patches and put them back in a fresh uniformly random order per image
(the paper's scheme). Stored HxW; it takes the gap, drop and flip defences."""

from __future__ import annotations

from .base import SchemeDef, register_scheme


def shuffle_cells(s, y, perms, ops, out=None):
    """The shuffled schemes' common step on an image ``y`` of stored size: cells permuted (and turned, flip),
    then the gap / drop defences blanked in."""
    import torch

    if perms is None:
        raise ValueError(f"scheme {s.name} needs per-image permutations")
    perms = torch.as_tensor(perms).to(y.device, non_blocking=True)
    orient = None
    if s.flip:  # a flip scheme's entries are packed perm + N * orientation (make_permutations(keys, orient=True))
        from himr_pipe.kernels.perm import split_cells

        perms, orient = split_cells(perms, s.num_patches)
    z = ops.rs_permute(y, perms, s.out_cell, out=out, orient=orient)
    if s.gap or s.drop:
        from himr_pipe.kernels.reference import defence_mask

        z.mul_(defence_mask(s, y.device))
    return z


def unshuffle_cells(s, y, perms, ops):
    """Every stored cell put back where it came from (blanked borders and dropped cells stay blank)."""
    import torch

    if perms is None:
        raise ValueError(f"scheme {s.name} needs the per-image permutations to decrypt")
    perms = torch.as_tensor(perms).to(y.device, non_blocking=True)
    orient = None
    if s.flip:
        from himr_pipe.kernels.perm import split_cells

        perms, orient = split_cells(perms, s.num_patches)
    return ops.rs_unpermute(y, perms, s.out_cell, orient=orient)


@register_scheme
class RS(SchemeDef):
    name = kind = "rs"
    help = "rs: shuffle PxP patches per image (stored as JPEG, a jigsaw solver rebuilds most images)"
    shuffled = True
    triton = True
    # detection refuses every shuffled scheme: boxes lose their place
    families = {"classification": "pevit{flip}"}
    augment = {"patch_drop_prob": 0.25}  # dropout like DeiT's random erasing 0.25

    def encrypt(self, s, x, perms, ops, out=None):
        return shuffle_cells(s, x, perms, ops, out)

    def decrypt(self, s, y, perms, ops):
        return unshuffle_cells(s, y, perms, ops)

    def image_kernel(self, s, channels=3):
        from himr_pipe.kernels.cpu import ImageKernel

        return ImageKernel(s, channels)
