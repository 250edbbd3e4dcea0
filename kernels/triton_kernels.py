"""Triton kernels for RS and MI on uint8 NHWC batches (the GPU path).

Same signatures and bit-identical results as ``reference.py``:

* :func:`rs_permute` / :func:`rs_unpermute`: each program copies a PxP
  patch row by row (a patch row is P*C contiguous bytes, moved as 4- or
  2-byte words when they divide it) from its source slot to its destination
  slot. The inverse swaps the two roles, so the owner's keyed decrypt is the
  same kernel. (A variant with one program per (image, row within a patch),
  writing whole output rows, measured slower on an H100: 0.70 of copy
  bandwidth against 0.74, and 0.29 for the inverse, which needed a scatter.)
* :func:`mi_mix`: each program writes a few output rows from the two input
  rows behind each, ``(a + b + c + d + 2) >> 2`` per byte; four bytes at a
  time (SWAR on int32 words) when a sub-patch row is a whole number of words,
  else byte by byte.

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
def _rs_kernel(x_ptr, y_ptr, perm_ptr, total, n_patches, grid_w, row_words, img_words,
               P: tl.constexpr, PW: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
               PATCHES: tl.constexpr, INVERSE: tl.constexpr):
    """Copy PATCHES patches per program; a patch row is PW words (the widest of 4, 2 or 1 bytes
    that divides P*C), so a row moves as a few wide loads instead of P*C byte loads."""
    r = tl.arange(0, BLOCK_R)[:, None]
    q = tl.arange(0, BLOCK_C)[None, :]
    tile = (r < P) & (q < PW)
    for i in range(PATCHES):
        pid = tl.program_id(0) * PATCHES + i
        live = pid < total
        pid = tl.minimum(pid, total - 1)
        b = (pid // n_patches).to(tl.int64)
        j = pid % n_patches
        k = tl.load(perm_ptr + pid).to(tl.int32)
        if INVERSE:
            src = j
            dst = k
        else:
            src = k
            dst = j
        sy = src // grid_w
        sx = src % grid_w
        dy = dst // grid_w
        dx = dst % grid_w
        base = b * img_words
        src_off = base + (sy * P + r).to(tl.int64) * row_words + sx * PW + q
        dst_off = base + (dy * P + r).to(tl.int64) * row_words + dx * PW + q
        mask = tile & live
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


@triton.jit
def _mi_words_kernel(x_ptr, y_ptr, total_rows, out_h, row_in, row_out, img_in, img_out,
                     S: tl.constexpr, SW: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr):
    """MI on int32 words (4 bytes at a time, SWAR) when a sub-patch row is a whole number of words.

    A program writes ROWS consecutive output rows as one 2-D tile. Even and odd
    bytes of a word are summed in separate 16-bit lanes (at most 4*255+2, no
    carry between lanes), rounded and shifted there, then put back together.
    """
    rid = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
    j = tl.arange(0, BLOCK)[None, :]
    m = (rid < total_rows) & (j < row_out)
    b = (rid // out_h).to(tl.int64)
    oy = rid % out_h
    r0 = ((oy // S) * 2 * S + oy % S).to(tl.int64)
    gx = j // SW
    left = gx * 2 * SW + j % SW
    top = x_ptr + b * img_in + r0 * row_in
    bot = top + S * row_in
    a0 = tl.load(top + left, mask=m, other=0)
    a1 = tl.load(top + left + SW, mask=m, other=0)
    a2 = tl.load(bot + left, mask=m, other=0)
    a3 = tl.load(bot + left + SW, mask=m, other=0)
    lo = 0x00FF00FF
    even = (a0 & lo) + (a1 & lo) + (a2 & lo) + (a3 & lo) + 0x00020002
    odd = ((a0 >> 8) & lo) + ((a1 >> 8) & lo) + ((a2 >> 8) & lo) + ((a3 >> 8) & lo) + 0x00020002
    out = ((even >> 2) & lo) | (((odd >> 2) & lo) << 8)
    tl.store(y_ptr + b * img_out + oy.to(tl.int64) * row_out + j, out, mask=m)


def _word_view(t: torch.Tensor, nbytes: int):
    """(view of t's rows as the widest words dividing nbytes, word size)."""
    b = t.shape[0]
    flat = t.reshape(b, -1)
    for ws, dt in ((4, torch.int32), (2, torch.int16)):
        if nbytes % ws == 0 and flat.shape[1] % ws == 0 and t.data_ptr() % ws == 0:
            return flat.view(dt), ws
    return flat, 1


# Launch shapes: the fastest in benchmarks/gpu_check.py's sweep on an H100 (benchmarks/RESULTS.md).
# Small programs win: one patch (RS) or two rows (MI) per program, one warp each.
RS_PATCHES_PER_PROGRAM = 1
MI_ROWS_PER_PROGRAM = 2
RS_NUM_WARPS = 1
MI_NUM_WARPS = 1


def _rs(x: torch.Tensor, perms: torch.Tensor, patch: int, inverse: bool,
        patches_per_program: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    b, h, w, c = check_batch(x, patch)
    gh, gw = h // patch, w // patch
    perms = torch.as_tensor(perms, device=x.device).to(torch.int32).contiguous()
    if perms.shape != (b, gh * gw):
        raise ValueError(f"perms must have shape {(b, gh * gw)}, got {tuple(perms.shape)}")
    x = x.contiguous()
    y = torch.empty_like(x)
    if b == 0:
        return y
    xv, ws = _word_view(x, patch * c)
    yv = y.reshape(b, -1).view(xv.dtype)
    pw = patch * c // ws
    ppp = patches_per_program or RS_PATCHES_PER_PROGRAM
    total = b * gh * gw
    _rs_kernel[(triton.cdiv(total, ppp),)](
        xv, yv, perms, total, gh * gw, gw, w * c // ws, h * w * c // ws,
        P=patch, PW=pw, BLOCK_R=triton.next_power_of_2(patch), BLOCK_C=triton.next_power_of_2(pw),
        PATCHES=ppp, INVERSE=inverse, num_warps=num_warps or RS_NUM_WARPS)
    return y


def rs_permute(x: torch.Tensor, perms: torch.Tensor, patch: int) -> torch.Tensor:
    """RS: out patch j of image b is input patch perms[b, j] (as ``reference.rs_permute``)."""
    return _rs(x, perms, patch, inverse=False)


def rs_unpermute(y: torch.Tensor, perms: torch.Tensor, patch: int) -> torch.Tensor:
    """Inverse of :func:`rs_permute` for the same ``perms``: a scatter by the same kernel."""
    return _rs(y, perms, patch, inverse=True)


def mi_mix(x: torch.Tensor, patch: int, rows_per_program: int | None = None,
           num_warps: int | None = None) -> torch.Tensor:
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
    nw = num_warps or MI_NUM_WARPS
    if (s * c) % 4 == 0 and x.data_ptr() % 4 == 0:
        rows = triton.next_power_of_2(rows_per_program or MI_ROWS_PER_PROGRAM)
        sw = s * c // 4
        total = b * (h // 2)
        _mi_words_kernel[(triton.cdiv(total, rows),)](
            x.reshape(b, -1).view(torch.int32), y.view(b, -1).view(torch.int32), total, h // 2, w * c // 4, row_out // 4,
            h * w * c // 4, (h // 2) * row_out // 4, S=s, SW=sw, BLOCK=triton.next_power_of_2(row_out // 4),
            ROWS=rows, num_warps=nw)
        return y
    _mi_kernel[(b * (h // 2),)](x, y, h // 2, w * c, row_out, h * w * c, (h // 2) * row_out,
                                S=s, C=c, BLOCK=triton.next_power_of_2(row_out), num_warps=nw)
    return y
