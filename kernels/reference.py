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
* Orientations (the flip defence): ``orient[b, j]`` in 0..7 is the symmetry of
  the square applied to the cell in output slot ``j``. Bit 0 transposes, bit 1
  reverses the columns, bit 2 the rows, in that order: output pixel (y, x) of
  the cell is source pixel ``(x', y')`` if bit 0 else ``(y', x')``, with
  ``y' = P-1-y`` if bit 2 else ``y`` and ``x' = P-1-x`` if bit 1 else ``x``
  (:func:`orient_index`). ``rs_permute(x, perms, P, orient=o)``: out cell j is
  input cell ``perms[b, j]`` in orientation ``o[b, j]``.
"""

from __future__ import annotations

import torch

from .perm import turn


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


def orient_index(cell: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols): two (8, cell, cell) int64 tables, the source pixel of output pixel (y, x) of a
    cell in each orientation (see the module's conventions)."""
    y = torch.arange(cell, device=device).view(1, cell, 1).expand(8, cell, cell)
    x = torch.arange(cell, device=device).view(1, 1, cell).expand(8, cell, cell)
    o = torch.arange(8, device=device).view(8, 1, 1)
    yy = torch.where((o & 4) > 0, cell - 1 - y, y)
    xx = torch.where((o & 2) > 0, cell - 1 - x, x)
    t = (o & 1) > 0
    return torch.where(t, xx, yy), torch.where(t, yy, xx)


def _inverse_orientations() -> list[int]:
    ry, rx = orient_index(3)
    flat = ry * 3 + rx  # (8, 3, 3): source pixel of each output pixel
    ident = torch.arange(9).view(3, 3)
    inv = []
    for o in range(8):
        # the orientation q that undoes o: applying o then q is the identity
        inv.append(next(q for q in range(8) if torch.equal(flat[o].reshape(-1)[flat[q].reshape(-1)].view(3, 3), ident)))
    return inv


INVERSE_ORIENTATION = _inverse_orientations()  # orientation q undoing orientation o: INVERSE_ORIENTATION[o]


def check_orient(orient, b: int, n: int, device) -> torch.Tensor:
    orient = torch.as_tensor(orient, device=device).long()
    if orient.shape != (b, n):
        raise ValueError(f"orient must have shape {(b, n)}, got {tuple(orient.shape)}")
    return orient


def rs_permute(x: torch.Tensor, perms: torch.Tensor, patch: int, out: torch.Tensor | None = None,
               orient: torch.Tensor | None = None) -> torch.Tensor:
    """RS: out patch j of image b is input patch perms[b, j] (written into ``out`` when given).

    Implemented as one gather of patch rows: a patch row (P*C contiguous
    bytes) of output slot j at row r comes from row r of the source patch.
    Listing the source rows in output memory order turns the shuffle into a
    single ``index_select`` over (B*H*W/P) rows of P*C bytes, about 5x faster
    on the CPU than permuting a patch-major view.

    ``orient`` (B, N) in 0..7: each output cell is also turned by its orientation (module
    conventions); then the gather is of pixels (C bytes), not of patch rows.
    """
    b, h, w, c = check_batch(x, patch)
    gh, gw = h // patch, w // patch
    perms = torch.as_tensor(perms, device=x.device).long()
    if perms.shape != (b, gh * gw):
        raise ValueError(f"perms must have shape {(b, gh * gw)}, got {tuple(perms.shape)}")
    dev = x.device
    if orient is not None:
        # the fast row gather first (cells in their slots, unturned), then each orientation's cells turned as a
        # group through strided views: about 4x faster on the CPU than a gather of single pixels
        o = check_orient(orient, b, gh * gw, dev).clamp(0, 7).view(b, gh, gw)
        check_out(out, x.shape, x)
        y = rs_permute(x, perms, patch)
        res = torch.empty_like(y) if out is None else out
        yv = y.view(b, gh, patch, gw, patch, c).permute(0, 1, 3, 2, 4, 5)     # (b, gh, gw, P, P, C) views
        rv = res.view(b, gh, patch, gw, patch, c).permute(0, 1, 3, 2, 4, 5)
        for code in range(8):
            m = o == code
            if not bool(m.any()):
                continue
            rv[m] = turn(yv[m], code, 1, 2)                                   # cells (k, P, P, C)
        return res
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


def rs_unpermute(y: torch.Tensor, perms: torch.Tensor, patch: int, out: torch.Tensor | None = None,
                 orient: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of :func:`rs_permute` for the same ``perms`` (and ``orient``): the owner's keyed decrypt."""
    perms = torch.as_tensor(perms, device=y.device).long()
    inv = torch.argsort(perms, dim=1)
    if orient is not None:
        orient = inverse_orient(check_orient(orient, *perms.shape, y.device), inv)
    return rs_permute(y, inv, patch, out=out, orient=orient)


def inverse_orient(orient: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """The orientations of the inverse gather: plain cell i comes from stored slot ``inv[b, i]``,
    turned back by the inverse of that slot's orientation."""
    table = torch.tensor(INVERSE_ORIENTATION, device=orient.device)
    return table[torch.gather(orient.clamp(0, 7), 1, inv)]


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


def defence_mask(scheme, device="cpu") -> torch.Tensor:
    """(H, W, 1) uint8 mask of the defences on the stored image: 0 on every cell's gap border and
    on the dropped slots.

    The dropped slots are the first ``scheme.dropped`` output slots: after a uniform shuffle they
    hold a uniformly random subset of the image's cells, so no extra randomness is needed.
    """
    p, g = scheme.out_cell, scheme.gap
    gh, gw = scheme.grid
    cell = torch.ones((p, p), dtype=torch.uint8, device=device)
    if g:
        cell[:g] = 0
        cell[-g:] = 0
        cell[:, :g] = 0
        cell[:, -g:] = 0
    keep = torch.ones(gh * gw, dtype=torch.uint8, device=device)
    keep[:scheme.dropped] = 0
    m = keep.view(gh, 1, gw, 1) * cell.view(1, p, 1, p)
    return m.reshape(gh * p, gw * p, 1)
