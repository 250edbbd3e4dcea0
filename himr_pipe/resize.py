"""Resize decoded images of any size to the stored geometry: one plan per image, one resampler for all.

Every resize mode comes down to the same three steps on a decoded HWC uint8
image: cut a window of whole pixels, resize it (bilinear, antialiased when
reducing), flip it, and put it at the top-left of its slot in the batch
(padding the rest with black: only ``letterbox`` leaves a rest). :func:`plan`
turns a mode and an image's decoded size (plus the batch's per-sample rows for
``--views`` and ``letterbox``, see ``decoders.VIEW_FIELDS`` and
``decoders.LETTERBOX_FIELDS``) into that window; :func:`resize_into` carries it
out. The CPU path of the DALI decoder and the torchvision and nvImageCodec
decoders use it.

Why not DALI's own resize on the CPU: it measured about 1.6 ms an image of
ImageNet's sizes (500x375 to 224x224) on this project's 2-core machine, twice
its JPEG decode, while torch's uint8 channels-last antialiased bilinear kernel
(SIMD, no float copy of the image) takes about 0.35 ms, window copy included.
Images of hundreds of different sizes need one call each: a call is about
15 us of Python, the rest runs in C++ without the GIL, so the calls of a
batch are spread over the worker's threads (:class:`Resizer`). On a CUDA
tensor the same code runs in float (torch has no uint8 antialiased kernel
on CUDA) in the calling thread; the DALI GPU path resizes inside DALI instead,
as one batched operator.

``crop`` cuts the centred window of the output's aspect ratio (rounded to
whole pixels) and resizes it to the output size: the same picture as
"scale the shorter side to fit, then cut the centre" without resizing
pixels that are cut away.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Plan:
    """Window ``y0, x0, ch, cw`` of the decoded image (whole pixels), resized to ``rh`` x ``rw``, flipped."""

    y0: int
    x0: int
    ch: int
    cw: int
    rh: int
    rw: int
    flip: bool = False


def plan(mode: str, height: int, width: int, size: tuple[int, int], row=None, views: bool = False) -> Plan:
    """The plan for a decoded image of ``height`` x ``width`` and an output of ``size`` (H, W).

    ``row``: the sample's row of the batch's windows (letterbox: LETTERBOX_FIELDS in pixels of the
    image; ``views``: VIEW_FIELDS relative to the image)."""
    h, w = size
    if mode == "letterbox":
        x0, y0, cw, ch, rw, rh = (int(round(float(v))) for v in row[:6])
        return Plan(y0, x0, ch, cw, rh, rw, float(row[6]) >= 0.5)
    if views:
        from .boxes import pixel_window

        x0, y0, cw, ch = pixel_window(row, width, height)
        return Plan(y0, x0, ch, cw, h, w, float(row[4]) >= 0.5)
    if mode == "crop":
        scale = max(h / height, w / width)
        ch, cw = min(height, max(1, round(h / scale))), min(width, max(1, round(w / scale)))
        return Plan((height - ch) // 2, (width - cw) // 2, ch, cw, h, w)
    return Plan(0, 0, height, width, h, w)  # stretch


def resize_into(img: torch.Tensor, p: Plan, out: torch.Tensor) -> None:
    """Carry out plan ``p`` on the HWC uint8 image ``img``, writing the (H, W, 3) slot ``out``."""
    x = img[p.y0:p.y0 + p.ch, p.x0:p.x0 + p.cw]
    if (p.rh, p.rw) != (p.ch, p.cw):
        t = x.permute(2, 0, 1)[None]
        if t.is_cuda:
            t = F.interpolate(t.float(), size=(p.rh, p.rw), mode="bilinear", antialias=True, align_corners=False)
            t = t.round_().clamp_(0, 255).to(torch.uint8)
        else:  # uint8 channels-last: torch's SIMD kernel, no float copy
            t = F.interpolate(t.contiguous(memory_format=torch.channels_last), size=(p.rh, p.rw), mode="bilinear",
                              antialias=True, align_corners=False)
        x = t[0].permute(1, 2, 0)
    if p.flip:
        x = x.flip(1)
    out[:p.rh, :p.rw] = x
    if (p.rh, p.rw) != tuple(out.shape[:2]):
        out[p.rh:] = 0
        out[:p.rh, p.rw:] = 0


def as_hwc8(img: torch.Tensor) -> torch.Tensor:
    """A decoded HWC image as uint8: 16-bit (some PNGs, from torchvision's decoder) scaled to 8."""
    if img.dtype != torch.uint8:  # 16-bit PNG
        img = (img.to(torch.int32) >> 8).to(torch.uint8)
    return img


class Resizer:
    """Resize a batch's decoded images (any sizes) into a batch buffer, the calls spread over threads."""

    def __init__(self, size: tuple[int, int], mode: str, views: bool, threads: int):
        from concurrent.futures import ThreadPoolExecutor

        self.size, self.mode, self.views = tuple(size), mode, views
        self.pool = ThreadPoolExecutor(max(1, threads)) if threads > 1 else None

    def run(self, images: list, rows, out: torch.Tensor) -> torch.Tensor:
        """``images``: HWC tensors (or None for a failed one, left out); ``rows``: the batch's
        windows (None unless views or letterbox); ``out``: a (>= n, H, W, 3) uint8 buffer on the images'
        device. Returns ``out[:n]`` for the n good images, in order."""
        jobs = []
        for i, img in enumerate(images):
            if img is not None:
                img = as_hwc8(img)
                p = plan(self.mode, img.shape[0], img.shape[1], self.size, None if rows is None else rows[i],
                         self.views)
                jobs.append((img, p, out[len(jobs)]))
        if self.pool is None or len(jobs) < 2 or out.is_cuda:
            for job in jobs:
                resize_into(*job)
        else:
            for f in [self.pool.submit(resize_into, *job) for job in jobs]:
                f.result()
        return out[:len(jobs)]
