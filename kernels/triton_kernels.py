"""Triton kernels for RS and MI on uint8 NHWC batches (the GPU path).

Same results, bit for bit, as ``reference.py``. All the kernels are flat streams over the OUTPUT: the
batch's output is cut into equal chunks, each program handles a long run of consecutive chunks
(``block`` of them, whatever images and rows they belong to), so every store is a full-width,
coalesced write, and only the loads are gathered.

* :func:`rs_permute`: a chunk is the widest of 16, 8, 4, 2 or 1 bytes that divides a patch row
  (P*C bytes) and to which both buffers are aligned: 16 bytes for P=16 and C=3 (3 chunks per patch
  row), 8 for P=8 and C=3, 1 for odd P*C. Chunks of 4 bytes or more move as 1, 2 or 4 int32 lanes,
  a ``[block, lanes]`` tile, so each thread loads and stores 16 contiguous bytes at once. For every
  output chunk the kernel works out (image, output row, chunk in the row), hence its output slot j,
  reads ``perms[b, j]`` (one small cached load, shared by all the chunks of a patch row) and copies
  the chunk from the same place in that source patch. The image geometry is ``tl.constexpr``, so
  divisions compile to multiplies and shifts; only the image index and the final addresses are
  int64, so batches of any size are safe. An out-of-range entry of ``perms`` is clamped, so a bad
  permutation gives a wrong image, never an out-of-bounds access.
* :func:`rs_unpermute` is the same gather over the inverse permutation. The inverse
  (``inv[b, perms[b, j]] = j``) is made on the device by one tiny Triton launch (one store per
  patch, B*n_patches*4 bytes), so the owner's decrypt runs the same fast gather as the forward
  instead of a scatter (an earlier scatter variant measured 0.29 of copy bandwidth on an H100).
* Orientations (the flip defence, ``orient=``): a cell turned by a transpose cannot move whole
  patch rows, so :func:`rs_permute` with ``orient`` launches a different kernel, the same flat stream
  over the output with a chunk of one element: a byte, or a 2- or 4-byte word when the pixel's C
  bytes and both buffers allow it (C=3: bytes; C=4: one int32 per pixel). Consecutive output
  elements go to consecutive threads, one per thread and store, so each warp store writes 32
  consecutive elements. Each element's (image, cell, pixel row and column, byte of the pixel) is
  worked out from constexpr geometry, the source pixel inside the source cell follows the
  reference's ``orient_index`` (bit 0 transposes, bit 1 reverses the columns, bit 2 the rows) and
  the element is loaded from there. A small launch first packs, per output slot, the clamped
  source cell and orientation into one int32 (``cell | o << shift``), so the gather reads one
  cached word per element; for :func:`rs_unpermute` the same small launch scatters the inverse
  table directly (``inv[b, perms[b, j]] = j``, with ``INVERSE_ORIENTATION[orient[b, j]]``), so the
  inverse is the same gather too: two launches either way. The loads of a non-transposed cell stay
  within its source rows (reversed for flips); those of a transposed cell walk down a source
  column, one cache line per pixel, and rely on the L1/L2 caches to reuse each line for the rest
  of the cell. It has NOT been run on a GPU: it is checked bit for bit against the reference only
  in the interpreter, and ``benchmarks/gpu_check.py`` times it against the plain RS kernel.
  Compiled offline for sm_90 (P=16, C=3, 224x224, default launch): byte loads and stores, no
  shared memory, no spills, 55 registers, about 51 instructions per output byte against about 3
  for the patch-row gather, so expect it to be bound by instruction issue (roughly a third of copy
  bandwidth at best, on paper) before memory. The likely remedy, if that matters, is a tiled
  variant that loads each source cell coalesced and transposes it through shared memory.
* :func:`mi_mix`: a chunk is the widest of 16, 8, 4, 2, 1 bytes dividing a sub-patch row
  ((P/2)*C bytes). For each output chunk the kernel loads the four chunks behind it (left and right
  sub-patch, top and bottom row) and writes ``(a + b + c + d + 2) >> 2`` per byte: on int32 lanes
  with SWAR (even and odd bytes summed in separate 16-bit lanes, no carries between them) when the
  chunk is 4 bytes or more, else on bytes.

Every function takes ``out=``: a preallocated contiguous uint8 tensor of the result's shape on the
input's device (not overlapping the input), written and returned, so a caller that reuses its
buffers does not allocate on the hot path. The forward RS is one launch; the inverse is two (the
tiny inverse-permutation kernel, which allocates its B x n_patches int32 result, then the gather);
with ``orient`` both are two (the small table launch, also B x n_patches int32, then the gather).

The launch shapes (``RS_BLOCK``/``RS_NUM_WARPS``, ``MI_BLOCK``/``MI_NUM_WARPS``) are NOT tuned:
they are reasoned defaults (8 chunks per thread for RS, 4 for MI) until ``benchmarks/gpu_check.py``'s
sweep measures them on a device (``RS_ORIENT_BLOCK``/``RS_ORIENT_NUM_WARPS`` for the orientation
gather: 8 elements per thread, a guess); every function takes ``block=`` and ``num_warps=``
overrides for that sweep. This design has not been timed on a GPU yet. What was checked without
one: compiled offline for sm_90, the P=16, C=3 kernels use 16-byte loads and stores for RS (8-byte
for MI), no shared memory, no spills (56 and 32 registers per thread). (The previous one-patch-per-program
kernels measured 0.74 of copy bandwidth for RS, 0.69 for its inverse and 0.82 for MI at batch 256
of 224x224x3 on an H100; see benchmarks/RESULTS.md.)

On a CUDA tensor they compile for the GPU. On a CPU tensor they run only under
``TRITON_INTERPRET=1`` (the CI's way of testing them; set it before this module is imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import INVERSE_ORIENTATION, check_batch

# Launch shapes, to be tuned by benchmarks/gpu_check.py's sweep on the device (untuned until then).
# ``block`` counts output chunks per program (a power of two); chunks per thread = block / (32 * warps).
RS_BLOCK = 1024       # 16 KiB of output per program with 16-byte chunks
RS_NUM_WARPS = 4
MI_BLOCK = 512        # 4 KiB of output (16 KiB read) per program with 8-byte chunks (P=16, C=3)
MI_NUM_WARPS = 4
INV_BLOCK = 1024      # max patches per program of the tiny inverse-permutation kernel
RS_ORIENT_BLOCK = 1024   # output elements (bytes for C=3) per program of the orientation gather
RS_ORIENT_NUM_WARPS = 4
# the orientation undoing each orientation (reference.INVERSE_ORIENTATION), 3 bits each, for the kernels
_INVERSE_ORIENTATION_BITS = sum(q << (3 * o) for o, q in enumerate(INVERSE_ORIENTATION))


@triton.jit
def _block_chunks(total, IMG: tl.constexpr, BLOCK: tl.constexpr):
    """This program's BLOCK consecutive output chunks (of IMG per image): (start, i, image of each chunk
    (int64), chunk within its image, live). The image index is found once per program in int64; a block
    may run on into the next images."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    b0 = start // IMG
    first = (start - b0 * IMG).to(tl.int32)
    i = tl.arange(0, BLOCK)
    live = i < tl.minimum(total - start, BLOCK).to(tl.int32)
    loc = first + i
    db = loc // IMG
    return start, i, b0 + db, loc - db * IMG, live


@triton.jit
def _cell_of(loc, ROW: tl.constexpr, K: tl.constexpr, P: tl.constexpr):
    """(cell row, cell column, row inside the cell, unit inside the cell's row) of output unit ``loc`` of an
    image (ROW units per image row, K per cell row, P rows per cell)."""
    row = loc // ROW
    q = loc - row * ROW
    gx = q // K
    gy = row // P
    return gy, gx, row - gy * P, q - gx * K


@triton.jit
def _rs_kernel(x_ptr, y_ptr, perm_ptr, total,
               IMG: tl.constexpr, ROW: tl.constexpr, K: tl.constexpr, P: tl.constexpr,
               GW: tl.constexpr, NP: tl.constexpr, LANES: tl.constexpr, BLOCK: tl.constexpr):
    """out chunk g <- the chunk at the same place in source patch perms[b, slot(g)].

    Units are chunks of LANES elements. IMG: chunks per image; ROW: per image row; K: per patch
    row; GW: patches per grid row; NP: patches per image.
    """
    start, i, b, loc, live = _block_chunks(total, IMG, BLOCK)
    gy, gx, r, k = _cell_of(loc, ROW, K, P)
    src = tl.load(perm_ptr + b * NP + (gy * GW + gx), mask=live, other=0).to(tl.int32)
    src = tl.minimum(tl.maximum(src, 0), NP - 1)
    sy = src // GW
    sx = src - sy * GW
    src_chunk = b * IMG + ((sy * P + r) * ROW + sx * K + k)
    lane = tl.arange(0, LANES)[None, :]
    m = live[:, None]
    v = tl.load(x_ptr + ((src_chunk * LANES)[:, None] + lane), mask=m)
    # the stores' contiguity is capped at the chunk: with one lane the offsets run on down the rows,
    # and the compiler would pick a store layout unlike the gathers' and convert through shared memory
    dst = tl.max_contiguous(y_ptr + (((start + i) * LANES)[:, None] + lane), [1, LANES])
    tl.store(dst, v, mask=m)


@triton.jit
def _inverse_kernel(perm_ptr, inv_ptr, NP: tl.constexpr, BLOCK: tl.constexpr):
    """inv[b, perms[b, j]] = j; program (b, t) does patches t*BLOCK .. t*BLOCK+BLOCK-1 of image b."""
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = j < NP
    p = tl.load(perm_ptr + b * NP + j, mask=m, other=0).to(tl.int32)
    tl.store(inv_ptr + b * NP + p, j, mask=m & (p >= 0) & (p < NP))


@triton.jit
def _cells_kernel(perm_ptr, orient_ptr, cell_ptr, NP: tl.constexpr, SHIFT: tl.constexpr,
                  INV_BITS: tl.constexpr, INVERSE: tl.constexpr, BLOCK: tl.constexpr):
    """The orientation gather's table, one int32 per output slot: source cell | orientation << SHIFT.

    Forward: cell[b, j] = clamp(perms[b, j]) | clamp(orient[b, j]) << SHIFT. INVERSE: the table of the
    inverse gather, cell[b, perms[b, j]] = j | INVERSE_ORIENTATION[clamp(orient[b, j])] << SHIFT (plain
    cell perms[b, j] comes back from slot j, turned back). Program (b, t) does slots t*BLOCK .. of image b.
    """
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = j < NP
    p = tl.load(perm_ptr + b * NP + j, mask=m, other=0)
    o = tl.load(orient_ptr + b * NP + j, mask=m, other=0)
    o = tl.minimum(tl.maximum(o, 0), 7).to(tl.int32)  # clamped before narrowing, as the reference clamps
    if INVERSE:
        q = (INV_BITS >> (3 * o)) & 7
        ok = m & (p >= 0) & (p < NP)
        tl.store(cell_ptr + b * NP + p, j | (q << SHIFT), mask=ok)
    else:
        p = tl.minimum(tl.maximum(p, 0), NP - 1).to(tl.int32)
        tl.store(cell_ptr + b * NP + j, p | (o << SHIFT), mask=m)


@triton.jit
def _rs_orient_kernel(x_ptr, y_ptr, cell_ptr, total,
                      IMG: tl.constexpr, ROW: tl.constexpr, K: tl.constexpr, E: tl.constexpr, P: tl.constexpr,
                      GW: tl.constexpr, NP: tl.constexpr, SHIFT: tl.constexpr, BLOCK: tl.constexpr):
    """out element g <- its pixel's source pixel in cell[b, slot(g)]'s source cell and orientation.

    Units are elements (bytes, or 2- or 4-byte words when the pixel's C bytes allow), E of them per
    pixel. IMG: elements per image; ROW: per image row; K: per patch row (P*E); GW: patches per grid
    row; NP: patches per image. ``cell`` is the table of :func:`_cells_kernel`.
    """
    start, i, b, loc, live = _block_chunks(total, IMG, BLOCK)
    gy, gx, y, t = _cell_of(loc, ROW, K, P)   # y, t: row inside the output cell, unit inside its cell row
    x = t // E                                # pixel column inside the cell, element in the pixel
    e = t - x * E
    cell = tl.load(cell_ptr + b * NP + (gy * GW + gx), mask=live, other=0)
    o = (cell >> SHIFT) & 7
    src = tl.minimum(cell & ((1 << SHIFT) - 1), NP - 1)  # a slot the inverse left unwritten: still in bounds
    sy = src // GW
    sx = src - sy * GW
    yy = tl.where((o & 4) != 0, P - 1 - y, y)
    xx = tl.where((o & 2) != 0, P - 1 - x, x)
    tr = (o & 1) != 0
    ry = tl.where(tr, xx, yy)
    rx = tl.where(tr, yy, xx)
    src_el = b * IMG + ((sy * P + ry) * ROW + (sx * P + rx) * E + e)
    v = tl.load(x_ptr + src_el, mask=live)
    # one element per thread and store, as the gathers: 32 consecutive output elements per warp store
    dst = tl.max_contiguous(y_ptr + (start + i), [1])
    tl.store(dst, v, mask=live)


@triton.jit
def _mi_kernel(x_ptr, y_ptr, total,
               OIMG: tl.constexpr, OROW: tl.constexpr, SC: tl.constexpr, S: tl.constexpr,
               LANES: tl.constexpr, SWAR: tl.constexpr, BLOCK: tl.constexpr):
    """out chunk g <- rounded mean of the four input chunks behind it.

    Units are chunks of LANES elements (int32 words when SWAR, else bytes). OIMG: output chunks per
    image; OROW: per output row; SC: per sub-patch row. An input row is 2*OROW chunks, an input
    image 4*OIMG.
    """
    start, i, b, loc, live = _block_chunks(total, OIMG, BLOCK)
    oy = loc // OROW
    oc = loc - oy * OROW
    gy = oy // S
    r = oy - gy * S
    gx = oc // SC
    q = oc - gx * SC
    top = b * (4 * OIMG) + ((gy * (2 * S) + r) * (2 * OROW) + gx * (2 * SC) + q)
    lane = tl.arange(0, LANES)[None, :]
    m = live[:, None]
    p00 = x_ptr + ((top * LANES)[:, None] + lane)   # top left; top right is SC chunks on, bottom S rows down
    a0 = tl.load(p00, mask=m, other=0)
    a1 = tl.load(p00 + SC * LANES, mask=m, other=0)
    a2 = tl.load(p00 + S * 2 * OROW * LANES, mask=m, other=0)
    a3 = tl.load(p00 + (S * 2 * OROW + SC) * LANES, mask=m, other=0)
    if SWAR:
        lo = 0x00FF00FF
        even = (a0 & lo) + (a1 & lo) + (a2 & lo) + (a3 & lo) + 0x00020002
        odd = ((a0 >> 8) & lo) + ((a1 >> 8) & lo) + ((a2 >> 8) & lo) + ((a3 >> 8) & lo) + 0x00020002
        out = ((even >> 2) & lo) | (((odd >> 2) & lo) << 8)
    else:
        s = a0.to(tl.int32) + a1.to(tl.int32) + a2.to(tl.int32) + a3.to(tl.int32) + 2
        out = (s >> 2).to(tl.uint8)
    dst = tl.max_contiguous(y_ptr + (((start + i) * LANES)[:, None] + lane), [1, LANES])  # as in _rs_kernel
    tl.store(dst, out, mask=m)


def _chunk_bytes(nbytes: int, *tensors: torch.Tensor) -> int:
    """The widest of 16, 8, 4, 2, 1 bytes that divides ``nbytes`` and the address of every tensor."""
    for cb in (16, 8, 4, 2, 1):
        if nbytes % cb == 0 and all(t.data_ptr() % cb == 0 and t.storage_offset() % cb == 0 for t in tensors):
            return cb
    return 1


def _chunk_view(t: torch.Tensor, cb: int) -> tuple[torch.Tensor, int]:
    """(flat view of the contiguous uint8 ``t`` as int32 words when chunks are >= 4 bytes, else bytes;
    elements per chunk)."""
    flat = t.reshape(-1)
    if cb >= 4:
        return flat.view(torch.int32), cb // 4
    return flat, cb


def _launch(block: int | None, default_block: int, num_warps: int | None, default_warps: int) -> tuple[int, int]:
    blk = default_block if block is None else block
    nw = default_warps if num_warps is None else num_warps
    for name, v in (("block", blk), ("num_warps", nw)):
        if not isinstance(v, int) or v < 1 or v & (v - 1):
            raise ValueError(f"{name} must be a positive power of two, got {v!r}")
    return blk, nw


def _output(out: torch.Tensor | None, shape: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    """``out`` checked against the result's shape, dtype and device (or a new tensor)."""
    if out is None:
        return torch.empty(shape, dtype=torch.uint8, device=x.device)
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if out.dtype != torch.uint8 or tuple(out.shape) != tuple(shape) or out.device != x.device:
        raise ValueError(f"out must be a uint8 tensor of shape {tuple(shape)} on {x.device}, "
                         f"got {out.dtype} of shape {tuple(out.shape)} on {out.device}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    if out.numel() and x.numel():
        a, n = x.data_ptr(), x.numel()
        o, m = out.data_ptr(), out.numel()
        if a < o + m and o < a + n:
            raise ValueError("out must not overlap the input")
    return out


def _perms(perms, b: int, n: int, device: torch.device) -> torch.Tensor:
    perms = torch.as_tensor(perms, device=device)
    if perms.shape != (b, n):
        raise ValueError(f"perms must have shape {(b, n)}, got {tuple(perms.shape)}")
    if perms.dtype not in (torch.int32, torch.int64):  # the kernels read int32 or int64 as they are
        perms = perms.to(torch.int64)
    return perms.contiguous()


def _inverse(perms: torch.Tensor) -> torch.Tensor:
    """inv with inv[b, perms[b, j]] = j, on the device, by one small launch."""
    b, n = perms.shape
    inv = torch.empty((b, n), dtype=torch.int32, device=perms.device)
    blk = min(triton.next_power_of_2(n), INV_BLOCK)
    _inverse_kernel[(b, triton.cdiv(n, blk))](perms, inv, NP=n, BLOCK=blk, num_warps=4 if blk >= 512 else 1)
    return inv


def _orient(orient, b: int, n: int, device: torch.device) -> torch.Tensor:
    orient = torch.as_tensor(orient, device=device)
    if orient.shape != (b, n):
        raise ValueError(f"orient must have shape {(b, n)}, got {tuple(orient.shape)}")
    if orient.dtype not in (torch.int32, torch.int64):  # read as they are, like perms
        orient = orient.to(torch.int64)
    return orient.contiguous()


def _cells(perms: torch.Tensor, orient: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, int]:
    """(the orientation gather's int32 table of source cell | orientation << shift, shift), by one
    small launch; ``inverse``: the table of the inverse gather (see :func:`_cells_kernel`)."""
    b, n = perms.shape
    shift = max(1, (n - 1).bit_length())
    if shift > 28:
        raise ValueError(f"{n} patches per image is too many for the orientation kernel (at most 2**28)")
    cells = torch.empty((b, n), dtype=torch.int32, device=perms.device)
    blk = min(triton.next_power_of_2(n), INV_BLOCK)
    _cells_kernel[(b, triton.cdiv(n, blk))](perms, orient, cells, NP=n, SHIFT=shift,
                                            INV_BITS=_INVERSE_ORIENTATION_BITS, INVERSE=inverse, BLOCK=blk,
                                            num_warps=4 if blk >= 512 else 1)
    return cells, shift


def _pixel_word(c: int, *tensors: torch.Tensor) -> int:
    """The widest of 4, 2, 1 bytes that divides a pixel (``c`` bytes) and the address of every tensor."""
    for wb in (4, 2, 1):
        if c % wb == 0 and all(t.data_ptr() % wb == 0 and t.storage_offset() % wb == 0 for t in tensors):
            return wb
    return 1


_WORD = {4: torch.int32, 2: torch.int16, 1: torch.uint8}


def _rs(x: torch.Tensor, perms, patch: int, inverse: bool, *, out: torch.Tensor | None = None,
        orient=None, block: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    b, h, w, c = check_batch(x, patch)
    gw = w // patch
    n = (h // patch) * gw
    perms = _perms(perms, b, n, x.device)
    if orient is not None:
        orient = _orient(orient, b, n, x.device)
        blk, nw = _launch(block, RS_ORIENT_BLOCK, num_warps, RS_ORIENT_NUM_WARPS)
    else:
        blk, nw = _launch(block, RS_BLOCK, num_warps, RS_NUM_WARPS)
    x = x.contiguous()
    y = _output(out, (b, h, w, c), x)
    if b == 0 or x.numel() == 0:
        return y
    if orient is not None:
        cells, shift = _cells(perms, orient, inverse)
        wb = _pixel_word(c, x, y)
        xv, yv = x.reshape(-1).view(_WORD[wb]), y.reshape(-1).view(_WORD[wb])
        e = c // wb
        img = h * w * e
        total = b * img
        _rs_orient_kernel[(triton.cdiv(total, blk),)](
            xv, yv, cells, total, IMG=img, ROW=w * e, K=patch * e, E=e, P=patch, GW=gw, NP=n, SHIFT=shift,
            BLOCK=blk, num_warps=nw)
        return y
    if inverse:
        perms = _inverse(perms)
    cb = _chunk_bytes(patch * c, x, y)
    xv, lanes = _chunk_view(x, cb)
    yv, _ = _chunk_view(y, cb)
    k = patch * c // cb
    img = h * w * c // cb
    total = b * img
    _rs_kernel[(triton.cdiv(total, blk),)](
        xv, yv, perms, total, IMG=img, ROW=gw * k, K=k, P=patch, GW=gw, NP=n, LANES=lanes, BLOCK=blk,
        num_warps=nw)
    return y


def rs_permute(x: torch.Tensor, perms, patch: int, *, out: torch.Tensor | None = None, orient=None,
               block: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """RS: out patch j of image b is input patch perms[b, j] (as ``reference.rs_permute``).

    ``out``: optional preallocated contiguous uint8 tensor shaped like ``x`` (same device, not
    overlapping ``x``), written and returned. ``orient``: optional (B, n_patches) int32 or int64
    orientations (0..7, clamped; the reference's conventions): out cell j is also turned by
    ``orient[b, j]``, by the orientation gather instead of the patch-row one. ``block`` (output
    chunks, or with ``orient`` output elements, per program, a power of two) and ``num_warps``
    override ``RS_BLOCK`` and ``RS_NUM_WARPS`` (``RS_ORIENT_BLOCK``, ``RS_ORIENT_NUM_WARPS`` with
    ``orient``), for the tuning sweep.
    """
    return _rs(x, perms, patch, False, out=out, orient=orient, block=block, num_warps=num_warps)


def rs_unpermute(y: torch.Tensor, perms, patch: int, *, out: torch.Tensor | None = None, orient=None,
                 block: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """Inverse of :func:`rs_permute` for the same ``perms`` (and ``orient``): the same gather over the
    inverse permutation (and inverse orientations), made on the device. Arguments as :func:`rs_permute`."""
    return _rs(y, perms, patch, True, out=out, orient=orient, block=block, num_warps=num_warps)


def mi_mix(x: torch.Tensor, patch: int, *, out: torch.Tensor | None = None,
           block: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """MI: rounded-half-up mean of the 2x2 sub-patches (as ``reference.mi_mix``).

    ``out``: optional preallocated contiguous uint8 tensor of shape (B, H/2, W/2, C) on ``x``'s
    device, written and returned. ``block`` (output chunks per program, a power of two) and
    ``num_warps`` override ``MI_BLOCK`` and ``MI_NUM_WARPS`` (for the tuning sweep).
    """
    b, h, w, c = check_batch(x, patch)
    if patch % 2:
        raise ValueError(f"MI needs an even patch size, got {patch}")
    blk, nw = _launch(block, MI_BLOCK, num_warps, MI_NUM_WARPS)
    s = patch // 2
    x = x.contiguous()
    y = _output(out, (b, h // 2, w // 2, c), x)
    if b == 0 or x.numel() == 0:
        return y
    cb = _chunk_bytes(s * c, x, y)
    xv, lanes = _chunk_view(x, cb)
    yv, _ = _chunk_view(y, cb)
    orow = (w // 2) * c // cb
    oimg = (h // 2) * orow
    total = b * oimg
    _mi_kernel[(triton.cdiv(total, blk),)](
        xv, yv, total, OIMG=oimg, OROW=orow, SC=s * c // cb, S=s, LANES=lanes, SWAR=cb >= 4, BLOCK=blk,
        num_warps=nw)
    return y
