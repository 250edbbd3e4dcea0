"""Where in its source image a stored sample's pixels come from.

One place for the geometry the worker applies and the owner's side rebuilds: the random-resized-crop window of
a ``--views`` view (:func:`view_window`), the letterbox frame of detection, and the window row the decoder
takes (:func:`decode_geometry`, called by the worker's screening and by the audit's plain images alike). (MI's
display at the plain image's size is its scheme's: ``scheme.definition.plain_geometry``.)
"""

from __future__ import annotations

import math

# the views' transform (--views K > 1): torchvision's RandomResizedCrop defaults and a horizontal flip; the job
# records it (plan.JobConfig) and the worker draws each view's window from it here
VIEW_TRANSFORM = {"random_resized_crop": {"scale": [0.08, 1.0], "ratio": [3 / 4, 4 / 3]}, "hflip": 0.5}


def view_window(u, width: int, height: int) -> tuple[float, float, float, float, float]:
    """RandomResizedCrop's window from five uniform draws, relative to the image (see decoders.VIEW_FIELDS).

    Area fraction uniform in ``scale``, log aspect ratio uniform in ``ratio``;
    a window too large for the image is clipped to it (torchvision retries
    instead; clipping keeps one draw per view, which keeps resume exact).
    """
    rrc = VIEW_TRANSFORM["random_resized_crop"]
    lo, hi = rrc["scale"]
    area = lo + float(u[0]) * (hi - lo)
    lr0, lr1 = math.log(rrc["ratio"][0]), math.log(rrc["ratio"][1])
    r = math.exp(lr0 + float(u[1]) * (lr1 - lr0))
    rw = min(1.0, math.sqrt(area * r * height / width))
    rh = min(1.0, math.sqrt(area / r * width / height))
    return (float(u[2]) * (1 - rw), float(u[3]) * (1 - rh), rw, rh, float(u[4]))


def decode_geometry(resize: str, canvas: tuple[int, int], width: int, height: int, draw=None):
    """(the decoder's window row or None, the letterbox frame or None) of a ``width`` x ``height`` input.

    ``draw``: the view's five uniform draws (``--views``), or None. A letterboxed input has a frame (boxes map
    through it) whose row is the decoder's; a view without letterbox is its window; anything else decodes
    whole (None, None)."""
    if resize == "letterbox":
        from .boxes import letterbox_frame, view_frame

        frame = (view_frame(view_window(draw, width, height), width, height, canvas) if draw is not None
                 else letterbox_frame(width, height, canvas))
        return frame.decoder_row(), frame
    if draw is not None:
        return view_window(draw, width, height), None
    return None, None

