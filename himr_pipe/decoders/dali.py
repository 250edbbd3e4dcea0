"""The DALI decoder, the default: batches fed through ``fn.external_source`` (bytes in), so order, skipping and
resume stay in our hands.

On the GPU (a device id: the ``mixed`` decoder) DALI resizes too, as one batched operator; on the CPU
(``device_id=None``) it decodes only and :mod:`himr_pipe.resize` resizes, 4-5x faster than DALI's CPU resize. DALI
applies the EXIF orientation (not for letterbox) and converts grayscale, CMYK, palette, RGBA and 16-bit images
to 8-bit RGB.

DALI fails the whole batch when one sample is corrupt and the pipeline object becomes invalid. The decoder then
rebuilds the pipeline (a few ms) and decodes that batch one sample at a time to find the bad ones; only they are
skipped. DALI itself is imported when the first pipeline is built, not with this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from .common import DECODE_ERROR, RESIZE_MODES, DecodeBatch, DecodeFailed, _alloc, _stack

if TYPE_CHECKING:
    import torch


class DaliDecoder:
    """Decode and resize batches of encoded images to uint8 NHWC tensors.

    ``resize``: ``crop`` scales the shorter side to fit and cuts the centre
    (aspect kept, the usual choice for classification); ``stretch`` scales
    both sides to the target (nothing cut, aspect changed); ``letterbox``
    follows the per-sample geometry its batches carry (LETTERBOX_FIELDS).
    """

    def __init__(self, size: tuple[int, int], resize: str = "crop", max_batch: int = 64,
                 num_threads: int = 2, device_id: int | None = None, views: bool = False):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}")
        self.size = tuple(size)
        self.resize = resize
        self.max_batch = max_batch
        self.num_threads = max(1, num_threads)
        self.device_id = device_id
        self.views = views  # batches carry per-sample crop windows and flips (see VIEW_FIELDS)
        self._pipe = None
        # On the CPU DALI decodes only and :mod:`himr_pipe.resize` resizes (DALI's CPU resize measured 4-5x slower);
        # on the GPU DALI resizes too, as one batched operator.
        self.resizer = None
        if device_id is None:
            from ..resize import Resizer

            self.resizer = Resizer(self.size, resize, views, self.num_threads)

    # -- pipeline ---------------------------------------------------------
    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        h, w = self.size
        gpu = self.device_id is not None

        @pipeline_def(batch_size=self.max_batch, num_threads=self.num_threads,
                      device_id=self.device_id, prefetch_queue_depth=1)
        def pipe():
            raw = fn.external_source(name="raw", dtype=types.UINT8, ndim=1)
            if not gpu:  # the stored frame for letterbox: COCO's boxes know no EXIF orientation
                return fn.decoders.image(raw, device="cpu", output_type=types.RGB,
                                         adjust_orientation=self.resize != "letterbox")
            if self.resize == "letterbox":  # the stored frame: COCO's boxes know no EXIF orientation
                img = fn.decoders.image(raw, device="mixed", output_type=types.RGB, adjust_orientation=False)
                anchor = fn.external_source(name="anchor", dtype=types.FLOAT, ndim=1)
                shape = fn.external_source(name="shape", dtype=types.FLOAT, ndim=1)
                rsize = fn.external_source(name="rsize", dtype=types.FLOAT, ndim=1)
                flip = fn.external_source(name="flip", dtype=types.INT32, ndim=0)
                img = fn.slice(img, anchor, shape, axis_names="WH", normalized_anchor=False, normalized_shape=False,
                               out_of_bounds_policy="trim_to_shape")
                img = fn.resize(img, size=rsize, antialias=True)
                img = fn.flip(img, horizontal=flip)
                return fn.crop(img, crop=[h, w], crop_pos_x=0.0, crop_pos_y=0.0, out_of_bounds_policy="pad")
            img = fn.decoders.image(raw, device="mixed", output_type=types.RGB)
            if self.views:
                anchor = fn.external_source(name="anchor", dtype=types.FLOAT, ndim=1)
                shape = fn.external_source(name="shape", dtype=types.FLOAT, ndim=1)
                flip = fn.external_source(name="flip", dtype=types.INT32, ndim=0)
                img = fn.slice(img, anchor, shape, axis_names="WH", normalized_anchor=True, normalized_shape=True,
                               out_of_bounds_policy="trim_to_shape")
                img = fn.resize(img, size=[h, w], antialias=True)
                img = fn.flip(img, horizontal=flip)
            elif self.resize == "crop":
                img = fn.resize(img, size=[h, w], mode="not_smaller", antialias=True)
                img = fn.crop(img, crop=[h, w])
            else:
                img = fn.resize(img, size=[h, w], antialias=True)
            return img

        p = pipe()
        p.build()
        return p

    def _schedule(self, batch: list[np.ndarray], views: np.ndarray | None = None) -> None:
        if self._pipe is None:
            self._pipe = self._build()
        self._pipe.feed_input("raw", batch)
        if self.resizer is not None:  # CPU: the windows are the resizer's, after decoding
            pass
        elif self.resize == "letterbox":
            g = np.asarray(views, dtype=np.float32)
            self._pipe.feed_input("anchor", [np.ascontiguousarray(r[0:2]) for r in g])
            self._pipe.feed_input("shape", [np.ascontiguousarray(r[2:4]) for r in g])
            self._pipe.feed_input("rsize", [np.array([r[5], r[4]], np.float32) for r in g])  # (h, w)
            self._pipe.feed_input("flip", [np.array(int(r[6] >= 0.5), dtype=np.int32) for r in g])
        elif self.views:
            v = np.asarray(views, dtype=np.float32)
            self._pipe.feed_input("anchor", [np.ascontiguousarray(r[0:2]) for r in v])
            self._pipe.feed_input("shape", [np.ascontiguousarray(r[2:4]) for r in v])
            self._pipe.feed_input("flip", [np.array(int(r[4] >= 0.5), dtype=np.int32) for r in v])
        self._pipe.schedule_run()

    def _collect(self):
        """The last scheduled batch: on the GPU, the resized batch (a device-side copy of DALI's buffer,
        which DALI reuses); on the CPU, zero-copy views of the decoded images, which DALI keeps until the
        next ``outputs()`` (so they are resized before the batch after the next one is collected)."""
        import torch

        try:
            (out,) = self._pipe.outputs()
            if self.device_id is not None:
                # a zero-copy view of DALI's GPU buffer through DLPack (no host round trip), copied before the
                # next batch is scheduled
                return torch.from_dlpack(out.as_tensor())
            return [torch.from_numpy(np.asarray(out[i])) for i in range(len(out))]
        except Exception as e:
            self._pipe = None  # DALI marks the pipeline invalid after an error
            raise DecodeFailed(str(e)) from None

    def _isolate(self, batch: list[np.ndarray], views=None) -> tuple[list[np.ndarray | None], dict[int, str]]:
        """Decode one by one after a batch failed; returns per-item images and reasons."""
        images: list[np.ndarray | None] = []
        bad: dict[int, str] = {}
        for i, item in enumerate(batch):
            try:
                self._schedule([item], None if views is None else views[i:i + 1])
                images.append(self._collect()[0].clone())  # DALI reuses the buffer for the next item
            except DecodeFailed:
                images.append(None)
                bad[i] = DECODE_ERROR
        return images, bad

    # -- public -------------------------------------------------------------
    def run(self, batches: Iterable, alloc=None) -> Iterator[tuple[DecodeBatch, "torch.Tensor", dict[int, str]]]:
        """For each batch (a :class:`DecodeBatch`, or a list of encoded images) yield (batch, images, failures).

        ``images`` (uint8 NHWC, a torch tensor) holds the decoded images of the batch in order, without
        the failed ones; ``failures`` maps a failed item's position in the batch to a reason. The next
        batch decodes while the caller works on the current one (DALI runs asynchronously in its own
        threads, and the CPU resize of batch i runs while DALI decodes batch i+1). ``alloc(n, device)``:
        the (n, H, W, 3) uint8 buffer a batch is written to (the worker's reused buffers); default a new
        tensor.
        """
        def prep(b):
            if b is None:
                return None
            b = DecodeBatch.of(b)
            return b, ([np.frombuffer(x, dtype=np.uint8) for x in b.data], b.windows)

        it = iter(batches)
        pending = prep(next(it, None))
        if pending is None:
            return
        self._schedule(*pending[1])
        while pending is not None:
            batch, current = pending
            try:
                images, bad = self._collect(), {}
                if self.resizer is None:  # GPU: copied out before DALI reuses its buffer for the next batch
                    images = _alloc(alloc, len(images), self.size, images.device).copy_(images)
            except DecodeFailed:
                images = None
            pending = prep(next(it, None))
            if images is None:
                images, bad = self._isolate(*current)
                if self.resizer is None:
                    images = _stack(images, self.size)
            if pending is not None:
                self._schedule(*pending[1])
            if self.resizer is not None:  # CPU: while DALI decodes the next batch
                good = sum(im is not None for im in images)
                images = self.resizer.run(images, current[1], _alloc(alloc, good, self.size, "cpu"))
            yield batch, images, bad
