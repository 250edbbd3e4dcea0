"""The nvImageCodec decoder: nvImageCodec's batched decode, then :mod:`himr_pipe.resize`.

nvImageCodec is imported when the decoder is made, not with this module.
"""

from __future__ import annotations

import numpy as np

from .common import _ResizedByUs


class NvImageCodecDecoder(_ResizedByUs):
    """nvImageCodec's batched decoder, then :mod:`himr_pipe.resize`; same interface as the other decoders.

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
