"""Decode + resize with NVIDIA DALI, one bad sample skipping only itself.

Two steps:

1. :func:`inspect_header` reads only the image header with Pillow (about
   20 us): empty files, non-images, formats the decoder does not take and
   decompression bombs (too many pixels) are rejected here with a reason,
   before any pixel is decoded.
2. :class:`DaliDecoder` decodes and resizes batches fed through
   ``fn.external_source`` (bytes in), so order, skipping and resume stay in
   our hands. The same pipeline definition runs on the CPU
   (``device_id=None``) and, with a device id, on the GPU (``mixed``
   decoder). DALI applies the EXIF orientation and converts grayscale, CMYK,
   palette, RGBA and 16-bit images to 8-bit RGB.

DALI fails the whole batch when one sample is corrupt and the pipeline
object becomes invalid. The decoder then rebuilds the pipeline (a few ms) and
decodes that batch one sample at a time to find the bad ones; only they are
skipped.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

# Pillow's own bomb guard is replaced by our explicit, configurable limit.
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's default: about 0.25 GiB of RGB
DALI_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "PPM", "TIFF", "WEBP", "JPEG2000"}
RESIZE_MODES = ("crop", "stretch")


@dataclass(frozen=True)
class Header:
    format: str
    width: int
    height: int
    mode: str


def inspect_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Header:
    """Check an encoded image from its header alone. Raises InputError with a reason."""
    from .sources import InputError

    if len(data) == 0:
        raise InputError("empty-file: zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im = Image.open(io.BytesIO(data))
                fmt, (w, h), mode = im.format, im.size, im.mode
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        raise InputError("not-an-image: the data is not in any known image format") from None
    except Exception as e:  # Pillow raises many types on hostile headers
        raise InputError(f"corrupt-header: {type(e).__name__}") from None
    if fmt not in DALI_FORMATS:
        raise InputError(f"unsupported-format: {fmt}")
    if w <= 0 or h <= 0:
        raise InputError(f"corrupt-header: image size {w}x{h}")
    if w * h > max_pixels:
        raise InputError(f"too-many-pixels: {w}x{h} exceeds the limit of {max_pixels} pixels")
    return Header(fmt, w, h, mode)


class DecodeFailed(Exception):
    pass


class DaliDecoder:
    """Decode and resize batches of encoded images to uint8 NHWC arrays.

    ``resize``: ``crop`` scales the shorter side to fit and cuts the centre
    (aspect kept, the usual choice for classification); ``stretch`` scales
    both sides to the target (nothing cut, aspect changed).
    """

    def __init__(self, size: tuple[int, int], resize: str = "crop", max_batch: int = 64,
                 num_threads: int = 2, device_id: int | None = None):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}")
        self.size = tuple(size)
        self.resize = resize
        self.max_batch = max_batch
        self.num_threads = max(1, num_threads)
        self.device_id = device_id
        self._pipe = None

    # -- pipeline ---------------------------------------------------------
    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        h, w = self.size
        gpu = self.device_id is not None

        @pipeline_def(batch_size=self.max_batch, num_threads=self.num_threads,
                      device_id=self.device_id, prefetch_queue_depth=1)
        def pipe():
            raw = fn.external_source(name="raw", dtype=types.UINT8, ndim=1)
            img = fn.decoders.image(raw, device="mixed" if gpu else "cpu", output_type=types.RGB)
            if self.resize == "crop":
                img = fn.resize(img, size=[h, w], mode="not_smaller", antialias=True)
                img = fn.crop(img, crop=[h, w])
            else:
                img = fn.resize(img, size=[h, w], antialias=True)
            return img

        p = pipe()
        p.build()
        return p

    def _schedule(self, batch: list[np.ndarray]) -> None:
        if self._pipe is None:
            self._pipe = self._build()
        self._pipe.feed_input("raw", batch)
        self._pipe.schedule_run()

    def _collect(self) -> np.ndarray:
        try:
            (out,) = self._pipe.outputs()
            if self.device_id is not None:
                out = out.as_cpu()
            return np.array(out.as_array())  # a copy: DALI reuses its buffers
        except Exception as e:
            self._pipe = None  # DALI marks the pipeline invalid after an error
            raise DecodeFailed(str(e)) from None

    def _isolate(self, batch: list[np.ndarray]) -> tuple[list[np.ndarray | None], dict[int, str]]:
        """Decode one by one after a batch failed; returns per-item images and reasons."""
        images: list[np.ndarray | None] = []
        bad: dict[int, str] = {}
        for i, item in enumerate(batch):
            try:
                self._schedule([item])
                images.append(self._collect()[0])
            except DecodeFailed:
                images.append(None)
                bad[i] = "decode-error: the decoder rejected the data (corrupt or truncated image)"
        return images, bad

    # -- public -------------------------------------------------------------
    def run(self, batches: Iterable[list[bytes]]) -> Iterator[tuple[np.ndarray, dict[int, str]]]:
        """For each batch of encoded images yield (images, failures).

        ``images`` holds the decoded images of the batch in order, without the
        failed ones; ``failures`` maps a failed item's position in the batch
        to a reason. The next batch decodes while the caller works on the
        current one (DALI runs asynchronously in its own threads).
        """
        it = iter(batches)
        pending = next(it, None)
        if pending is None:
            return
        pending = [np.frombuffer(b, dtype=np.uint8) for b in pending]
        self._schedule(pending)
        while pending is not None:
            current = pending
            try:
                result: tuple[np.ndarray, dict[int, str]] | None = (self._collect(), {})
            except DecodeFailed:
                result = None
            nxt = next(it, None)
            pending = None if nxt is None else [np.frombuffer(b, dtype=np.uint8) for b in nxt]
            if result is None:
                images, bad = self._isolate(current)
                good = [im for im in images if im is not None]
                h, w = self.size
                arr = np.stack(good) if good else np.zeros((0, h, w, 3), np.uint8)
                result = (arr, bad)
            if pending is not None:
                self._schedule(pending)
            yield result
