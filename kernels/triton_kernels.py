"""Triton kernels for RS and MI on uint8 NHWC batches (the GPU path).

Same signatures and bit-identical results as ``reference.py``:

* :func:`rs_permute` / :func:`rs_unpermute`: one program per (image, patch)
  copies a PxP patch, row by row (a patch row is P*C contiguous bytes), from
  its source slot to its destination slot. The inverse swaps the two roles,
  so the owner's keyed decrypt is the same kernel.
* :func:`mi_mix`: one program per (image, output row) reads the two input
  rows behind it and writes ``(a + b + c + d + 2) >> 2`` for every pixel.

On a CUDA tensor they compile for the GPU. On a CPU tensor they run only
under ``TRITON_INTERPRET=1`` (the CI's way of testing them; set it before
this module is imported). Offsets are computed in int64, so batches of any
size are safe.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import check_batch


@triton.jit
def _rs_kernel(x_ptr, y_ptr, perm_ptr, n_patches, grid_w, row_bytes, img_bytes,
               P: tl.constexpr, PC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
               INVERSE: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // n_patches).to(tl.int64)
    j = pid % n_patches
    k = tl.load(perm_ptr + pid).to(tl.int32)
    if INVERSE:
        src, dst = j, k
    else:
        src, dst = k, j
    sy = src // grid_w
    sx = src % grid_w
    dy = dst // grid_w
    dx = dst % grid_w
    r = tl.arange(0, BLOCK_R)[:, None]
    q = tl.arange(0, BLOCK_C)[None, :]
    mask = (r < P) & (q < PC)
    base = b * img_bytes
    src_off = base + (sy * P + r).to(tl.int64) * row_bytes + sx * PC + q
    dst_off = base + (dy * P + r).to(tl.int64) * row_bytes + dx * PC + q
    v = tl.load(x_ptr + src_off, mask=mask)
    tl.store(y_ptr + dst_off, v, mask=mask)


@triton.jit
def _mi_kernel(x_ptr, y_ptr, out_h, row_in, row_out, img_in, img_out,
               S: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // out_h).to(tl.int64)
    oy = pid % out_h
    gy = oy // S
    r = oy % S
    r0 = (gy * 2 * S + r).to(tl.int64)
    j = tl.arange(0, BLOCK)
    mask = j < row_out
    ox = j // C
    c = j % C
    gx = ox // S
    q = ox % S
    col0 = (gx * 2 * S + q) * C + c
    col1 = col0 + S * C
    top = x_ptr + b * img_in + r0 * row_in
    bot = top + S * row_in
    a0 = tl.load(top + col0, mask=mask, other=0).to(tl.int32)
    a1 = tl.load(top + col1, mask=mask, other=0).to(tl.int32)
    a2 = tl.load(bot + col0, mask=mask, other=0).to(tl.int32)
    a3 = tl.load(bot + col1, mask=mask, other=0).to(tl.int32)
    out = (a0 + a1 + a2 + a3 + 2) >> 2
    tl.store(y_ptr + b * img_out + oy.to(tl.int64) * row_out + j, out.to(tl.uint8), mask=mask)


def _rs(x: torch.Tensor, perms: torch.Tensor, patch: int, inverse: bool) -> torch.Tensor:
    b, h, w, c = check_batch(x, patch)
    gh, gw = h // patch, w // patch
    perms = torch.as_tensor(perms, device=x.device).to(torch.int32).contiguous()
    if perms.shape != (b, gh * gw):
        raise ValueError(f"perms must have shape {(b, gh * gw)}, got {tuple(perms.shape)}")
    x = x.contiguous()
    y = torch.empty_like(x)
    if b == 0:
        return y
    pc = patch * c
    _rs_kernel[(b * gh * gw,)](x, y, perms, gh * gw, gw, w * c, h * w * c,
                               P=patch, PC=pc, BLOCK_R=triton.next_power_of_2(patch),
                               BLOCK_C=triton.next_power_of_2(pc), INVERSE=inverse)
    return y


def rs_permute(x: torch.Tensor, perms: torch.Tensor, patch: int) -> torch.Tensor:
    """RS: out patch j of image b is input patch perms[b, j] (as ``reference.rs_permute``)."""
    return _rs(x, perms, patch, inverse=False)


def rs_unpermute(y: torch.Tensor, perms: torch.Tensor, patch: int) -> torch.Tensor:
    """Inverse of :func:`rs_permute` for the same ``perms``: a scatter by the same kernel."""
    return _rs(y, perms, patch, inverse=True)


def mi_mix(x: torch.Tensor, patch: int) -> torch.Tensor:
    """MI: rounded-half-up mean of the 2x2 sub-patches (as ``reference.mi_mix``)."""
    b, h, w, c = check_batch(x, patch)
    if patch % 2:
        raise ValueError(f"MI needs an even patch size, got {patch}")
    s = patch // 2
    x = x.contiguous()
    y = torch.empty((b, h // 2, w // 2, c), dtype=torch.uint8, device=x.device)
    if b == 0:
        return y
    row_out = (w // 2) * c
    _mi_kernel[(b * (h // 2),)](x, y, h // 2, w * c, row_out, h * w * c, (h // 2) * row_out,
                                S=s, C=c, BLOCK=triton.next_power_of_2(row_out))
    return y
