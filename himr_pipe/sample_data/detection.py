"""A COCO-format detection sample: shapes drawn on crops of the bundled photos."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .photos import load_photos, random_view


DETECTION_CATEGORIES = {3: "square", 7: "disc", 12: "triangle", 20: "bar"}
_KIND_ID = {name: cid for cid, name in DETECTION_CATEGORIES.items()}
# One solid, saturated colour per kind (far apart in RGB), so a tiny model can tell them apart.
SHAPE_COLOURS = {"square": (230, 25, 25), "disc": (25, 70, 240), "triangle": (250, 215, 0), "bar": (20, 200, 60)}
# COCO's size buckets (by area, px^2): small < 32^2 <= medium <= 96^2 < large.
_AREA_RANGES = {"small": (90, 700), "medium": (1500, 7000), "large": (13000, 45000)}
_ASPECTS = (1.0, 1.25, 4 / 3, 1.5, 16 / 9)
_LICENSES = [
    {"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1,
     "name": "Attribution-NonCommercial-ShareAlike License"},
    {"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"},
    {"url": "http://creativecommons.org/licenses/by-sa/2.0/", "id": 5, "name": "Attribution-ShareAlike License"},
    {"url": "http://flickr.com/commons/usage/", "id": 7, "name": "No known copyright restrictions"},
]


def mask_box(mask) -> tuple[list[int], int]:
    """Tight COCO box ``[x, y, w, h]`` and pixel count of the nonzero pixels of ``mask``.

    ``mask`` is a PIL "L" image or a 2-D array. Coordinates are whole pixels: a
    shape covering columns 10..29 inclusive (PIL's ``rectangle([10, y0, 29, y1])``)
    has x = 10, w = 20. Returns ``([0, 0, 0, 0], 0)`` for an empty mask.
    """
    m = np.asarray(mask) > 0
    if not m.any():
        return [0, 0, 0, 0], 0
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1], int(m.sum())


def mask_to_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (as COCO's own crowd annotations): run lengths over the column-major
    flattened mask, starting with a run of zeros."""
    m = np.asarray(mask, dtype=bool)
    flat = m.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"counts": [int(c) for c in counts], "size": [int(m.shape[0]), int(m.shape[1])]}


def _shape_outline(kind: str, area: float, rng: np.random.Generator) -> np.ndarray:
    """Vertices (N, 2) of a ``kind`` shape of about ``area`` px^2 centred on 0 (the disc: its circle)."""
    if kind == "disc":
        r = np.sqrt(area / np.pi)
        t = np.linspace(0, 2 * np.pi, 33)[:-1]
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if kind == "square":
        s = np.sqrt(area) / 2
        pts = np.array([[-s, -s], [s, -s], [s, s], [-s, s]])
        angle = 0.0 if rng.random() < 0.5 else rng.uniform(0, np.pi / 2)
    elif kind == "triangle":
        s = np.sqrt(4 * area / np.sqrt(3))  # equilateral side
        r = s / np.sqrt(3)
        t = np.array([-np.pi / 2, np.pi / 6, 5 * np.pi / 6])
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
        angle = rng.uniform(0, 2 * np.pi)
    elif kind == "bar":
        aspect = rng.uniform(3.0, 5.0)
        h = np.sqrt(area / aspect) / 2
        w = h * aspect
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]])
        angle = float(rng.choice([0.0, np.pi / 2])) if rng.random() < 0.6 else rng.uniform(0, np.pi)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    c, s_ = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s_], [-s_, c]])


def render_shape(kind: str, outline: np.ndarray, offset: tuple[int, int],
                 size: tuple[int, int]) -> tuple[Image.Image, list[float]]:
    """Draw one shape on an "L" mask of ``size`` = (W, H): 255 where its pixels are.

    ``outline`` (from :func:`_shape_outline`) is moved by ``offset`` and rounded to whole pixels.
    Returns the mask and the COCO polygon (flat ``[x1, y1, x2, y2, ...]``, in COCO's continuous
    coordinates, where PIL pixel ``i`` spans ``[i, i + 1)``, so a vertex on pixel ``i`` is ``i + 0.5``).
    The disc is drawn as a true ellipse; its polygon is a 32-gon approximation.
    """
    mask = Image.new("L", size, 0)
    d = ImageDraw.Draw(mask)
    pts = np.rint(outline + np.asarray(offset, dtype=float)).astype(int)
    if kind == "disc":
        x0, y0 = pts.min(0)
        x1, y1 = pts.max(0)
        d.ellipse([int(x0), int(y0), int(x1), int(y1)], fill=255)
        cx, cy = (x0 + x1) / 2 + 0.5, (y0 + y1) / 2 + 0.5
        rx, ry = (x1 - x0 + 1) / 2, (y1 - y0 + 1) / 2
        t = np.linspace(0, 2 * np.pi, 33)[:-1]
        poly = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)
    else:
        d.polygon([(int(x), int(y)) for x, y in pts], fill=255)
        poly = pts + 0.5
    return mask, [round(float(v), 2) for v in poly.reshape(-1)]


def _place(kind: str, area: float, rng: np.random.Generator, size: tuple[int, int]):
    """An outline of ``kind`` that fits inside ``size`` (1 px margin) and a random offset for it."""
    w, h = size
    for attempt in range(40):
        outline = _shape_outline(kind, area * 0.9 ** max(0, attempt - 8), rng)
        lo, hi = outline.min(0), outline.max(0)
        xs = (int(np.ceil(1 - lo[0])), int(np.floor(w - 2 - hi[0])))
        ys = (int(np.ceil(1 - lo[1])), int(np.floor(h - 2 - hi[1])))
        if xs[0] <= xs[1] and ys[0] <= ys[1]:
            return outline, (int(rng.integers(xs[0], xs[1] + 1)), int(rng.integers(ys[0], ys[1] + 1)))
    raise RuntimeError(f"a {kind} of area {area:.0f} does not fit in {size}")


def _background_size(rng: np.random.Generator) -> tuple[int, int]:
    """(W, H) spread like COCO's images: long side 320-640, common aspects, both orientations."""
    long = int(rng.integers(320, 641))
    short = max(240, int(round(long / float(rng.choice(_ASPECTS)))))
    return (short, long) if rng.random() < 0.35 else (long, short)


class _Canvas:
    """An image with its objects: tracks which object owns each pixel, to bound occlusion."""

    KEEP = 0.75  # every object keeps at least this share of its pixels visible

    def __init__(self, img: Image.Image):
        self.img = img
        self.owner = np.zeros((img.size[1], img.size[0]), dtype=np.int16)  # 0 background, k object k-1
        self.full: list[int] = []  # pixel count of each object as drawn

    def fits(self, m: np.ndarray) -> bool:
        for k, full in enumerate(self.full, 1):
            visible = (self.owner == k)
            if (visible & ~m).sum() < self.KEEP * full:
                return False
        return True

    def add(self, m: np.ndarray, colour: tuple[int, int, int]):
        self.img.paste(colour, mask=Image.fromarray((m * 255).astype(np.uint8)))
        self.full.append(int(m.sum()))
        self.owner[m] = len(self.full)

    def visible(self, k: int) -> np.ndarray:
        return self.owner == k + 1


def _jitter(colour, rng):
    return tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in colour)


def _crowd_cluster(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A mask of small squares (6-10 px) on a jittered grid of 16 px cells, 3-4 rows by 4-6 columns,
    most cells filled: one COCO crowd region (a group too dense to box one by one)."""
    w, h = size
    rows, cols, cell = int(rng.integers(3, 5)), int(rng.integers(4, 7)), 16
    x0, y0 = int(rng.integers(1, w - cols * cell - 1)), int(rng.integers(1, h - rows * cell - 1))
    m = np.zeros((h, w), dtype=bool)
    for r in range(rows):
        for c in range(cols):
            if rng.random() < 0.8:
                s = int(rng.integers(6, 11))
                x = x0 + c * cell + int(rng.integers(0, cell - s + 1))
                y = y0 + r * cell + int(rng.integers(0, cell - s + 1))
                m[y:y + s, x:x + s] = True
    if not m.any():
        m[y0:y0 + 8, x0:x0 + 8] = True
    return m


def make_detection_sample(root: str | os.PathLike, train_images: int = 24, val_images: int = 8,
                          seed: int = 0) -> dict:
    """Write a small COCO-format detection set under ``root``::

        root/train2017/<id:012d>.jpg   root/annotations/instances_train2017.json
        root/val2017/<id:012d>.jpg     root/annotations/instances_val2017.json

    Each image is a random crop of one of the bundled photos (sides 240-640 px, landscape,
    portrait and square; JPEG q90) with 1-4 solid-coloured shapes drawn on it, one category
    per kind: ``DETECTION_CATEGORIES`` = {3: square, 7: disc, 12: triangle, 20: bar}, with
    areas spread over COCO's small, medium and large buckets. Shapes may overlap, but each
    keeps at least 75% of its pixels visible. A box is the tight box of the shape's visible
    pixels and ``area`` their count; ``segmentation`` is the drawn (whole) polygon. One train
    image also carries a cluster of small squares annotated as a single ``iscrowd: 1`` region
    (uncompressed RLE of its visible pixels, as COCO's crowd annotations).
    Image and annotation ids are distinct, non-sequential ints. Same seed, same bytes.
    Returns counts per split.
    """
    import json

    if train_images < 1 or val_images < 0:
        raise ValueError("need train_images >= 1 and val_images >= 0")
    root = Path(root)
    rng = np.random.default_rng(seed)
    photos = load_photos()
    photo_names = sorted(photos)
    kinds = list(_KIND_ID)
    buckets = list(_AREA_RANGES)
    n_total = train_images + val_images
    image_ids = sorted(int(i) for i in rng.choice(np.arange(1, 600_000), size=n_total, replace=False))
    rng.shuffle(image_ids)
    crowd_at = int(rng.integers(train_images))
    next_ann = [int(rng.integers(1000, 5000))]
    categories = [{"supercategory": "shape", "id": cid, "name": name} for cid, name in DETECTION_CATEGORIES.items()]
    info = {"description": "himr-pipe sample detection set: shapes drawn on scikit-image's bundled photos",
            "url": "http://example.org/himr-pipe/sample", "version": "1.0", "year": 2017,
            "contributor": "himr-pipe", "date_created": "2017/09/01"}
    counts: dict = {"categories": len(categories)}
    (root / "annotations").mkdir(parents=True, exist_ok=True)

    def ann_id() -> int:
        next_ann[0] += int(rng.integers(1, 40))
        return next_ann[0]

    for split, n, first in (("train", train_images, 0), ("val", val_images, train_images)):
        folder = f"{split}2017"
        (root / folder).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            img_id = image_ids[first + i]
            gi = first + i  # global index: the first three images force small, medium, large
            size = _background_size(rng)
            img = random_view(photos[photo_names[int(rng.integers(len(photo_names)))]], rng, size)
            size = img.size
            canvas = _Canvas(img)
            objects = []  # (category id, polygon or RLE, iscrowd)
            if split == "train" and i == crowd_at:
                m = _crowd_cluster(rng, size)
                canvas.add(m, _jitter(SHAPE_COLOURS["square"], rng))
                objects.append((_KIND_ID["square"], None, 1))  # RLE of its visible pixels, below
            for j in range(int(rng.integers(1, 5))):
                kind = kinds[int(rng.integers(len(kinds)))]
                bucket = buckets[gi] if (j == 0 and gi < 3) else buckets[int(rng.choice(3, p=[0.35, 0.4, 0.25]))]
                lo, hi = _AREA_RANGES[bucket]
                hi = min(hi, 0.25 * size[0] * size[1])
                for _try in range(30):
                    outline, offset = _place(kind, float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), rng, size)
                    mask, poly = render_shape(kind, outline, offset, size)
                    m = np.asarray(mask) > 0
                    if canvas.fits(m):
                        canvas.add(m, _jitter(SHAPE_COLOURS[kind], rng))
                        objects.append((_KIND_ID[kind], [poly], 0))
                        break
            file_name = f"{img_id:012d}.jpg"
            img.save(root / folder / file_name, quality=90)
            day = int(rng.integers(0, 365 * 3))
            secs = int(rng.integers(0, 86400))
            date = np.datetime64("2011-01-01") + np.timedelta64(day, "D") + np.timedelta64(secs, "s")
            images.append({"license": int(rng.choice([lic["id"] for lic in _LICENSES])), "file_name": file_name,
                           "coco_url": f"http://images.example.org/{folder}/{file_name}",
                           "height": size[1], "width": size[0],
                           "date_captured": str(date).replace("T", " "),
                           "flickr_url": f"http://farm{int(rng.integers(1, 10))}.example.org/{img_id}.jpg",
                           "id": img_id})
            for k, (cid, seg, crowd) in enumerate(objects):
                vis = canvas.visible(k)
                bbox, area = mask_box(vis)
                if crowd:
                    seg = mask_to_rle(vis)
                anns.append({"segmentation": seg, "area": area, "iscrowd": crowd, "image_id": img_id,
                             "bbox": bbox, "category_id": cid, "id": ann_id()})
        doc = {"info": info, "licenses": _LICENSES, "images": images, "annotations": anns, "categories": categories}
        (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(doc))
        counts[f"{split}_images"] = len(images)
        counts[f"{split}_annotations"] = len(anns)
    counts["images"] = counts["train_images"] + counts["val_images"]
    counts["annotations"] = counts["train_annotations"] + counts["val_annotations"]
    return counts


def make_rect_detection(root, images: int = 4, seed: int | Sequence[int] = 0, folder: str = "imgs"):
    """A trivially learnable COCO set: ``images`` pictures (landscape, portrait, square) of dark noise with one
    or two solid rectangles, red (category 3) or green (category 7), with exact boxes; in
    ``root/folder`` and ``root/annotations/instances_{folder}.json``. For smoke tests and the detection
    benchmark, where a tiny detector must learn within a CPU budget; returns the images folder. ``seed`` is
    numpy's (an int or a sequence of ints: ``sample-data --kind rects`` draws split ``k`` with ``[seed, k]``).
    Zero images write an empty split (an images folder and a JSON without images)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    imgs, anns = [], []
    for i in range(images):
        w, h = [(128, 96), (96, 128), (112, 112)][i % 3]
        a = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        for j in range(1 + i % 2):
            bw, bh = int(rng.integers(24, 56)), int(rng.integers(24, 56))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            cat = (3, 7)[(i + j) % 2]
            a[y:y + bh, x:x + bw] = (240, 30, 30) if cat == 3 else (30, 230, 30)
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cat, "bbox": [x, y, bw, bh],
                         "area": bw * bh, "iscrowd": 0})
        Image.fromarray(a).save(root / folder / f"{i:05d}.png")
        imgs.append({"id": 100 + i, "file_name": f"{i:05d}.png", "width": w, "height": h})
    (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(
        {"images": imgs, "annotations": anns, "categories": [{"id": 3, "name": "red"}, {"id": 7, "name": "green"}]}))
    return root / folder


# --------------------------------------------------------------------------------------------------
