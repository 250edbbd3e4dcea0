"""Letterbox geometry and boxes: how a stored canvas maps to its original image, exactly.

``--resize letterbox`` (the detection default) keeps the aspect ratio: a
window of the original image (the whole image, or a random view's crop) is
scaled to fit the canvas, flipped if the view says so, placed at the
top-left corner and padded with black to the canvas. No object is cut away
unseen; objects outside a view's window leave with it, counted.

The geometry is computed here, in Python, from the image's header, and the
decoders are told the exact pixel window and resized size (the window's
integer crop, then a resize to ``(rw, rh)``), so a box's place on the canvas
is known exactly, and a prediction maps back to the original frame exactly
(:func:`canvas_to_orig`). A :class:`Frame` is what a detection sample's
``.json`` records of this.

Boxes on the canvas are normalised ``cx, cy, w, h`` (DETR's convention). MI
halves the image, not the relative coordinates, so they are the same on the
stored (MI) image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_BOX_PX = 1.0  # a box narrower or lower than this on the canvas (after clipping) is dropped, as
                  # torchvision's SanitizeBoundingBoxes(min_size=1) does


@dataclass(frozen=True)
class Frame:
    """The map from an original image to its plain canvas (before MI)."""

    window: tuple[int, int, int, int]   # x0, y0, width, height of the crop, in original pixels
    resized: tuple[int, int]            # (rw, rh): the crop's size on the canvas
    flip: bool                          # the resized crop is flipped left-right
    canvas: tuple[int, int]             # (H, W) of the plain canvas
    orig: tuple[int, int]               # (h, w) of the original image

    @property
    def scale(self) -> tuple[float, float]:
        return self.resized[0] / self.window[2], self.resized[1] / self.window[3]

    def to_dict(self) -> dict:
        return {"window": list(self.window), "resized": list(self.resized), "flip": self.flip,
                "canvas": list(self.canvas), "orig_size": list(self.orig)}

    @classmethod
    def from_dict(cls, d: dict) -> "Frame":
        return cls(tuple(d["window"]), tuple(d["resized"]), bool(d["flip"]), tuple(d["canvas"]),
                   tuple(d["orig_size"]))

    def decoder_row(self) -> list[float]:
        """What the decoders take per sample (``DecodeBatch.windows`` in letterbox mode)."""
        x0, y0, cw, ch = self.window
        return [x0, y0, cw, ch, self.resized[0], self.resized[1], float(self.flip)]


def letterbox_frame(width: int, height: int, canvas: tuple[int, int],
                    window: tuple[int, int, int, int] | None = None, flip: bool = False) -> Frame:
    """The frame of an image ``width`` x ``height`` (or of a window of it) fitted into ``canvas`` (H, W)."""
    H, W = canvas
    x0, y0, cw, ch = window if window is not None else (0, 0, width, height)
    s = min(W / cw, H / ch)
    rw, rh = min(W, max(1, round(cw * s))), min(H, max(1, round(ch * s)))
    return Frame((int(x0), int(y0), int(cw), int(ch)), (int(rw), int(rh)), bool(flip), (H, W), (height, width))


def pixel_window(window_rel, width: int, height: int) -> tuple[int, int, int, int]:
    """A view's window (x, y, w, h relative to the image, as :func:`himr_pipe.geometry.view_window` gives it) in
    whole pixels inside the image: x0, y0, width, height (at least one pixel)."""
    x, y, w, h = (float(v) for v in window_rel[:4])
    x0, y0 = min(width - 1, int(round(x * width))), min(height - 1, int(round(y * height)))
    return x0, y0, max(1, min(width - x0, int(round(w * width)))), max(1, min(height - y0, int(round(h * height))))


def view_frame(window_rel, width: int, height: int, canvas: tuple[int, int]) -> Frame:
    """The frame of a random view: its :func:`pixel_window`, flipped when the fifth draw is >= 0.5, letterboxed."""
    return letterbox_frame(width, height, canvas, pixel_window(window_rel, width, height), float(window_rel[4]) >= 0.5)


def boxes_to_canvas(boxes, frame: Frame, min_px: float = MIN_BOX_PX) -> tuple[np.ndarray, np.ndarray]:
    """Original-frame boxes (N, 4) ``x, y, w, h`` -> (normalised ``cx, cy, w, h`` on the canvas (M, 4), the
    indices of the M kept boxes). Boxes are clipped to the window; those left under ``min_px`` canvas pixels
    wide or high are dropped."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0, y0, cw, ch = frame.window
    sx, sy = frame.scale
    H, W = frame.canvas
    bx0 = np.clip(b[:, 0] - x0, 0, cw)
    by0 = np.clip(b[:, 1] - y0, 0, ch)
    bx1 = np.clip(b[:, 0] + b[:, 2] - x0, 0, cw)
    by1 = np.clip(b[:, 1] + b[:, 3] - y0, 0, ch)
    if frame.flip:
        bx0, bx1 = cw - bx1, cw - bx0
    bx0, bx1, by0, by1 = bx0 * sx, bx1 * sx, by0 * sy, by1 * sy
    keep = np.nonzero(((bx1 - bx0) >= min_px) & ((by1 - by0) >= min_px))[0]
    out = np.stack([(bx0 + bx1) / 2 / W, (by0 + by1) / 2 / H, (bx1 - bx0) / W, (by1 - by0) / H], 1)[keep]
    return out.astype(np.float64), keep


def canvas_to_orig(boxes, frame: Frame | dict) -> np.ndarray:
    """Normalised ``cx, cy, w, h`` on the canvas (N, 4) -> ``x, y, w, h`` in original pixels, clipped to the
    window (the inverse of :func:`boxes_to_canvas` for boxes inside the window)."""
    f = frame if isinstance(frame, Frame) else Frame.from_dict(frame)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    H, W = f.canvas
    x0, y0, cw, ch = f.window
    sx, sy = f.scale
    cx0, cx1 = (b[:, 0] - b[:, 2] / 2) * W / sx, (b[:, 0] + b[:, 2] / 2) * W / sx
    cy0, cy1 = (b[:, 1] - b[:, 3] / 2) * H / sy, (b[:, 1] + b[:, 3] / 2) * H / sy
    if f.flip:
        cx0, cx1 = cw - cx1, cw - cx0
    cx0, cx1 = np.clip(cx0, 0, cw) + x0, np.clip(cx1, 0, cw) + x0
    cy0, cy1 = np.clip(cy0, 0, ch) + y0, np.clip(cy1, 0, ch) + y0
    return np.stack([cx0, cy0, cx1 - cx0, cy1 - cy0], 1)
