"""Classification proxies: one large photo-textured shape per image (the shapes proxy), and a "public"
pretraining set that shares nothing with it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .detection import _shape_outline, render_shape


# A structured classification proxy: one large textured shape per image, on a textured background.
# --------------------------------------------------------------------------------------------------

# Texture sources: every photo scikit-image ships inside its wheel (the ones that need a download, such as
# skin, lily, eagle and kidney, are left out). Grey ones are tinted per draw, so they add colour variety too.
TEXTURE_PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "rocket", "immunohistochemistry", "retina",
                  "stereo_motorcycle", "colorwheel", "camera", "grass", "gravel", "brick", "moon", "coins", "cell")
# The classes are the shapes of the detection sample (``_shape_outline``): they differ by local edge structure
# (90-degree corners, 60-degree corners, curvature, long parallel edges), so a model that sees only a bag of
# patches can still tell them apart, while fill and background textures are drawn independently of the class.
SHAPE_CLASSES = ("bar", "disc", "square", "triangle")


def load_textures() -> list[np.ndarray]:
    """The bundled photos of :data:`TEXTURE_PHOTOS` as HxWx3 uint8 (grey ones replicated to three channels)."""
    import skimage.data as data

    out = []
    for name in TEXTURE_PHOTOS:
        a = getattr(data, name)()
        if isinstance(a, tuple):  # stereo_motorcycle: (left, right, disparity)
            a = a[0]
        a = np.asarray(a)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(a[..., :3].astype(np.uint8)))
    return out


def _texture(tex: np.ndarray, rng: np.random.Generator, size: int, bright: bool) -> np.ndarray:
    """A random square crop of ``tex`` (20-100% of its shorter side, maybe flipped), resized to ``size``,
    tinted, and squeezed into the upper (``bright``) or lower luminance range. The object takes the upper
    range, the background the lower one, so the object's outline is an edge in every patch it crosses,
    whatever the textures, and the silhouette is a first-order signal a small model finds from scratch
    (in a first trial with the polarity drawn at random, smaller objects and lr 2e-3, a tiny ViT trained
    from scratch stayed at chance for 6 epochs; with this draw ``none`` reaches 0.97 in 15)."""
    h, w = tex.shape[:2]
    side = int(min(h, w) * rng.uniform(0.2, 1.0))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = tex[y:y + side, x:x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    a = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR), np.float32)
    a = a * rng.uniform(0.6, 1.0, size=3).astype(np.float32)  # a random tint
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / max(hi - lo, 1.0)  # full contrast, then into one half of the range
    a = a * 115 + (140 if bright else 0)
    return a


def shapes_image(kind: str, rng: np.random.Generator, size: int,
                 textures: list[np.ndarray], outline_of=None) -> tuple[np.ndarray, np.ndarray]:
    """One image of the shapes proxy: (size x size x 3 uint8, the object's boolean mask).

    A ``kind`` shape (:func:`_shape_outline`, then a uniform random rotation) of side about 45-75% of the
    image, at a random position that keeps it whole, filled with a crop of one bundled photo, on a crop of
    another.
    """
    fill_i, bg_i = rng.choice(len(textures), size=2, replace=False)
    background = _texture(textures[int(bg_i)], rng, size, bright=False)
    fill = _texture(textures[int(fill_i)], rng, size, bright=True)
    area = float((size * rng.uniform(0.45, 0.75)) ** 2)
    t = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(t), np.sin(t)
    outline = (outline_of or _shape_outline)(kind, area, rng) @ np.array([[c, s], [-s, c]])
    # shrink what does not fit inside the frame with a 1 px margin (long bars, turned squares), then place it
    extent = float((outline.max(0) - outline.min(0)).max())
    outline = outline * min(1.0, (size - 6) / extent)
    lo, hi = outline.min(0), outline.max(0)
    offset = (int(rng.integers(int(np.ceil(1 - lo[0])), int(np.floor(size - 2 - hi[0])) + 1)),
              int(rng.integers(int(np.ceil(1 - lo[1])), int(np.floor(size - 2 - hi[1])) + 1)))
    mask_im, _ = render_shape(kind, outline, tuple(offset), (size, size))
    mask = np.asarray(mask_im) > 0
    img = np.where(mask[..., None], fill, background)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask


def make_shapes_classification(root: str | os.PathLike, per_class: int = 100, size: int = 128,
                               seed: int | list[int] = 0,
                               fmt: str = "jpeg", quality: int = 90, classes: tuple[str, ...] = SHAPE_CLASSES) -> dict:
    """Write an ImageNet-style folder ``root/<class>/<n>.jpg`` (or ``.png``) of the shapes proxy.

    Why: digits carry everything in 1-pixel seams between patches, the worst case for the gap defences.
    Here every image holds one large object (several P=16 patches wide at 128 px) of one of :data:`SHAPE_CLASSES`,
    with photo texture inside and around it and its outline crossing many patches: the accuracy cost of a
    defence on patches that carry structure. Intra-class variation: scale, position, rotation, fill and
    background (independent of the class). Same arguments, same bytes. ``seed``: an int or a list of ints
    (numpy's ``default_rng`` seeds; ``[seed, 0]`` and ``[seed, 1]`` give independent train and val draws).
    Returns counts.
    """
    if per_class < 1:
        raise ValueError("per_class must be at least 1")
    if fmt not in ("jpeg", "png"):
        raise ValueError("fmt must be jpeg or png")
    bad = [c for c in classes if c not in SHAPE_CLASSES]
    if bad:
        raise ValueError(f"unknown shape class(es) {bad}; choose from {', '.join(SHAPE_CLASSES)}")
    root = Path(root)
    textures = load_textures()
    rng = np.random.default_rng(seed)
    ext = "jpg" if fmt == "jpeg" else "png"
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
    n = 0
    for i in range(per_class):  # classes interleaved, so a smaller per_class gives a prefix of the same draws
        for cls in classes:
            img, _ = shapes_image(cls, rng, size, textures)
            im = Image.fromarray(img)
            path = root / cls / f"{i:05d}.{ext}"
            if fmt == "jpeg":
                im.save(path, quality=quality)
            else:
                im.save(path)
            n += 1
    return {"classes": len(classes), "images": n, "size": size}


# -- a "public" pretraining set that shares nothing with the shapes proxy ------------------------------------
# Other photos (none of TEXTURE_PHOTOS: scikit-learn's two sample photos and scikit-image's other bundled
# images) and other classes (none of SHAPE_CLASSES): what a user's public checkpoint stands for in the
# pretraining benchmark (benchmarks/bench_pretrained.py). A sibling task of the proxy, as ImageNet is of most
# downstream photo sets: the same kind of images, nothing of the proxy's own.
PUBLIC_PHOTOS = ("china", "flower", "clock", "page", "text", "microaneurysms", "horse", "shepp_logan_phantom",
                 "checkerboard", "logo")
PUBLIC_CLASSES = ("pentagon", "hexagon", "star", "cross", "ellipse", "lshape")


def load_public_textures() -> list[np.ndarray]:
    """The photos of :data:`PUBLIC_PHOTOS` as HxWx3 uint8 (grey and binary ones replicated, alpha dropped)."""
    import skimage.data as data
    from sklearn.datasets import load_sample_images

    sk = dict(zip(("china", "flower"), load_sample_images().images))
    out = []
    for name in PUBLIC_PHOTOS:
        a = np.asarray(sk[name] if name in sk else getattr(data, name)())
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        elif a.dtype != np.uint8:
            a = np.clip(np.rint(a * (255.0 / max(float(a.max()), 1e-9))), 0, 255).astype(np.uint8)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(a[..., :3]))
    return out


def _regular(n: int, r: float, phase: float = 0.0) -> np.ndarray:
    t = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def public_outline(kind: str, area: float, rng: np.random.Generator) -> np.ndarray:
    """Vertices (N, 2) of a :data:`PUBLIC_CLASSES` shape of about ``area`` px^2 centred on 0."""
    if kind in ("pentagon", "hexagon"):
        n = 5 if kind == "pentagon" else 6
        r = np.sqrt(2 * area / (n * np.sin(2 * np.pi / n)))
        return _regular(n, r)
    if kind == "star":
        outer = _regular(5, 1.0, -np.pi / 2)
        inner = _regular(5, 0.42, -np.pi / 2 + np.pi / 5)
        pts = np.stack([outer, inner], 1).reshape(-1, 2)
    elif kind == "cross":
        a = rng.uniform(0.25, 0.4)  # arm half-width, arms reach 1
        pts = np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a],
                        [-1, -a], [-a, -a]])
    elif kind == "ellipse":
        e = rng.uniform(1.6, 2.4)
        pts = _regular(32, 1.0) * np.array([e, 1.0])
    elif kind == "lshape":
        a = rng.uniform(0.35, 0.5)
        pts = np.array([[-1, -1], [-1 + 2 * a, -1], [-1 + 2 * a, 1 - 2 * a], [1, 1 - 2 * a], [1, 1], [-1, 1]])
    else:
        raise ValueError(f"unknown public shape {kind!r}")
    x, y = pts[:, 0], pts[:, 1]
    shoelace = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    return pts * np.sqrt(area / shoelace)


def make_public_classification(root: str | os.PathLike, per_class: int = 1000, size: int = 128, seed: int = 100,
                               quality: int = 90) -> dict:
    """Write an ImageNet-style folder of the public pretraining set (:data:`PUBLIC_CLASSES` on
    :data:`PUBLIC_PHOTOS`), drawn as :func:`shapes_image` draws the proxy; JPEG q90. Same arguments, same bytes."""
    if per_class < 1:
        raise ValueError("per_class must be at least 1")
    root = Path(root)
    textures = load_public_textures()
    rng = np.random.default_rng(seed)
    for cls in PUBLIC_CLASSES:
        (root / cls).mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
        for cls in PUBLIC_CLASSES:
            img, _ = shapes_image(cls, rng, size, textures, outline_of=public_outline)
            Image.fromarray(img).save(root / cls / f"{i:05d}.jpg", quality=quality)
    return {"classes": len(PUBLIC_CLASSES), "images": per_class * len(PUBLIC_CLASSES), "size": size}
