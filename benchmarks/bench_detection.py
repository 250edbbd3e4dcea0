"""Detection evidence: the same small PEYOLOS trained on none, mi, and an RS control, to COCO AP, over seeds.

What it does, in one run:

1. writes a COCO set with ``--train`` / ``--val`` images: ``--data rects`` (the default) is
   ``himr-pipe sample-data --task detection --kind rects``: red and green rectangles on dark noise, one or
   two per image, in COCO's small and medium buckets; ``--data shapes`` is the bundled photo sample
   (``--kind shapes``: four kinds of shape drawn on photos), harder, and not learned at these budgets;
2. encrypts both splits with ``himr-pipe encrypt-shards`` (the COCO source, letterbox, PNG so nothing is lost to
   compression) with ``--scheme none`` and ``--scheme mi``;
3. builds the **RS control** from the ``none`` shards: every image's PxP patches shuffled per image (the
   product's RS kernel), boxes and the manifest's scheme left as they are, so the positional plain detector
   trains on RS images. encrypt-shards refuses RS for detection; this shows why;
4. trains the same PEYOLOS (``himr-pipe train`` with its detection defaults: the dense one-to-many loss on the
   patch tokens and the sine-cosine start of the patch positions; augmentation off for equal budgets) for
   each scheme and each of ``--seeds`` (the training seed: initialisation and sample order), and prints COCO
   AP, AP50, AP75, AP-S/M/L on the training split (the fit) and on the held-out split, per seed and as the
   mean, with the loader's and the step's img/s from the trainer's own log, and issue 21's goal ratios on
   held-out AP50 (mi / none >= 0.8, rs-control / mi <= 0.5).

Budgets: ``--budget cpu`` (the default: 2000 / 200 images on a 64-pixel canvas, P=8, width 96, depth 4,
20 detection tokens, 5 epochs, seeds 0 and 1; about a quarter of an hour on the 2-core developer machine)
and ``--budget gpu`` (8000 / 500 images on a 128-pixel canvas, P=8, YOLOS-Ti's width 192, depth 12 and 3
heads, 20 epochs). A flag given on the command line overrides the preset. ``--no-dense-aux``,
``--pos-init learn`` and ``--aux-loss`` give the ablations of RESULTS.md.

``--init none=PATH,mi=PATH`` starts those rows from pretrained backbones (``himr-pipe train --init``: the
paper's PEYOLOS recipe, the classifier's patch position embedding resampled to the canvas, detection tokens and
heads new); ``benchmarks/bench_pretrained.py --det-backbones`` pretrains them on the public set.

Run:  python benchmarks/bench_detection.py [--budget cpu|gpu] [--data rects|shapes] [--seeds 0,1]
      [--schemes none,mi,rs-control] [--init none=PATH,mi=PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

BUDGETS = {
    "cpu": dict(train=2000, val=200, size=64, patch=8, epochs=10, batch=16, width=96, depth=4, heads=3,
                det_tokens=20, lr=5e-4, warmup=1.0),
    "gpu": dict(train=8000, val=500, size=128, patch=8, epochs=20, batch=64, width=192, depth=12, heads=3,
                det_tokens=20, lr=5e-4, warmup=1.0),
}
METRICS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")


def run_cli(*args) -> str:
    from click.testing import CliRunner

    from himr_pipe.cli import main

    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if r.exit_code not in (0, 3):
        raise SystemExit(f"himr-pipe {args[0]} failed ({r.exit_code}):\n{r.output}")
    return r.output


def rs_control(src: Path, dst: Path, patch: int, seed: int) -> None:
    """A copy of a ``none`` detection OUT whose images are RS-encrypted (boxes and manifest scheme unchanged)."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from himr_pipe.kernels import encrypt, make_permutations
    from himr_pipe.manifest import Manifest, build_timm_info
    from himr_pipe.scheme import Scheme
    from himr_pipe.shards import ShardWriter, decode_image, iter_shard
    from himr_pipe.storage import Location

    shutil.copytree(src, dst)
    man = Manifest.load(str(dst))
    h, w = man.scheme.out_size
    rs = Scheme("rs", patch, h, w)
    rng = np.random.default_rng(seed)
    for rec in man.shards:
        samples = list(iter_shard(str(src), rec["name"]))
        writer = ShardWriter(str(dst), rec["name"])
        for key, mem in samples:
            img = torch.from_numpy(decode_image(mem["png"], "png"))[None]
            perm = make_permutations(torch.from_numpy(rng.integers(0, 2**62, (1, rs.num_patches))))
            out = encrypt(rs, img, perm, impl="torch")[0].numpy()
            buf = io.BytesIO()
            Image.fromarray(out).save(buf, "PNG", compress_level=1)
            writer.add(key, {"png": buf.getvalue(), "json": mem["json"]})
        info = writer.commit()
        writer.publish()
        rec.update(bytes=info.bytes, sha256=info.sha256)
    Location(str(dst)).write_json("manifest.json", man.data)
    Location(str(dst)).write_json("_info.json", build_timm_info(man.job["split"], man.shards))


def validate(run: Path, val_out: Path) -> dict:
    """COCO AP of a run's final checkpoint on a validation OUT (the trainer's own evaluation)."""
    import torch

    from himr_pipe.train.loader import manifest_scheme, read_manifest
    from himr_pipe.train.peyolos import build_detector
    from himr_pipe.train.tasks import evaluate_detection
    from himr_pipe.train.trainer import MEAN, STD

    ck = torch.load(run / "checkpoint-last.pt", map_location="cpu", weights_only=False)
    c = ck["config"]
    m = read_manifest(str(val_out))
    model = build_detector(manifest_scheme(m), ck["num_classes"], size=c["model"], det_tokens=c["det_tokens"],
                           embed_dim=c["embed_dim"], depth=c["depth"], num_heads=c["num_heads"])
    model.load_state_dict(ck["model"])
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return evaluate_detection(model, str(val_out), 16, 0, torch.device("cpu"), mean, std,
                              [x["id"] for x in m["detection"]["categories"]])


def log_of(run: Path) -> dict:
    return json.loads((run / "log.jsonl").read_text().splitlines()[-1])


def mean_of(runs: list[dict], split: str) -> dict:
    return {k: statistics.fmean(r[split][k] for r in runs) for k in METRICS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    ap.add_argument("--data", choices=["rects", "shapes"], default="rects")
    for k, t in (("train", int), ("val", int), ("size", int), ("patch", int), ("epochs", int), ("batch", int),
                 ("width", int), ("depth", int), ("heads", int), ("det-tokens", int), ("lr", float),
                 ("warmup", float)):
        ap.add_argument(f"--{k}", type=t, default=None, help="default: the budget's")
    ap.add_argument("--seeds", default="0,1", help="training seeds (comma-separated)")
    ap.add_argument("--data-seed", type=int, default=0, help="sample-data's --seed")
    ap.add_argument("--decoder", default="dali", help="encrypt-shards' decoder (torchvision where DALI is absent)")
    ap.add_argument("--aux-loss", action="store_true", help="train with --aux-loss (DETR's auxiliary set losses)")
    ap.add_argument("--no-dense-aux", action="store_true", help="train with --no-dense-aux (the ablation)")
    ap.add_argument("--pos-init", choices=["sincos", "learn"], default="sincos")
    ap.add_argument("--schemes", default="none,mi,rs-control", help="which rows to train (comma-separated)")
    ap.add_argument("--init", default="",
                    help="start each scheme's runs from a checkpoint: SCHEME=PATH[,SCHEME=PATH] (himr-pipe train --init; "
                         "bench_pretrained.py --det-backbones makes them)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="CPU: training runs side by side (default: one per core); a GPU runs one at a time")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU: threads per training run (default: the cores shared among --jobs)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    for k, v in BUDGETS[args.budget].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    seeds = [int(x) for x in args.seeds.split(",")]
    schemes = args.schemes.split(",")
    inits = dict(x.split("=", 1) for x in args.init.split(",") if x.strip())

    work = Path(tempfile.mkdtemp(prefix="bench_detection_"))
    t0 = time.time()
    rows = {}
    try:
        run_cli("sample-data", work / "coco", "--task", "detection", "--kind", args.data, "--train-images",
                args.train, "--val-images", args.val, "--seed", args.data_seed)
        outs = {}
        for scheme in ("none", "mi"):
            for split, folder in (("train", "train2017"), ("val", "val2017")):
                out = work / f"{scheme}-{split}"
                run_cli("encrypt-shards", work / "coco" / folder, out, "--scheme", scheme, "--size", args.size,
                        "--patch", args.patch, "--format", "png", "--seed", "1", "--split", split, "--workers", "0",
                        "--decoder", args.decoder,
                        "--no-progress", "--no-audit", "--state-dir", work / f"state-{scheme}-{split}")
                outs[(scheme, split)] = out
        for split in ("train", "val"):
            outs[("rs-control", split)] = work / f"rs-control-{split}"
            rs_control(outs[("none", split)], outs[("rs-control", split)], args.patch, seed=2 if split == "val" else 1)
        print(f"data ready in {time.time() - t0:.0f} s", flush=True)
        jobs = [(scheme, seed) for scheme in schemes for seed in seeds]

        def train_one(job):
            scheme, seed = job
            run = work / f"run-{scheme}-{seed}"
            t = time.time()
            cmd = [sys.executable, "-m", "himr_pipe.cli", "train", outs[(scheme, "train")], "--val",
                   outs[(scheme, "train")], "--out", run, "--epochs", args.epochs, "--batch-size", args.batch,
                   "--embed-dim", args.width, "--depth", args.depth, "--heads", args.heads, "--det-tokens",
                   args.det_tokens, "--lr", args.lr, "--warmup-epochs", args.warmup, "--drop-path", "0", "--no-aug",
                   "--workers", "0", "--log-interval", "0", "--seed", seed, "--eval-every", args.epochs,
                   "--pos-init", args.pos_init, *(("--aux-loss",) if args.aux_loss else ()),
                   *(("--no-dense-aux",) if args.no_dense_aux else ()),
                   *(("--init", inits[scheme]) if scheme in inits else ())]
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            p = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"himr-pipe train failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
            fit = log_of(run)
            r = {"seed": seed, "fit": {k[4:]: v for k, v in fit.items() if k.startswith("val_")},
                 "val": validate(run, outs[(scheme, "val")]),
                 "loader_img_s": fit["loader_img_s"], "step_img_s": fit["step_img_s"],
                 "seconds": time.time() - t}
            print(f"{scheme:11s} seed {seed}  fit AP50 {r['fit']['AP50']:.3f}  val AP50 {r['val']['AP50']:.3f} "
                  f"| loader {r['loader_img_s']:.0f} img/s, step {r['step_img_s']:.0f} img/s, "
                  f"{r['seconds']:.0f} s", flush=True)
            return r

        # A GPU trains one run at a time; on a CPU, --jobs runs side by side with the cores split between them
        # (a small model's step uses two cores poorly: on the 2-core developer machine, two one-thread runs
        # give about 2.6x one two-thread run's img/s).
        gpu = torch.cuda.is_available()
        n_jobs = 1 if gpu else max(1, min(args.jobs or (os.cpu_count() or 1), len(jobs)))
        threads = args.threads or max(1, (os.cpu_count() or 1) // n_jobs)
        torch.set_num_threads(threads)
        args.jobs, args.threads = n_jobs, threads  # recorded in the JSON's args
        with ThreadPoolExecutor(n_jobs) as ex:
            done = dict(zip(jobs, ex.map(train_one, jobs)))
        for scheme in schemes:
            runs = [done[(scheme, seed)] for seed in seeds]
            rows[scheme] = {"fit": mean_of(runs, "fit"), "val": mean_of(runs, "val"), "seeds": runs,
                            "val_AP50_per_seed": [r["val"]["AP50"] for r in runs],
                            "loader_img_s": statistics.fmean(r["loader_img_s"] for r in runs),
                            "step_img_s": statistics.fmean(r["step_img_s"] for r in runs),
                            "seconds": sum(r["seconds"] for r in runs)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    ratios = {}
    if "none" in rows and "mi" in rows:
        ratios["mi/none"] = rows["mi"]["val"]["AP50"] / max(rows["none"]["val"]["AP50"], 1e-9)
    if "mi" in rows and "rs-control" in rows:
        ratios["rs-control/mi"] = rows["rs-control"]["val"]["AP50"] / max(rows["mi"]["val"]["AP50"], 1e-9)
    recipe = ", ".join(x for x in ("dense aux" if not args.no_dense_aux else "no dense aux",
                                   f"pos {args.pos_init}", "aux losses" if args.aux_loss else "") if x)
    res = {"args": vars(args), "device": dev, "rows": rows, "ratios": ratios, "seconds": time.time() - t0}
    print(f"\n== detection ({args.data}, budget {args.budget}), {args.train} train / {args.val} val images, canvas "
          f"{args.size}, P={args.patch}, {args.epochs} epochs, batch {args.batch}, PEYOLOS width {args.width} depth "
          f"{args.depth}, {args.det_tokens} det tokens, {recipe}; mean of seeds {args.seeds}; {dev} ({args.jobs} "
          f"runs at a time, {args.threads} threads each), "
          f"{res['seconds']:.0f} s ==")
    print("scheme      split  AP     AP50   AP75   AP-S   AP-M   AP-L   AP50 per seed    loader/step img/s")
    for k, r in rows.items():
        for split in ("fit", "val"):
            a = r[split]
            per = " ".join(f"{x[split]['AP50']:.3f}" for x in r["seeds"])
            print(f"{k:11s} {split:5s}  {a['AP']:.3f}  {a['AP50']:.3f}  {a['AP75']:.3f}  {a['AP_S']:6.3f} "
                  f"{a['AP_M']:6.3f} {a['AP_L']:6.3f}  {per:15s}  {r['loader_img_s']:.0f}/{r['step_img_s']:.0f}")
    goals = {"mi/none": (">=", 0.8), "rs-control/mi": ("<=", 0.5)}
    for k, v in ratios.items():
        op, g = goals[k]
        ok = v >= g if op == ">=" else v <= g
        print(f"held-out AP50 {k}: {v:.2f} (goal {op} {g}: {'met' if ok else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
