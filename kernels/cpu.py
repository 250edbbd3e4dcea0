"""The CPU's encryption: one image at a time, in numpy, in scratch that stays in cache.

The same conventions as :mod:`.reference` (the torch implementation that is the ground truth, on any
device) and bit-identical to it (tests/test_cpu_kernels.py, property-tested). Why a second CPU
implementation: what the torch reference costs on a batch is less its arithmetic than its traffic. MI
widens the whole batch to int16 (twice its size, freshly allocated, so page faults on every batch); the flip
defence runs eight boolean-mask gathers over the batch; and whatever the kernel writes (a 10 MB batch
buffer) leaves the cache before the encoder reads it back. Measured on this project's 2-core machine, per
224x224 image, alone in one thread: MI 79 us batched in torch, 39 us here; RS 90 -> 61 us; mi-shuffle
with flip 287 -> about 100 us (MI and the gather); and inside the running CLI, where two processes share
the cores and the memory bus, the batched kernels cost 2.5 to 5 times that.

So the worker runs :class:`ImageKernel` inside the encoder's per-image call (:class:`himr_pipe.encode.CpuEncoder`):
the resized image is read once, encrypted into a buffer of the kernel's own (150 KB at most, L2-resident),
and the JPEG encoder reads it from there straight away. One kernel per thread (its scratch is its state).

The pieces, per image:

* MI: ``(a + b + c + d + 2) >> 2`` of the four sub-patches, summed in uint16 scratch (exact);
* RS without flip: one ``take`` of patch rows (P*C contiguous bytes each), as the reference's index_select;
* with flip: one ``take`` of pixels (C bytes) whose source offsets come from the reference's own orientation
  table (:func:`.reference.orient_index`), so both read the convention from one place;
* gap and drop: the reference's :func:`.reference.defence_mask`, multiplied in place.
"""

from __future__ import annotations

import time

import numpy as np


class ImageKernel:
    """Encrypt one HxWxC uint8 image of ``scheme.size`` at a time; the result is the kernel's own buffer (or
    ``out``), valid until its next call. Not thread-safe: one per thread."""

    def __init__(self, scheme, channels: int = 3, mix: bool | None = None):
        # mix: MI's 2x2 means first (default: where the scheme's definition says its cells are mixed); the cells
        # are then shuffled where the scheme shuffles; neither: the image is copied (none)
        self.scheme, self.c = scheme, channels
        self.mix = scheme.definition.mixed if mix is None else mix
        h, w = scheme.size
        oh, ow = scheme.out_size
        self.out = np.empty((oh, ow, channels), np.uint8)
        self.seconds = 0.0  # busy time of this kernel's calls (the worker's "encrypt" stage on the CPU)
        c, p = channels, scheme.patch
        if self.mix:
            s = p // 2
            self.gh, self.gw, self.s = h // p, w // p, s
            self.pairs = np.empty((self.gh, s, self.gw * 2 * s * c), np.uint16)  # top + bottom sub-patch rows
            self.sums = np.empty((self.gh, s, self.gw, s * c), np.uint16)        # + left and right
            self.mi = np.empty((oh, ow, c), np.uint8) if scheme.shuffled else self.out
        if scheme.shuffled:
            cell = scheme.out_cell
            gh, gw = oh // cell, ow // cell
            self.grid, self.cell = (gh, gw), cell
            j = np.arange(gh * gw, dtype=np.intp)
            if scheme.flip:  # in pixels (C bytes): cell j's first pixel, and each orientation's offsets in a cell
                from .reference import orient_index

                ry, rx = (t.numpy() for t in orient_index(cell))
                self.first = (j // gw) * cell * ow + (j % gw) * cell
                self.offsets = (ry * ow + rx).astype(np.intp)          # (8, cell, cell)
                self.unit = np.dtype((np.void, c))
            else:  # in cell rows (cell * C bytes): cell j's first row, and the step to its next rows
                self.first = (j // gw) * cell * gw + j % gw
                self.rows = (np.arange(cell, dtype=np.intp) * gw).reshape(1, cell, 1)
                self.unit = np.dtype((np.void, cell * c))
            self.mask = None
            if scheme.gap or scheme.drop:
                from .reference import defence_mask

                self.mask = defence_mask(scheme).numpy()

    def __call__(self, img: np.ndarray, cells: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """``img``: (H, W, C) uint8; ``cells``: the image's row of permutations (packed with the
        orientations for a flip scheme, as ``make_permutations(keys, orient=True)`` gives them)."""
        t = time.perf_counter()
        s = self.scheme
        out = self.out if out is None else out
        y = img
        if self.mix:
            y = self._mi(img, out if not s.shuffled else self.mi)
        elif not s.shuffled:
            np.copyto(out, img)
        if s.shuffled:
            if cells is None:
                raise ValueError(f"scheme {s.name} needs the image's permutation")
            self._gather(y, np.asarray(cells), out)
            if self.mask is not None:
                np.multiply(out, self.mask, out=out)
        self.seconds += time.perf_counter() - t
        return out

    def _mi(self, img: np.ndarray, out: np.ndarray) -> np.ndarray:
        gh, gw, s, c = self.gh, self.gw, self.s, self.c
        a = np.ascontiguousarray(img).reshape(gh, 2, s, gw * 2 * s * c)
        np.add(a[:, 0], a[:, 1], out=self.pairs, dtype=np.uint16)
        t = self.pairs.reshape(gh, s, gw, 2, s * c)
        np.add(t[..., 0, :], t[..., 1, :], out=self.sums)
        np.add(self.sums, 2, out=self.sums)
        np.right_shift(self.sums, 2, out=self.sums)
        np.copyto(out.reshape(self.sums.shape), self.sums, casting="unsafe")  # at most 255: exact
        return out

    def _gather(self, y: np.ndarray, cells: np.ndarray, out: np.ndarray) -> None:
        gh, gw = self.grid
        n = gh * gw
        if cells.shape != (n,):
            raise ValueError(f"the image's permutation must have shape ({n},), got {cells.shape}")
        src = np.ascontiguousarray(y).reshape(-1).view(self.unit)
        dst = out.reshape(-1).view(self.unit)
        if not self.scheme.flip:
            # output row r of slot (cy, cx) is row r of source cell perm[cy, cx]: a chunk of P*C bytes
            np.take(src, (self.first[cells].reshape(gh, 1, gw) + self.rows).reshape(-1), out=dst)
            return
        perm, orient = cells % n, np.clip(cells // n, 0, 7).reshape(gh, gw)
        # (gh, P, gw, P): the source pixel of each output pixel, in output memory order
        idx = self.offsets[orient].transpose(0, 2, 1, 3) + self.first[perm].reshape(gh, 1, gw, 1)
        np.take(src, idx.reshape(-1), out=dst)


class ReferenceKernel:
    """The per-image kernel of a scheme without a CPU kernel of its own: its torch reference on one image
    (:meth:`himr_pipe.schemes.SchemeDef.encrypt` with :mod:`.reference`'s ops). Same interface as ImageKernel."""

    def __init__(self, scheme, channels: int = 3):
        self.scheme = scheme
        self.out = np.empty((*scheme.out_size, channels), np.uint8)
        self.seconds = 0.0

    def __call__(self, img: np.ndarray, cells=None, out: np.ndarray | None = None) -> np.ndarray:
        import torch

        from . import reference

        t = time.perf_counter()
        s = self.scheme
        out = self.out if out is None else out
        if s.shuffled and cells is None:
            raise ValueError(f"scheme {s.name} needs the image's permutation")
        x = torch.from_numpy(np.ascontiguousarray(img))[None]
        perms = None if cells is None else torch.from_numpy(np.asarray(cells, np.int64)).view(1, -1)
        y = s.definition.encrypt(s, x, perms, reference)
        np.copyto(out, y[0].numpy())
        self.seconds += time.perf_counter() - t
        return out


def image_kernel(scheme, channels: int = 3):
    """The CPU's per-image kernel of ``scheme``: its definition's own, or its torch reference one image at a time."""
    return scheme.definition.image_kernel(scheme, channels) or ReferenceKernel(scheme, channels)


def encrypt(scheme, x, perms=None, out=None):
    """The batch form of :func:`image_kernel` (``kernels.encrypt(impl="cpu")``): a uint8 NHWC CPU tensor or
    array in, the same kind out (into ``out`` when given)."""
    import torch

    is_tensor = isinstance(x, torch.Tensor)
    xa = x.numpy() if is_tensor else np.asarray(x)
    b, c = xa.shape[0], xa.shape[3]
    if not scheme.definition.encrypts:
        return x
    if out is None:
        out = torch.empty((b, *scheme.out_size, c), dtype=torch.uint8) if is_tensor else \
            np.empty((b, *scheme.out_size, c), np.uint8)
    oa = out.numpy() if isinstance(out, torch.Tensor) else out
    if scheme.shuffled:
        if perms is None:
            raise ValueError(f"scheme {scheme.name} needs per-image permutations")
        perms = perms.cpu().numpy() if isinstance(perms, torch.Tensor) else np.asarray(perms)
    k = image_kernel(scheme, c)
    for i in range(b):
        k(xa[i], None if perms is None else perms[i], out=oa[i])
    return out
