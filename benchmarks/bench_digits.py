"""Training evidence on real data: scikit-learn's digits, encrypted with none / rs / mi, trained on the CPU.

What it does, in one run (under 15 minutes on a 2-core machine):

1. turns sklearn's 1797 labelled 8x8 digits into ImageNet-style folders,
   upscaled to 32x32 RGB PNGs, with a stratified 80/20 train/validation split;
2. encrypts both splits with ``himr-pipe encrypt-shards`` for each scheme
   (default P = 4: an 8x8 grid of 64 patches, each covering one original
   digit pixel and the bilinear gradients to its neighbours; MI gives 16x16
   images of 2x2 cells; PNG, so nothing is lost to compression);
3. trains the matching tiny model (width 64, depth 4, 4 heads) with the same
   budget for each configuration, and reports held-out top-1:
   none (ViT), rs (PEViT with and without RPE), mi (MI-ViT), each with and
   without the encrypted-domain augmentation, and with ``--defences`` rs with
   each defence (a 1-pixel gap inside every patch; 25% of patches dropped) to
   show its cost;
4. measures, for a ViT-Small step on 224x224 inputs, the loader's rate (the
   streaming loader alone, decoding JPEG shards) against the train step's
   rate (forward + backward + AdamW on a fixed batch): the loader must keep
   up (goal: loader >= 1.5x the step).

Run:  python benchmarks/bench_digits.py [--epochs 30] [--patch 4] [--defences] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_digits(root: Path, size: int = 32, seed: int = 0, split: bool = True) -> dict:
    """sklearn's digits as ImageNet-style folders of size x size RGB PNGs: ``root/train`` and ``root/val``
    (a stratified 80/20 split), or with ``split=False`` all of them in ``root`` (for a caller that draws
    its own split, as ``himr-pipe tradeoff`` does)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    imgs = (d.images / 16.0 * 255).round().astype(np.uint8)
    if split:
        idx_tr, idx_va = train_test_split(np.arange(len(imgs)), test_size=0.2, stratify=d.target, random_state=seed)
        parts = (("train", idx_tr), ("val", idx_va))
    else:
        parts = (("", np.arange(len(imgs))),)
    for part, idx in parts:
        for i in idx:
            cls_dir = root / part / f"digit{d.target[i]}"
            cls_dir.mkdir(parents=True, exist_ok=True)
            im = Image.fromarray(imgs[i]).resize((size, size), Image.BILINEAR).convert("RGB")
            im.save(cls_dir / f"{i:05d}.png")
    return {(part or "all"): len(idx) for part, idx in parts}


def encrypt(src: Path, out: Path, scheme: str, seed: int, patch: int, defence: tuple = (0, 0.0), size: int = 32) -> None:
    from click.testing import CliRunner

    from himr_pipe.cli import main

    r = CliRunner().invoke(main, ["encrypt-shards", str(src), str(out), "--scheme", scheme, "--patch", str(patch), "--gap", str(defence[0]), "--drop", str(defence[1]),
                                  "--size", str(size), "--format", "png", "--seed", str(seed), "--shard-size", "200",
                                  "--workers", "0", "--no-progress", "--no-audit", "--state-dir", str(out) + ".state"])
    if r.exit_code != 0:
        raise SystemExit(f"encrypt-shards failed: {r.output}")


def run_training(train_dir: Path, val_dir: Path, out: Path, epochs: int, rpe: bool, aug: bool, seed: int) -> dict:
    from himr_pipe.train.trainer import TrainConfig, train

    cfg = TrainConfig(shards=str(train_dir), val=str(val_dir), out=str(out), embed_dim=64, depth=4, num_heads=4,
                      rpe=rpe, epochs=epochs, batch_size=64, lr=2e-3, warmup_epochs=2, weight_decay=0.05,
                      drop_path=0.0, label_smoothing=0.1, augment=aug, workers=0, seed=seed, device="cpu",
                      # digits are not mirror-symmetric (a flipped 2 is no 2): every flip is off; the rest of
                      # the encrypted-domain augmentation keeps its defaults
                      aug_config={"hflip": 0.0},
                      log_interval=0, eval_every=max(1, epochs // 4))
    t = time.perf_counter()
    res = train(cfg, log=lambda s: None)
    h = res["history"]
    return {"val_top1": h[-1]["val_top1"], "best_val_top1": max(r.get("val_top1", 0) for r in h),
            "train_loss": h[-1]["train_loss"], "seconds": time.perf_counter() - t}


def loader_vs_step(work: Path, seconds: float = 20.0) -> dict:
    """ViT-Small at 224: the streaming loader alone against the training step alone (CPU)."""
    import torch
    from timm.optim import create_optimizer_v2

    from himr_pipe.sample_data import make_sample_folder
    from himr_pipe.scheme import Scheme
    from himr_pipe.train.loader import train_loader
    from himr_pipe.train.models import build_model

    src, out = work / "photos", work / "photos_rs"
    make_sample_folder(src, per_class=40, seed=5)
    from click.testing import CliRunner

    from himr_pipe.cli import main

    r = CliRunner().invoke(main, ["encrypt-shards", str(src), str(out), "--scheme", "rs", "--shard-size", "60",
                                  "--no-progress", "--no-audit", "--state-dir", str(out) + ".state"])
    assert r.exit_code == 0, r.output
    batch = 16
    n, t = 0, time.perf_counter()
    for _ in range(3):
        for imgs, _ in train_loader(str(out), batch, epoch=0, workers=2):
            n += len(imgs)
    loader_rate = n / (time.perf_counter() - t)
    model = build_model(Scheme("rs", 16, 224, 224), 6, size="small")
    opt = create_optimizer_v2(model, "adamw", lr=1e-4, weight_decay=0.05)
    x = torch.randn(batch, 3, 224, 224)
    y = torch.randint(0, 6, (batch,))
    steps, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds or steps < 2:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    step_rate = steps * batch / (time.perf_counter() - t)
    return {"model": "pevit_small (ViT-S/16, 224)", "batch": batch, "loader_img_s": loader_rate,
            "step_img_s": step_rate, "loader_over_step": loader_rate / step_rate,
            "loader": "2 worker processes, JPEG shards, simplejpeg decode", "torch_threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patch", type=int, default=4, help="4: a patch covers one original digit pixel (upscaled "
                    "bilinearly, so it still carries its neighbours' gradients); 8: 2x2 original pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--work", default=None)
    ap.add_argument("--skip-loader", action="store_true")
    ap.add_argument("--defences", action="store_true",
                    help="also train rs with each RS defence (gap 1, drop 0.25) to show its cost (+2.5 min)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="himr-digits-"))
    t0 = time.perf_counter()
    counts = make_digits(work / "digits")
    print(f"digits: {counts} images (32x32 RGB), work folder {work}", flush=True)
    shards = {}
    # the RS defences (their cost in accuracy): a 1-pixel gap inside each 4x4 patch, 25% of patches dropped
    variants = [("none", (0, 0.0)), ("rs", (0, 0.0)), ("mi", (0, 0.0))]
    if args.defences:
        variants += [("rs", (1, 0.0)), ("rs", (0, 0.25))]
    for scheme, defence in variants:
        for split in ("train", "val"):
            out = work / f"{scheme}_{defence[0]}_{defence[1]}_{split}"
            encrypt(work / "digits" / split, out, scheme, seed=args.seed + (split == "val"), patch=args.patch,
                    defence=defence)
            shards[(scheme, defence, split)] = out
    no = (0, 0.0)
    configs = [("none", True, True, no), ("none", True, False, no), ("rs", True, True, no), ("rs", False, True, no),
               ("rs", True, False, no), ("rs", False, False, no), ("mi", True, True, no), ("mi", True, False, no)]
    if args.defences:
        configs += [("rs", False, False, (1, 0.0)), ("rs", False, False, (0, 0.25))]
    results = []
    for scheme, rpe, aug, defence in configs:
        r = run_training(shards[(scheme, defence, "train")], shards[(scheme, defence, "val")],
                         work / f"run_{scheme}_{rpe}_{aug}_{defence[0]}_{defence[1]}", args.epochs, rpe, aug, args.seed)
        model = {"none": "ViT", "rs": "PEViT" + (" + RPE" if rpe else " (no RPE)"), "mi": "MI-ViT"}[scheme]
        if defence != no:
            model += f" gap={defence[0]} drop={defence[1]}"
        r.update(scheme=scheme, model=model, augmentation=aug, gap=defence[0], drop=defence[1])
        results.append(r)
        print(f"  {scheme:4s} {model:30s} aug={'on ' if aug else 'off'} val top-1 {r['val_top1']:.3f} "
              f"(best {r['best_val_top1']:.3f}) in {r['seconds']:.0f} s", flush=True)
    lv = None if args.skip_loader else loader_vs_step(work)
    out = {"epochs": args.epochs, "patch": args.patch, "counts": counts, "results": results, "loader_vs_step_cpu": lv,
           "total_seconds": time.perf_counter() - t0}
    print(f"\n== digits 32x32, P={args.patch}, {args.epochs} epochs, same budget per run, CPU ==")
    print("scheme model             aug   val top-1  (best)")
    for r in results:
        print(f"{r['scheme']:6s} {r['model']:30s} {'on ' if r['augmentation'] else 'off'}   "
              f"{r['val_top1']:.3f}    ({r['best_val_top1']:.3f})")
    if lv:
        print(f"ViT-S step on the CPU: loader {lv['loader_img_s']:.0f} img/s vs step {lv['step_img_s']:.1f} img/s "
              f"-> loader/step {lv['loader_over_step']:.1f}x (goal >= 1.5x)")
    print(f"total {out['total_seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
