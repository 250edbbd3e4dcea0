"""Decode + resize with NVIDIA DALI, one bad sample skipping only itself.

Two steps:

1. :func:`inspect_header` reads only the image header with Pillow (about
   20 us): empty files, non-images, formats the decoder does not take and
   decompression bombs (too many pixels) are rejected here with a reason,
   before any pixel is decoded.
2. :class:`DaliDecoder` decodes and resizes batches fed through
   ``fn.external_source`` (bytes in), so order, skipping and resume stay in
   our hands. On the GPU (a device id: the ``mixed`` decoder) DALI resizes
   too; on the CPU (``device_id=None``) it decodes only and
   :mod:`.resize` resizes, 4-5x faster than DALI's CPU resize. DALI applies
   the EXIF orientation and converts grayscale, CMYK, palette, RGBA and
   16-bit images to 8-bit RGB.

DALI fails the whole batch when one sample is corrupt and the pipeline
object becomes invalid. The decoder then rebuilds the pipeline (a few ms) and
decodes that batch one sample at a time to find the bad ones; only they are
skipped.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

# Pillow's own bomb guard is replaced by our explicit, configurable limit.
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's default: about 0.25 GiB of RGB
DALI_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "PPM", "TIFF", "WEBP", "JPEG2000"}
RESIZE_MODES = ("crop", "stretch", "letterbox")


@dataclass(frozen=True)
class Header:
    format: str
    width: int
    height: int
    mode: str


_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}


def _plain_jpeg_header(data: bytes) -> tuple[int, int, str] | None:
    """(width, height, mode) of a JPEG whose marker structure is intact up to its first scan, with one
    8-bit baseline, extended or progressive frame header of 1, 3 or 4 components; None for anything
    else, which Pillow then judges.

    This is the header check's job for such a file (its size against the pixel limit, a format the
    decoder takes) in about 4 us, against Pillow's 40-80 us of Python on the reader's share of the GIL
    (Pillow also parses every APP segment and the EXIF). What Pillow would have said about the contents
    of APP segments no longer decides; the decoder does (tests/test_bad_input.py: a file accepted here
    decodes to exactly this size, or is skipped as a decode error)."""
    import struct

    n, i, frame = len(data), 2, None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        (length,) = struct.unpack_from(">H", data, i + 2)
        if length < 2 or i + 2 + length > n:
            return None
        if marker == 0xDA:  # the first scan: the header is complete
            return frame
        if marker in (0x01, 0xD8, 0xD9) or 0xD0 <= marker <= 0xD7:
            return None  # a standalone marker before the scan
        if marker in (0xC0, 0xC1, 0xC2):
            if frame is not None or length < 8:
                return None
            precision, h, w, comps = struct.unpack_from(">BHHB", data, i + 4)
            mode = _JPEG_MODES.get(comps)
            if precision != 8 or h == 0 or w == 0 or mode is None or length != 8 + 3 * comps:
                return None
            frame = (w, h, mode)
        elif 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return None  # lossless, hierarchical or arithmetic-coded frames: Pillow decides
        i += 2 + length
    return None


def inspect_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Header:
    """Check an encoded image from its header alone. Raises InputError with a reason."""
    from .sources import InputError

    if len(data) == 0:
        raise InputError("empty-file: zero bytes")
    fast = _plain_jpeg_header(data) if data[:3] == b"\xff\xd8\xff" else None
    if fast is not None:
        w, h, mode = fast
        if w * h > max_pixels:
            raise InputError(f"too-many-pixels: {w}x{h} exceeds the limit of {max_pixels} pixels")
        return Header("JPEG", w, h, mode)
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


DECODE_ERROR = "decode-error: the decoder rejected the data (corrupt or truncated image)"

# A batch (DecodeBatch) carries its encoded images and, for --views, an (n, 5) array of
# per-sample random views: crop anchor x, y and size w, h relative to the decoded image
# (after EXIF orientation), then a horizontal flip when the fifth value is >= 0.5. The crop is
# resized to the output size (so its aspect ratio is the view's own, as in RandomResizedCrop).
VIEW_FIELDS = ("anchor_x", "anchor_y", "width", "height", "flip")
# With resize "letterbox" every batch carries an (n, 7) array instead, in pixels (boxes.Frame.decoder_row):
# the crop window x0, y0, width, height of the image as stored (no EXIF orientation: the frame of COCO's
# boxes), the crop's resized width and height, and the flip; the result sits at the canvas's top-left,
# padded with black.
LETTERBOX_FIELDS = ("x0", "y0", "width", "height", "resized_width", "resized_height", "flip")


@dataclass
class DecodeBatch:
    """One batch for a decoder: the encoded images, their views' windows (``--views``: (n, 5), see
    VIEW_FIELDS; None otherwise), and the caller's own record of what the batch holds (``tag``), handed
    back with the batch's result so that the caller never keeps a side list in step with the decoder."""

    data: list
    windows: np.ndarray | None = None
    tag: object = None

    @classmethod
    def of(cls, b) -> "DecodeBatch":
        """A DecodeBatch as it is, or a plain list of encoded images as one."""
        return b if isinstance(b, DecodeBatch) else cls(list(b))


class DecodeFailed(Exception):
    pass


def _alloc(alloc, n: int, size: tuple[int, int], device):
    """A (n, H, W, 3) uint8 buffer on ``device``: the caller's (``alloc(n, device)``), else a new one."""
    import torch

    return alloc(n, device) if alloc is not None else torch.empty((n, *size, 3), dtype=torch.uint8, device=device)


def _stack(images: list, size: tuple[int, int]):
    """Stack the decoded images of a batch, leaving out the failed ones (None)."""
    good = [im for im in images if im is not None]
    if good and not isinstance(good[0], np.ndarray):
        import torch

        return torch.stack(good)
    return np.stack(good) if good else np.zeros((0, size[0], size[1], 3), np.uint8)


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
        # On the CPU DALI decodes only and :mod:`.resize` resizes (DALI's CPU resize measured 4-5x slower);
        # on the GPU DALI resizes too, as one batched operator.
        self.resizer = None
        if device_id is None:
            from .resize import Resizer

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


class _ResizedByUs:
    """A batched decoder whose images :mod:`.resize` resizes (torchvision's and nvImageCodec's): ``_decode``
    gives each image as HWC on the device, or None; a None goes through :func:`_decode_fallback`, and what
    that cannot decode either is skipped as a decode error. With ``device="cpu"`` the same code runs on the
    CPU (the tests' stand-in for the GPU)."""

    def __init__(self, size: tuple[int, int], resize: str = "crop", max_batch: int = 64, device: str = "cuda",
                 views: bool = False, threads: int = 1):
        from .resize import Resizer

        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}")
        self.size, self.resize, self.max_batch, self.device, self.views = tuple(size), resize, max_batch, device, views
        self.exif = resize != "letterbox"  # letterbox: the stored frame (COCO's boxes know no EXIF orientation)
        self.resizer = Resizer(self.size, resize, views, threads if device == "cpu" else 1)

    def _decode(self, data: list) -> list:
        raise NotImplementedError

    def run(self, batches: Iterable, alloc=None):
        """As :meth:`DaliDecoder.run`: yield (batch, images, failures) per batch."""
        for item in batches:
            item = DecodeBatch.of(item)
            images = self._decode(item.data)
            bad: dict[int, str] = {}
            for i, data in enumerate(item.data):
                if images[i] is None:
                    try:
                        images[i] = _decode_fallback(data, self.device, self.exif).permute(1, 2, 0)
                    except RuntimeError:
                        bad[i] = DECODE_ERROR
            good = len(images) - len(bad)
            yield item, self.resizer.run(images, item.windows, _alloc(alloc, good, self.size, self.device)), bad


class TorchvisionDecoder(_ResizedByUs):
    """The second GPU decoder: torchvision's nvJPEG ``decode_jpeg`` + :mod:`.resize`, same interface.

    For machines that cannot hold the DALI wheel (the lent GPU machine). JPEGs
    are decoded as one batched nvJPEG call on ``device``; other formats, and
    JPEGs nvJPEG refuses (CMYK, say), go through torchvision's CPU decoder and
    are uploaded. EXIF orientation is applied (not for letterbox). The JPEG
    decoders differ in their pixels, so the decoder is part of the job record.
    """

    def _decode(self, data: list) -> list:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        images: list = [None] * len(data)
        jpegs = [i for i, b in enumerate(data) if b[:2] == b"\xff\xd8"]
        if jpegs:
            try:
                outs = decode_jpeg([torch.frombuffer(bytearray(data[i]), dtype=torch.uint8) for i in jpegs],
                                   mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=self.exif)
                for i, o in zip(jpegs, outs):
                    images[i] = o.permute(1, 2, 0)
            except RuntimeError:
                pass  # one bad file fails the batched call: each then on its own (the fallback)
        return images


class NvImageCodecDecoder(_ResizedByUs):
    """nvImageCodec's batched decoder, then :mod:`.resize`; same interface as the other decoders.

    On a GPU nvImageCodec picks its fastest backend per image (the hardware JPEG decoder where the card
    has one, else nvJPEG's hybrid or GPU decoders); with ``device="cpu"`` its CPU backend runs (the
    tests' stand-in). An image it cannot decode goes through torchvision's CPU decoder, as with the
    torchvision decoder. EXIF orientation is applied (not for letterbox). ``benchmarks/gpu_codecs.py``
    times its backends against torchvision's nvJPEG.
    """

    def __init__(self, size: tuple[int, int], resize: str = "crop", max_batch: int = 64, device: str = "cuda",
                 views: bool = False, threads: int = 1):
        from nvidia import nvimgcodec as nv

        super().__init__(size, resize, max_batch, device, views, threads)
        self.nv = nv
        dev = nv.NVIMGCODEC_DEVICE_CPU_ONLY if device == "cpu" else (int(device.split(":")[1]) if ":" in device else 0)
        self.decoder = nv.Decoder(device_id=dev, max_num_cpu_threads=max(1, threads))
        self.params = nv.DecodeParams(apply_exif_orientation=self.exif, color_spec=nv.ColorSpec.SRGB,
                                      sample_format=nv.SampleFormat.I_RGB)

    def _decode(self, data: list) -> list:
        import torch

        gpu = self.device != "cpu"
        stream = torch.cuda.current_stream().cuda_stream if gpu else 0
        try:
            outs = self.decoder.decode([np.frombuffer(b, np.uint8) for b in data], params=self.params,
                                       cuda_stream=stream)
        except Exception:  # noqa: BLE001 - a batch it cannot take at all: each image then on its own
            return [None] * len(data)
        images = []
        for out in outs:  # zero-copy: DLPack on the GPU (ordered on the decoding stream), numpy on the CPU
            if out is None:
                images.append(None)
            elif out.buffer_kind == self.nv.ImageBufferKind.STRIDED_DEVICE:
                images.append(torch.from_dlpack(out.to_dlpack(stream)))
            else:
                images.append(torch.from_numpy(np.asarray(out)))
        return images


def _decode_fallback(data: bytes, device: str, exif: bool):
    """One image that a batched GPU decoder did not take: nvJPEG alone (JPEG), else torchvision's CPU decoder
    (CMYK JPEG, PNG, ...), uploaded; CHW uint8 (16-bit for some PNGs) on ``device``. RuntimeError if neither
    decodes it. ``exif``: apply the EXIF orientation (not for letterbox: COCO's boxes know none)."""
    import torch
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    t = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if data[:2] == b"\xff\xd8":
        try:
            return decode_jpeg(t, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=exif)
        except RuntimeError:
            pass  # e.g. CMYK: nvJPEG refuses it, the CPU decoder converts it
    return decode_image(t, mode=ImageReadMode.RGB, apply_exif_orientation=exif).to(device)


DECODERS = ("auto", "dali", "torchvision", "nvimgcodec")


def resolve_decoder(name: str) -> str:
    """'auto' -> the decoder a run uses: DALI (a dependency), else, where its wheel could not be installed,
    nvImageCodec if present, else torchvision. Resolved before the job is recorded: decoders differ in pixels."""
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; choose one of {DECODERS}")
    if name != "auto":
        return name
    for candidate, module in (("dali", "nvidia.dali"), ("nvimgcodec", "nvidia.nvimgcodec")):
        try:
            __import__(module)
            return candidate
        except ImportError:
            continue
    return "torchvision"


def make_decoder(name: str, size, resize: str, max_batch: int, threads: int, device: str, views: bool = False):
    """The decode stage by name; ``device`` is "cpu" or "cuda[:N]"; ``views``: batches carry random views."""
    if name == "dali":
        dev_id = None if device == "cpu" else (int(device.split(":")[1]) if ":" in device else 0)
        return DaliDecoder(size, resize, max_batch, threads, dev_id, views)
    if name == "torchvision":
        return TorchvisionDecoder(size, resize, max_batch, device, views, threads)
    if name == "nvimgcodec":
        return NvImageCodecDecoder(size, resize, max_batch, device, views, threads)
    raise ValueError(f"unknown decoder {name!r}; choose one of {DECODERS}")
