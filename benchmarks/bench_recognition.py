"""The recognition test per setting: a plain model's top-1 on the attacker's reconstructions.

Trains a small CNN (:mod:`himr_pipe.audit.recognition`) on the shapes proxy's plain images (``himr-pipe
sample-data --task shapes``: 4 classes, one photo-textured shape per image), then for each setting encrypts the
held-out images with the product's kernels, stores them as the product does, attacks the stored bytes with the
audit's attack and shows the model the attacker's picture (MI-like settings: after the MI inverse; flip: turned
to the best-aligned frame). Printed side by side: top-1 on the plain held-out images, on the reconstructions, on
the same cells at random places (what the cells alone tell), chance (1/4), and the audit's neighbour, direct,
pose-free neighbour and side-by-side figures on the same images.

Run:  python benchmarks/bench_recognition.py [--size 96] [--train 100] [--test 10] [--epochs 15]
      [--settings "mi-shuffle P=16 flip jpeg,..."] [--json PATH]
(an editable install of this checkout measures it; from elsewhere, run with PYTHONPATH at its root)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# (label, scheme name, patch, gap, flip, format)
SETTINGS = [
    ("none jpeg", "none", 16, 0, False, "jpeg"),
    ("rs P=16 jpeg", "rs", 16, 0, False, "jpeg"),
    ("rs P=16 gap 1 flip jpeg", "rs", 16, 1, True, "jpeg"),
    ("mi-shuffle P=16 flip jpeg", "mi-shuffle", 16, 0, True, "jpeg"),
    ("mi-shuffle P=16 flip png", "mi-shuffle", 16, 0, True, "png"),
    ("rs P=16 gap 1 flip png", "rs", 16, 1, True, "png"),
    ("rs P=16 gap 2 jpeg", "rs", 16, 2, False, "jpeg"),
    ("mi-shuffle P=16 gap 1 jpeg", "mi-shuffle", 16, 1, False, "jpeg"),
    ("mi-shuffle P=16 gap 1 flip jpeg", "mi-shuffle", 16, 1, True, "jpeg"),
]


def main() -> None:
    import torch

    from himr_pipe.audit.recognition import recognition_row, shapes_set, top1, train_plain
    from himr_pipe.scheme import Scheme

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=96, help="image side (px); the product's default is 224")
    ap.add_argument("--train", type=int, default=100, help="plain training images per class")
    ap.add_argument("--test", type=int, default=10, help="held-out images per class")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--settings", default=None, help="comma list of labels (see SETTINGS) or substrings")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    chosen = SETTINGS
    if a.settings:
        want = [w.strip() for w in a.settings.split(",")]
        chosen = [s for s in SETTINGS if s[0] in want] or [s for s in SETTINGS if any(w in s[0] for w in want)]
    torch.manual_seed(a.seed)
    t = time.perf_counter()
    xtr, ytr, classes = shapes_set(a.train, a.size, [a.seed, 0])
    xte, yte, _ = shapes_set(a.test, a.size, [a.seed, 1])       # held out: another draw of the same proxy
    net = train_plain(xtr, ytr, len(classes), epochs=a.epochs, seed=a.seed)
    train_s = time.perf_counter() - t
    print(f"# {len(xtr)} plain training images, {len(xte)} held out, {a.size} px, {a.epochs} epochs, "
          f"{train_s:.0f} s to draw and train; top-1 on the training images {top1(net, xtr, ytr):.3f}")
    print("| setting | plain top-1 | reconstruction top-1 | cells at random top-1 | chance | neighbour | direct | "
          "pose-free neighbour | side by side | s/img |\n|---|---|---|---|---|---|---|---|---|---|")
    res = {}
    for label, name, patch, gap, flip, fmt in chosen:
        r = recognition_row(net, Scheme.named(name, patch, a.size, a.size, gap, flip=flip), xte, yte, fmt,
                            seed=a.seed, classes=len(classes))
        res[label] = r
        f = {k: (f"{r[k]:.3f}" if k in r else "-") for k in ("neighbour_accuracy", "direct_accuracy",
                                                              "pose_free_neighbour", "proximity")}
        print(f"| {label} | {r['plain_top1']:.3f} | {r['recon_top1']:.3f} | {r['bag_top1']:.3f} | {r['chance']:.3f} | "
              f"{f['neighbour_accuracy']} | {f['direct_accuracy']} | {f['pose_free_neighbour']} | {f['proximity']} | "
              f"{r.get('attack_seconds', 0.0):.2f} |", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "train_seconds": train_s, "rows": res}, indent=1))


if __name__ == "__main__":
    main()
