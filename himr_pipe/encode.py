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
from .errors import Refused

FORMATS = ("jpeg", "png", "raw")
EXTENSIONS = {"jpeg": "jpg", "png": "png", "raw": "npy"}


class FormatError(Refused, ValueError):
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


def choose_format(name: str, scheme: Scheme, quality: int = 90, allow_420: bool = True,
                  only: str | None = None) -> ImageFormat:
    """The output format for ``scheme``, with JPEG settings that keep blocks inside patches.

    ``allow_420=False`` for encoders that write 4:4:4 only (torchvision's nvJPEG); ``only="420"`` for an
    encoder that writes 4:2:0 only (torchvision's CPU ``encode_jpeg``): refused where the scheme needs 4:4:4.
    """
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
    elif cell % 8 == 0 or not scheme.shuffled:
        sub = "444"
    else:
        raise FormatError(
            f"--format jpeg with scheme {scheme.name} needs a stored cell that is a multiple of 8 (got {cell}): "
            "JPEG's 8x8 blocks would mix unrelated patches across their borders; use --format png or raw"
        )
    if sub == "420" and (h % 16 or w % 16 or not allow_420):
        sub = "444"
    if only is not None and sub != only:
        raise FormatError(f"this JPEG encoder writes {only} only, and scheme {scheme.name} at "
                          f"{h}x{w} with a stored cell of {cell} needs {sub}; use --encoder cpu")
    return ImageFormat("jpeg", quality, sub)


# -- batch encoders: the encode stage ----------------------------------------------
ENCODERS = ("auto", "cpu", "torchvision", "nvimgcodec")


class CpuEncoder:
    """Encode a batch on the CPU, in a thread pool where there are threads to spare (simplejpeg and zlib
    release the GIL), else in the calling thread (no hand-off per image).

    ``prepare(i, image)``: a per-image step run just before image ``i`` is encoded, in the thread that
    encodes it, whose result is what gets encoded: the worker's encryption (:class:`himr_pipe.kernels.cpu.ImageKernel`),
    so the encrypted image is encoded while it is still in that core's cache."""

    name = "cpu"

    def __init__(self, fmt: ImageFormat, threads: int):
        from concurrent.futures import ThreadPoolExecutor

        self.fmt = fmt
        self.threads = max(1, threads)
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def encode(self, batch, prepare=None) -> list[bytes]:
        arr = batch.cpu().numpy() if hasattr(batch, "cpu") else batch
        enc = self.fmt.encode
        one = enc if prepare is None else (lambda i: enc(prepare(i, arr[i])))
        items = arr if prepare is None else range(len(arr))
        if self.pool is None or len(arr) < 2:
            return [one(a) for a in items]
        return list(self.pool.map(one, items))


class TorchvisionJpegEncoder:
    """torchvision's ``encode_jpeg``: nvJPEG on CUDA tensors, always 4:4:4; libjpeg on CPU tensors (the
    tests' stand-in), always 4:2:0. The format must say which (:func:`subsampling_of`), so that the job
    record tells the truth.

    torchvision runs nvJPEG on a stream of its own. Known bugs of GPU codecs
    come from reading an input the producing stream has not finished, so the
    batch is synchronised before the call, and the outputs after it, before
    their bytes are copied to the host.
    """

    name = "torchvision"

    def __init__(self, fmt: ImageFormat):
        if fmt.name != "jpeg":
            raise FormatError("the torchvision encoder writes JPEG only")
        self.fmt = fmt

    def encode(self, batch) -> list[bytes]:
        import torch
        from torchvision.io import encode_jpeg

        want = "444" if batch.is_cuda else "420"
        if self.fmt.subsampling != want:
            raise FormatError(f"torchvision's encode_jpeg writes {want} on this device, the job says "
                              f"{self.fmt.subsampling}")
        chw = list(batch.permute(0, 3, 1, 2).contiguous().unbind(0))
        if batch.is_cuda:
            torch.cuda.synchronize(batch.device)
        outs = encode_jpeg(chw, quality=self.fmt.quality)
        if batch.is_cuda:
            torch.cuda.synchronize(batch.device)
        return [o.cpu().numpy().tobytes() for o in outs]


class NvImageCodecEncoder:
    """nvImageCodec's batched JPEG encoder (GPU, or its CPU backend for a CPU batch)."""

    name = "nvimgcodec"

    def __init__(self, fmt: ImageFormat, device: str):
        from nvidia import nvimgcodec

        if fmt.name != "jpeg":
            raise FormatError("the nvimgcodec encoder is used for JPEG only")
        self.fmt = fmt
        self.nv = nvimgcodec
        dev = nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY if device == "cpu" else (
            int(device.split(":")[1]) if ":" in device else 0)
        self.encoder = nvimgcodec.Encoder(device_id=dev)
        css = {"444": nvimgcodec.ChromaSubsampling.CSS_444, "420": nvimgcodec.ChromaSubsampling.CSS_420}
        self.params = nvimgcodec.EncodeParams(quality_type=nvimgcodec.QualityType.QUALITY,
                                              quality_value=float(fmt.quality),
                                              chroma_subsampling=css[fmt.subsampling])

    def encode(self, batch) -> list[bytes]:
        import torch

        if batch.is_cuda:
            stream = torch.cuda.current_stream(batch.device).cuda_stream
            images = [self.nv.as_image(t) for t in batch.unbind(0)]  # zero-copy (CUDA array interface)
            out = self.encoder.encode(images, ".jpg", params=self.params, cuda_stream=stream)
        else:
            out = self.encoder.encode([np.ascontiguousarray(a) for a in batch.numpy()], ".jpg", params=self.params)
        if any(o is None for o in out):
            raise RuntimeError("nvimgcodec failed to encode an image")
        return [bytes(o) for o in out]


def resolve_encoder(name: str, fmt_name: str, device: str) -> str:
    """'auto' -> the encoder a run uses: the CPU pool on the CPU; on a GPU nvimgcodec if installed,
    else torchvision (JPEG); PNG and raw are always encoded on the CPU."""
    if name not in ENCODERS:
        raise FormatError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    if name != "auto":
        if name != "cpu" and fmt_name != "jpeg":
            raise FormatError(f"the {name} encoder writes JPEG only; use --encoder cpu for {fmt_name}")
        return name
    if device == "cpu" or fmt_name != "jpeg":
        return "cpu"
    try:
        from nvidia import nvimgcodec  # noqa: F401

        return "nvimgcodec"
    except ImportError:
        return "torchvision"


def make_encoder(name: str, fmt: ImageFormat, threads: int, device: str):
    if name == "cpu":
        return CpuEncoder(fmt, threads)
    if name == "torchvision":
        return TorchvisionJpegEncoder(fmt)
    if name == "nvimgcodec":
        return NvImageCodecEncoder(fmt, device)
    raise FormatError(f"unknown encoder {name!r}")
