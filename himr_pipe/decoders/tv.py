"""The torchvision decoder: torchvision's nvJPEG ``decode_jpeg``, batched, then :mod:`himr_pipe.resize`.

torchvision is imported when a batch is decoded, not with this module.
"""

from __future__ import annotations

from .common import _ResizedByUs


class TorchvisionDecoder(_ResizedByUs):
    """The second GPU decoder: torchvision's nvJPEG ``decode_jpeg`` + :mod:`himr_pipe.resize`, same interface.

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
