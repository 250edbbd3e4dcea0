"""Torch reference implementation of the RS and MI schemes.

All functions are batched over a uint8 NHWC tensor; there is no per-image
Python loop. They run on whatever device the tensor lives on.

Conventions (the GPU kernels must match them bit for bit):

* RS: ``perms[b, j]`` is the index (row-major in the patch grid) of the input
  patch that lands in output slot ``j`` of image ``b``:
  ``out_patch[b, j] = in_patch[b, perms[b, j]]``.
* MI: every PxP patch becomes the mean of its four (P/2)x(P/2) sub-patches,
  rounded to the nearest integer with ties going up:
  ``out = (a + b + c + d + 2) // 4`` computed exactly in integers.
  (Half-up on a sum of four uint8 values is exact and cheap on any device;
  torch.round's half-to-even would need a float detour.)
"""

from __future__ import annotations

import torch



def check_batch(x: torch.Tensor, patch: int) -> tuple[int, int, int, int]:
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"expected a uint8 NHWC batch, got {x.dtype} with shape {tuple(x.shape)}")
    b, h, w, c = x.shape
    if h % patch or w % patch:
        raise ValueError(f"patch {patch} does not divide the image size {h}x{w}")
    return b, h, w, c


def check_out(out: torch.Tensor | None, shape: tuple, like: torch.Tensor) -> None:
    """``out=`` must be a contiguous uint8 tensor of ``shape`` on ``like``'s device."""
    if out is not None and (tuple(out.shape) != tuple(shape) or out.dtype != torch.uint8
                            or out.device != like.device or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous uint8 tensor of shape {tuple(shape)} on {like.device}, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device}")


def rs_permute(x: torch.Tensor, perms: torch.Tensor, patch: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """RS: out patch j of image b is input patch perms[b, j] (written into ``out`` when given).

    Implemented as one gather of patch rows: a patch row (P*C contiguous
    bytes) of output slot j at row r comes from row r of the source patch.
    Listing the source rows in output memory order turns the shuffle into a
    single ``index_select`` over (B*H*W/P) rows of P*C bytes, about 5x faster
    on the CPU than permuting a patch-major view.
    """
    b, h, w, c = check_batch(x, patch)
    gh, gw = h // patch, w // patch
    perms = torch.as_tensor(perms, device=x.device).long()
    if perms.shape != (b, gh * gw):
        raise ValueError(f"perms must have shape {(b, gh * gw)}, got {tuple(perms.shape)}")
    dev = x.device
    sy = (perms // gw).view(b, gh, 1, gw)
    sx = (perms % gw).view(b, gh, 1, gw)
    r = torch.arange(patch, device=dev).view(1, 1, patch, 1)
    bb = torch.arange(b, device=dev).view(b, 1, 1, 1)
    rows = ((bb * gh + sy) * patch + r) * gw + sx  # (b, gh, P, gw): source row of each output row
    src = x.contiguous().view(-1, patch * c)
    check_out(out, x.shape, x)
    if out is None:
        return src.index_select(0, rows.reshape(-1)).view(b, h, w, c)
    torch.index_select(src, 0, rows.reshape(-1), out=out.view(-1, patch * c))
    return out


def rs_unpermute(y: torch.Tensor, perms: torch.Tensor, patch: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of :func:`rs_permute` for the same ``perms`` (the owner's keyed decrypt)."""
    perms = torch.as_tensor(perms, device=y.device).long()
    return rs_permute(y, torch.argsort(perms, dim=1), patch, out=out)


def mi_mix(x: torch.Tensor, patch: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """MI: mean of the 2x2 sub-patches of every patch; output is (H/2)x(W/2) (written into ``out`` when given)."""
    b, h, w, c = check_batch(x, patch)
    check_out(out, (b, h // 2, w // 2, c), x)
    if patch % 2:
        raise ValueError(f"MI needs an even patch size, got {patch}")
    s = patch // 2
    gh, gw = h // patch, w // patch
    v = x.contiguous().view(b, gh, 2, s, gw, 2 * s * c).to(torch.int16)
    rows = (v[:, :, 0] + v[:, :, 1]).view(b, gh, s, gw, 2, s * c)  # top + bottom sub-patch rows
    total = rows[:, :, :, :, 0] + rows[:, :, :, :, 1]              # + left and right: at most 1020
    total += 2
    total >>= 2
    if out is None:
        return total.to(torch.uint8).view(b, h // 2, w // 2, c)
    out.view(total.shape).copy_(total)
    return out
