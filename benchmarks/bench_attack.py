"""Old vs new jigsaw attack on RS puzzles made exactly as the product makes them.

Test set: 24 real photos at 224x224 (``make_sample_folder(tmp, per_class=4)``:
6 photo classes x 4 random crops, resized so the shorter side is 224 and
centre-cropped). For every image a permutation ``perm`` is drawn
(``np.random.default_rng(i).permutation(N)``); encrypted slot j holds plain
patch ``perm[j]``. The encrypted image is stored as the product stores it
(JPEG q90, 4:2:0 when the cell is a multiple of 16, else 4:4:4; or PNG), and
both attacks read the stored bytes:

* old: ``himr_pipe.audit.jigsaw.solve`` on the default simplejpeg decode;
* new: ``himr_pipe.audit.solver.solve_stored(seams.load_stored(blob, ext), ...)``.

Scores (``himr_pipe.audit.scores.layout_scores``): direct and neighbour
accuracy over the non-blank pieces (dropped pieces are wildcards).

    python benchmarks/bench_attack.py                      # all settings, 24 images
    python benchmarks/bench_attack.py --settings rs16-jpg,rs16-gap1-jpg --n 8
    python benchmarks/bench_attack.py --json results/attack.json
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from himr_pipe.audit import jigsaw
from himr_pipe.audit.scores import layout_scores
from himr_pipe.audit.seams import load_stored
from himr_pipe.audit.solver import ATTACK_NAME, solve_stored
from himr_pipe.encode import ImageFormat


@dataclass(frozen=True)
class Setting:
    name: str
    patch: int            # RS patch (or MI patch P; the shuffled cell is then P/2)
    fmt: str              # "jpeg" or "png"
    gap: int = 0
    drop: float = 0.0
    mi: bool = False      # MI then shuffle


SETTINGS = {s.name: s for s in [
    Setting("rs16-png", 16, "png"),
    Setting("rs16-jpg", 16, "jpeg"),
    Setting("rs32-jpg", 32, "jpeg"),
    Setting("rs8-png", 8, "png"),
    Setting("rs8-jpg", 8, "jpeg"),
    Setting("rs16-gap1-png", 16, "png", gap=1),
    Setting("rs16-gap1-jpg", 16, "jpeg", gap=1),
    Setting("rs16-gap2-jpg", 16, "jpeg", gap=2),
    Setting("rs16-drop25-jpg", 16, "jpeg", drop=0.25),
    Setting("rs16-gap1-drop25-jpg", 16, "jpeg", gap=1, drop=0.25),
    Setting("mi16-jpg", 16, "jpeg", mi=True),
    Setting("mi16-png", 16, "png", mi=True),
    Setting("mi8-png", 8, "png", mi=True),
    Setting("mi16-gap1-jpg", 16, "jpeg", gap=1, mi=True),
    Setting("mi32-jpg", 32, "jpeg", mi=True),
]}


def load_photos(n: int = 24, size: int = 224) -> list[np.ndarray]:
    """``n`` real photos (6 classes x ceil(n/6) crops), shorter side resized to ``size``, centre-cropped."""
    from himr_pipe.sample_data import make_sample_folder

    per_class = -(-n // 6)
    with tempfile.TemporaryDirectory() as tmp:
        make_sample_folder(tmp, per_class=per_class)
        files = sorted(Path(tmp).rglob("*.jpg"))
        imgs = [prepare(Image.open(f).convert("RGB"), size) for f in files]
    # interleave the classes so that a small --n still covers all of them
    order = sorted(range(len(imgs)), key=lambda k: (k % per_class, k // per_class))
    return [imgs[k] for k in order[:n]]


def prepare(im: Image.Image, size: int = 224) -> np.ndarray:
    """Resize the shorter side to ``size`` (bilinear) and centre-crop ``size`` x ``size``."""
    w, h = im.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    im = im.resize((nw, nh), Image.BILINEAR)
    x, y = (nw - size) // 2, (nh - size) // 2
    return np.asarray(im.crop((x, y, x + size, y + size)), dtype=np.uint8).copy()


@dataclass
class Puzzle:
    blob: bytes
    ext: str
    cell: int
    grid: tuple[int, int]
    gap: int
    truth: np.ndarray     # (gh, gw): slot holding the plain patch of each position
    blank: np.ndarray     # (N,) bool: slots that were dropped (the true wildcards)
    mixed: bool = False   # MI cells (the attacker knows the scheme)


def make_puzzle(img: np.ndarray, st: Setting, seed: int) -> Puzzle:
    """Encrypt ``img`` with the product's own kernels (:func:`himr_pipe.kernels.encrypt`) and store it."""
    import torch

    from himr_pipe.kernels import encrypt
    from himr_pipe.scheme import Scheme

    scheme = Scheme.named("mi-shuffle" if st.mi else "rs", st.patch, img.shape[0], img.shape[1], st.gap, st.drop)
    n = scheme.num_patches
    perm = np.random.default_rng(seed).permutation(n)       # out slot j <- plain cell perm[j]
    out = encrypt(scheme, torch.from_numpy(img[None].copy()), perm[None])[0].numpy()
    blank = np.zeros(n, bool)
    blank[:scheme.dropped] = True                            # the dropped slots: the true wildcards
    cell = scheme.out_cell
    fmt = ImageFormat("jpeg", 90, "420" if cell % 16 == 0 else "444") if st.fmt == "jpeg" else ImageFormat("png")
    return Puzzle(fmt.encode(out), fmt.ext, cell, scheme.grid, st.gap, np.argsort(perm).reshape(scheme.grid), blank,
                  st.mi)


def decode_default(blob: bytes, ext: str) -> np.ndarray:
    """The stored image as a plain reader decodes it (the old attack's input)."""
    if ext == "jpg":
        import simplejpeg

        return simplejpeg.decode_jpeg(blob, colorspace="RGB")
    if ext == "png":
        return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
    return np.load(io.BytesIO(blob))


def old_attack(pz: Puzzle) -> np.ndarray:
    return jigsaw.solve(jigsaw.cut(decode_default(pz.blob, pz.ext), pz.cell), pz.grid)


def new_attack(pz: Puzzle) -> np.ndarray:
    return solve_stored(load_stored(pz.blob, pz.ext), pz.cell, pz.grid, gap=pz.gap, mixed=pz.mixed)


def run_setting(st: Setting, imgs: list[np.ndarray], old: bool = True) -> dict:
    res = {}
    for name, fn in (("old", old_attack), ("new", new_attack)):
        if name == "old" and not old:
            continue
        direct, neigh, secs = [], [], []
        for i, img in enumerate(imgs):
            pz = make_puzzle(img, st, i)
            t = time.perf_counter()
            layout = fn(pz)
            secs.append(time.perf_counter() - t)
            s = layout_scores(layout, pz.truth, pz.blank)
            direct.append(s["direct"])
            neigh.append(s["neighbour"])
        res[name] = {"neighbour": float(np.mean(neigh)), "direct": float(np.mean(direct)),
                     "s_per_image": float(np.mean(secs)),
                     "per_image": {"neighbour": neigh, "direct": direct}}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated: " + ", ".join(SETTINGS))
    ap.add_argument("--n", type=int, default=24, help="number of images (default 24)")
    ap.add_argument("--no-old", action="store_true", help="skip the old solver")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    names = [s.strip() for s in a.settings.split(",") if s.strip()]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    imgs = load_photos(a.n)
    print(f"new attack: {ATTACK_NAME}; {len(imgs)} images", flush=True)
    hdr = (f"{'setting':22s} {'old nbr':>8s} {'old dir':>8s} {'old s':>6s}   "
           f"{'new nbr':>8s} {'new dir':>8s} {'new s':>6s}")
    print(hdr)
    print("-" * len(hdr), flush=True)
    results = {}
    for name in names:
        r = run_setting(SETTINGS[name], imgs, old=not a.no_old)
        results[name] = r
        o = r.get("old", {"neighbour": float("nan"), "direct": float("nan"), "s_per_image": float("nan")})
        n = r["new"]
        print(f"{name:22s} {o['neighbour']:8.3f} {o['direct']:8.3f} {o['s_per_image']:6.2f}   "
              f"{n['neighbour']:8.3f} {n['direct']:8.3f} {n['s_per_image']:6.2f}", flush=True)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"attack": ATTACK_NAME, "n_images": len(imgs), "results": results},
                                           indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
