"""Detection augmentation in the encrypted domain: exact for MI, boxes moved with the pixels.

Offline encryption freezes each image, so train-time augmentation must work on
the stored image. For MI (and ``none``) these operations commute with the
encryption exactly, at the granularity of the MI cell (``P/2`` stored pixels,
``P`` plain pixels):

* a horizontal flip: ``MI(flip(x)) == flip(MI(x))`` (the mean of the four
  sub-patches does not care which is left), boxes ``cx -> 1 - cx``;
* a shift by whole cells with black fill: ``MI(shift_P(x)) == shift_{P/2}(MI(x))``
  (a black patch stays black), boxes shifted, clipped to the canvas, and
  dropped when under ``min_px`` stored pixels wide or high. A crop that keeps
  the canvas size is such a shift; one that changed the size would change the
  model's grid, so it is left to ``--views`` at encryption time;
* a colour jitter (brightness, contrast) per image: MI is linear, so it
  commutes in real numbers, and to within two grey levels of rounding on
  uint8 where no value clips at 0 or 255 (where values clip, MI of the
  clipped plain image differs from the clipped MI image).

Boxes are normalised ``cx, cy, w, h`` on the canvas, as the shards store them.
"""

from __future__ import annotations

import torch


def hflip(img: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, C) image and (n, 4) boxes flipped left-right."""
    b = boxes.clone()
    if len(b):
        b[:, 0] = 1.0 - b[:, 0]
    return img.flip(1), b


def shift(img: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, dx: int, dy: int,
          min_px: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move the image by (dx, dy) pixels (whole cells for exactness), black fill; boxes follow, are clipped to
    the canvas, and are dropped (with their labels) when under ``min_px`` pixels wide or high."""
    h, w = img.shape[:2]
    out = torch.zeros_like(img)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    if abs(dx) < w and abs(dy) < h:
        out[yd, xd] = img[ys, xs]
    if not len(boxes):
        return out, boxes.clone(), labels.clone()
    x0 = ((boxes[:, 0] - boxes[:, 2] / 2) * w + dx).clamp(0, w)
    x1 = ((boxes[:, 0] + boxes[:, 2] / 2) * w + dx).clamp(0, w)
    y0 = ((boxes[:, 1] - boxes[:, 3] / 2) * h + dy).clamp(0, h)
    y1 = ((boxes[:, 1] + boxes[:, 3] / 2) * h + dy).clamp(0, h)
    keep = ((x1 - x0) >= min_px) & ((y1 - y0) >= min_px)
    b = torch.stack([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h], 1)
    return out, b[keep], labels[keep]


def jitter(img: torch.Tensor, brightness: float, contrast: float) -> torch.Tensor:
    """``contrast * (x - mean) + mean + brightness`` per image (uint8 in, uint8 out, rounded and clamped)."""
    x = img.float()
    m = x.mean()
    return ((x - m) * contrast + m + brightness).round_().clamp_(0, 255).to(torch.uint8)


class DetectionAugment:
    """Random flip, shift by whole cells and colour jitter of one stored sample, drawn from ``generator``.

    ``cell``: the stored image's cell (``scheme.out_cell``: P/2 for MI, P for none); shifts are whole cells up
    to ``max_shift`` of the canvas in each direction.
    """

    def __init__(self, cell: int, flip: float = 0.5, max_shift: float = 0.25, brightness: float = 0.1,
                 contrast: float = 0.1):
        self.cell, self.flip, self.max_shift = int(cell), float(flip), float(max_shift)
        self.brightness, self.contrast = float(brightness), float(contrast)

    def __call__(self, img: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator | None = None):
        g = generator
        u = torch.rand(5, generator=g, device=g.device if g is not None else "cpu").tolist()
        if u[0] < self.flip:
            img, boxes = hflip(img, boxes)
        h, w = img.shape[:2]
        cx, cy = int(self.max_shift * w) // self.cell, int(self.max_shift * h) // self.cell
        dx = (round((2 * u[1] - 1) * cx)) * self.cell
        dy = (round((2 * u[2] - 1) * cy)) * self.cell
        if dx or dy:
            img, boxes, labels = shift(img, boxes, labels, dx, dy)
        if self.brightness or self.contrast:
            img = jitter(img, (2 * u[3] - 1) * self.brightness * 255, 1 + (2 * u[4] - 1) * self.contrast)
        return img, boxes, labels
