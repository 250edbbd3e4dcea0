"""Encoding of encrypted images for the shards: JPEG, PNG or raw uint8.

Every encoder starts from a bare pixel array, so nothing from the source file
(EXIF, ICC profile, comments, XMP) can reach the output.

JPEG and patch borders: JPEG compresses 8x8 DCT blocks, and with 4:2:0 chroma
subsampling 16x16 macroblocks. A block that straddles two unrelated patches
(neighbours only after RS shuffling) mixes them, smears compression error
across the patch border and gives an attacker border information the
shuffle was meant to remove. So:

* 4:2:0 only when the patch cell of the output is a multiple of 16 pixels,
  4:4:4 when it is a multiple of 8;
* for RS with a cell that is not a multiple of 8, JPEG is refused: use PNG or
  raw. (MI keeps patch positions, so neighbouring cells are neighbours in the
  image too and JPEG is allowed with 4:4:4.)
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from .scheme import Scheme

FORMATS = ("jpeg", "png", "raw")
EXTENSIONS = {"jpeg": "jpg", "png": "png", "raw": "npy"}


class FormatError(ValueError):
    pass


@dataclass(frozen=True)
class ImageFormat:
    name: str = "jpeg"
    quality: int = 90
    subsampling: str = "444"   # JPEG chroma subsampling: "444" or "420"
    png_level: int = 1         # zlib level: 1 is 3-5x faster than 6 for ~10% more bytes

    @property
    def ext(self) -> str:
        return EXTENSIONS[self.name]

    def to_dict(self) -> dict:
        d = {"name": self.name, "ext": self.ext}
        if self.name == "jpeg":
            d.update(quality=self.quality, subsampling=self.subsampling)
        elif self.name == "png":
            d.update(compress_level=self.png_level)
        return d

    def encode(self, img: np.ndarray) -> bytes:
        """Encode one HxWx3 uint8 image."""
        if self.name == "jpeg":
            import simplejpeg

            return simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=self.quality,
                                          colorspace="RGB", colorsubsampling=self.subsampling)
        if self.name == "png":
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG", compress_level=self.png_level)
            return buf.getvalue()
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(img), allow_pickle=False)
        return buf.getvalue()


def choose_format(name: str, scheme: Scheme, quality: int = 90) -> ImageFormat:
    """The output format for ``scheme``, with JPEG settings that keep blocks inside patches."""
    if name not in FORMATS:
        raise FormatError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}")
    if name != "jpeg":
        return ImageFormat(name)
    if not 1 <= quality <= 100:
        raise FormatError(f"JPEG quality must be in 1..100, got {quality}")
    cell = scheme.out_cell
    h, w = scheme.out_size
    if cell % 16 == 0:
        sub = "420"
    elif cell % 8 == 0 or scheme.kind != "rs":
        sub = "444"
    else:
        raise FormatError(
            f"--format jpeg with scheme rs needs a patch size that is a multiple of 8 (got {cell}): "
            "JPEG's 8x8 blocks would mix unrelated patches across their borders; use --format png or raw"
        )
    if sub == "420" and (h % 16 or w % 16):
        sub = "444"
    return ImageFormat("jpeg", quality, sub)
