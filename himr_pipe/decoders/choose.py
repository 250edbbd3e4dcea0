"""The decode stage by name: the decoder a run uses (:func:`resolve_decoder`) and making it (:func:`make_decoder`).

Apart from the decoders' shared module, since it imports all three and each of them imports that module.
"""

from __future__ import annotations

from .dali import DaliDecoder
from .nvimgcodec import NvImageCodecDecoder
from .tv import TorchvisionDecoder

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
