"""What the decoders share: the header check, the batch and its windows, the resize hand-off, the fallback.

- :func:`inspect_header` reads only the image header (a plain JPEG's markers, else Pillow's parse of the
  header): empty files, non-images, formats the decoders do not take and decompression bombs (too many
  pixels) are rejected here with a reason, before any pixel is decoded;
- :class:`DecodeBatch` is what every decoder's ``run`` takes; its windows follow VIEW_FIELDS (``--views``)
  or LETTERBOX_FIELDS (resize "letterbox");
- :class:`_ResizedByUs` is the part the torchvision and nvImageCodec decoders share: they decode,
  :mod:`himr_pipe.resize` resizes, and an image their batched call did not take goes through
  :func:`_decode_fallback` alone, so a bad sample is skipped (DECODE_ERROR) and the rest of its batch kept. The
  DALI decoder isolates a bad sample its own way (:meth:`.DaliDecoder._isolate`).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

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
    from ..errors import InputError

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

# The decoded pixels one batch may hold (width x height summed over its images): the worker's screening ends a
# batch early rather than pass this, so however large the headers claim their images to be (each under
# --max-pixels), one batch decodes at most max(BATCH_PIXELS, --max-pixels) pixels, 3 bytes each. 48 M pixels is
# four batches of 64 ImageNet-sized photos (500 x 375), so ordinary batches are never split; sixteen headers of
# 9400 x 9400 decode one at a time instead of 4.2 GB at once (docs/operations.md, "Peak memory per worker").
BATCH_PIXELS = 48_000_000

# libjpeg-turbo's words for data that is corrupt rather than of a kind it does not take
_CORRUPT_WORDS = ("corrupt", "premature", "huffman", "truncated", "bogus", "invalid", "bad ")


def check_data(data: bytes, header: Header) -> None:
    """Check an image's coded data, not just its header, before any decoder sees it: InputError with a reason
    where it is corrupt, so that it is skipped under its own sample id, whichever decoder runs (DALI on the CPU
    or a GPU, torchvision, nvImageCodec), and never written as what a lenient decoder made of it.

    - JPEG: libjpeg-turbo in strict mode at 1/8 scale (simplejpeg): every scan is still Huffman-decoded, so a
      file cut short (an end marker appended or not), a run of zeros in the scan or any other warning of
      libjpeg-turbo (a partial scan, a premature end) is an error, at a fraction of a decode's cost
      (benchmarks/RESULTS.md, issue 35);
    - PNG: Pillow's ``verify`` (every chunk's CRC and the chunk structure), which a cut or an overwritten run
      of bytes breaks (a cut WebP fails Pillow's parse of its header already, as corrupt-header; a lossy WebP has
      no checksum: bytes overwritten inside it decode as they are, with every decoder);
    - other formats are left to the decoder (DALI may then print a line of its own; the skip is reported with
      the sample id as DECODE_ERROR)."""
    from ..errors import InputError

    if header.format in ("JPEG", "MPO"):
        import simplejpeg

        try:
            # min_height/min_width 1: the smallest scale libjpeg-turbo offers, 1/8 (min_factor alone scales nothing)
            simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, min_factor=8, min_height=1, min_width=1)
        except (ValueError, RuntimeError) as e:
            why = str(e).strip().rstrip(".") or type(e).__name__
            kind = "corrupt-data" if any(w in why.lower() for w in _CORRUPT_WORDS) else "decode-error"
            raise InputError(f"{kind}: {why[:1].lower()}{why[1:]}") from None
    elif header.format == "PNG":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the limit is inspect_header's
                try:
                    Image.open(io.BytesIO(data)).verify()
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
        except Exception as e:  # noqa: BLE001 - Pillow raises many types on a broken file
            raise InputError(f"corrupt-data: {str(e) or type(e).__name__}") from None


def screen(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Header:
    """:func:`inspect_header`, then :func:`check_data`: what the worker's screening asks of every input."""
    header = inspect_header(data, max_pixels)
    check_data(data, header)
    return header

# The windows of a batch (DecodeBatch.windows): one row per sample, or None where the batch decodes whole
# (resize "crop" or "stretch" without --views). The worker's screening and the audit's plain images both make
# them with geometry.decode_geometry.
#
# --views without letterbox: an (n, 5) array, VIEW_FIELDS, relative to the decoded image (after EXIF
# orientation), as geometry.view_window gives it: the crop's anchor (top-left corner) x, y and its width, height,
# then a horizontal flip when the fifth value is >= 0.5. The crop is resized to the whole output size (so its
# aspect ratio is the view's own, as in RandomResizedCrop), whether resize is "crop" or "stretch";
# himr_pipe.resize rounds it to whole pixels first (boxes.pixel_window), DALI's GPU path slices it as it is.
VIEW_FIELDS = ("anchor_x", "anchor_y", "width", "height", "flip")
# resize "letterbox" (with or without --views): an (n, 7) array in pixels, LETTERBOX_FIELDS
# (boxes.Frame.decoder_row): the crop window x0, y0, width, height of the image as stored (no EXIF orientation:
# the frame of COCO's boxes), the crop's resized width and height, and the flip (>= 0.5: flipped left-right);
# the result sits at the canvas's top-left, padded with black.
LETTERBOX_FIELDS = ("x0", "y0", "width", "height", "resized_width", "resized_height", "flip")


@dataclass
class DecodeBatch:
    """One batch for a decoder: the encoded images, their windows (``--views``: (n, 5), see VIEW_FIELDS;
    resize "letterbox": (n, 7), see LETTERBOX_FIELDS; None otherwise), and the caller's own record of what the
    batch holds (``tag``), handed back with the batch's result so that the caller never keeps a side list in
    step with the decoder."""

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


class _ResizedByUs:
    """A batched decoder whose images :mod:`himr_pipe.resize` resizes (torchvision's and nvImageCodec's): ``_decode``
    gives each image as HWC on the device, or None; a None goes through :func:`_decode_fallback`, and what
    that cannot decode either is skipped as a decode error. With ``device="cpu"`` the same code runs on the
    CPU (the tests' stand-in for the GPU)."""

    def __init__(self, size: tuple[int, int], resize: str = "crop", max_batch: int = 64, device: str = "cuda",
                 views: bool = False, threads: int = 1):
        from ..resize import Resizer

        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}")
        self.size, self.resize, self.max_batch, self.device, self.views = tuple(size), resize, max_batch, device, views
        self.exif = resize != "letterbox"  # letterbox: the stored frame (COCO's boxes know no EXIF orientation)
        self.resizer = Resizer(self.size, resize, views, threads if device == "cpu" else 1)

    def _decode(self, data: list) -> list:
        raise NotImplementedError

    def run(self, batches: Iterable, alloc=None):
        """As :meth:`.DaliDecoder.run`: yield (batch, images, failures) per batch."""
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
