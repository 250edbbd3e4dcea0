"""The photo folder sample: an ImageNet-style folder of crops of the photos scikit-image ships."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

# class name -> loader name in skimage.data (colour photos bundled with the wheel)
PHOTOS = {
    "astronaut": "astronaut",
    "cat": "chelsea",
    "coffee": "coffee",
    "galaxy": "hubble_deep_field",
    "rocket": "rocket",
    "tissue": "immunohistochemistry",
}


def load_photos() -> dict[str, np.ndarray]:
    import skimage.data as data

    return {name: np.ascontiguousarray(getattr(data, fn)()[..., :3]) for name, fn in PHOTOS.items()}


def random_view(photo: np.ndarray, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A random crop of ``photo`` (40-100% of its shorter side) resized to ``size`` = (W, H)."""
    h, w = photo.shape[:2]
    tw, th = size
    if rng.random() < 0.2:
        tw, th = th, tw  # some portrait images, as in real datasets
    aspect = tw / th
    scale = rng.uniform(0.4, 1.0)
    ch = int(min(h, w / aspect) * scale)
    cw = int(ch * aspect)
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    crop = photo[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return Image.fromarray(np.ascontiguousarray(crop)).resize((tw, th), Image.BILINEAR)


def imagenet_like_size(rng: np.random.Generator) -> tuple[int, int]:
    """A (W, H) drawn like ImageNet's: 500x375 (its most common size) two times in five, else each side
    uniform in 333..640, so a batch of 64 holds dozens of distinct sizes and both orientations
    (``random_view`` turns a fifth of all images to portrait)."""
    if rng.random() < 0.4:
        return (500, 375)
    return (int(rng.integers(333, 641)), int(rng.integers(333, 641)))


def make_sample_folder(root: str | os.PathLike, per_class: int = 8, size: tuple[int, int] | str = (500, 375),
                       quality: int = 90, seed: int = 0, classes: list[str] | None = None) -> dict:
    """Write ``per_class`` JPEGs for each class under ``root/<class>/``; returns counts.

    ``size``: (W, H) for every image, or ``"imagenet"`` for a size per image from
    :func:`imagenet_like_size` (what a benchmark should run on: per-size work shows there).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    photos = load_photos()
    names = classes or sorted(photos)
    n, sizes = 0, set()
    for cls in names:
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            im = random_view(photos[cls], rng, imagenet_like_size(rng) if size == "imagenet" else size)
            im.save(d / f"{cls}_{i:05d}.jpg", quality=quality)
            sizes.add(im.size)
            n += 1
    return {"classes": len(names), "images": n, "sizes": len(sizes)}


# --------------------------------------------------------------------------------------------------
# COCO-format detection sample: coloured shapes drawn on crops of the same photos.
# --------------------------------------------------------------------------------------------------

# Non-contiguous ids, as in COCO (whose 80 categories use ids 1-90 with gaps).
