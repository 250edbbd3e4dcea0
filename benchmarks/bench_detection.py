"""Detection evidence on the CPU: the same tiny PEYOLOS trained on none, mi, and an RS control, to COCO AP.

What it does, in one run:

1. writes a COCO set with ``--train`` / ``--val`` images: ``--data rects`` (the default) is
   ``sample_data.make_rect_detection``, solid red and green rectangles on dark noise, which a tiny detector
   learns to find in new images within a CPU budget; ``--data shapes`` is the bundled detection sample
   (``himr-pipe sample-data --task detection``: photos with four kinds of shape), on which it only memorises
   at this budget (see RESULTS.md);
2. encrypts both splits with ``himr-pipe encrypt-shards`` (the COCO source, letterbox, PNG so nothing is lost to
   compression) with ``--scheme none`` and ``--scheme mi``;
3. builds the **RS control** from the ``none`` shards: every image's PxP patches shuffled per image (the
   product's RS kernel), boxes and the manifest's scheme left as they are, so the positional plain detector
   trains on RS images. encrypt-shards refuses RS for detection; this shows why;
4. trains the same tiny PEYOLOS (``himr-pipe train``: YOLOS's loss and recipe, augmentation off for equal
   budgets) for each, and prints COCO AP, AP50, AP75, AP-S/M/L on the training split (the fit: what the
   model could learn from each kind of image) and on the validation split, side by side with the loader's and
   the step's img/s from the trainer's own log. DETR-style detectors need hundreds of epochs to generalise;
   at a CPU budget the fit is the informative figure, the validation AP the honest one.

Run:  python benchmarks/bench_detection.py [--data rects|shapes] [--train 96] [--val 32] [--epochs 60]
      [--size 128] [--patch 8]
      [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=["rects", "shapes"], default="rects")
    ap.add_argument("--train", type=int, default=96)
    ap.add_argument("--val", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--size", type=int, default=128, help="canvas side (MI images are half of it)")
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--decoder", default="dali", help="encrypt-shards' decoder (torchvision where DALI is absent)")
    ap.add_argument("--aux-loss", action="store_true", help="train with --aux-loss (DETR's auxiliary set losses)")
    ap.add_argument("--schemes", default="none,mi,rs-control", help="which rows to train (comma-separated)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_detection_"))
    t0 = time.time()
    try:
        from himr_pipe.sample_data import make_detection_sample, make_rect_detection

        if args.data == "rects":
            make_rect_detection(work / "coco", args.train, 0, "train2017")
            make_rect_detection(work / "coco", args.val, 1, "val2017")
        else:
            make_detection_sample(work / "coco", train_images=args.train, val_images=args.val, seed=0)
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
        rows = {}
        for scheme in args.schemes.split(","):
            run = work / f"run-{scheme}"
            t = time.time()
            run_cli("train", outs[(scheme, "train")], "--val", outs[(scheme, "train")], "--out", run,
                    "--epochs", args.epochs, "--batch-size", args.batch, "--embed-dim", "96", "--depth", "4",
                    "--heads", "3", "--det-tokens", "20", "--lr", "5e-4", "--warmup-epochs", "2",
                    "--drop-path", "0", "--no-aug", "--workers", "0", "--log-interval", "0", "--seed", "0",
                    "--eval-every", args.epochs, *(("--aux-loss",) if args.aux_loss else ()))
            fit = log_of(run)
            rows[scheme] = {"fit": {k[4:]: v for k, v in fit.items() if k.startswith("val_")},
                            "val": validate(run, outs[(scheme, "val")]),
                            "loader_img_s": fit["loader_img_s"], "step_img_s": fit["step_img_s"],
                            "seconds": time.time() - t}
            r = rows[scheme]
            print(f"{scheme:11s} fit AP50 {r['fit']['AP50']:.3f}  val AP50 {r['val']['AP50']:.3f} "
                  f"| loader {r['loader_img_s']:.0f} img/s, step {r['step_img_s']:.0f} img/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    res = {"args": vars(args), "device": dev, "rows": rows, "seconds": time.time() - t0}
    print(f"\n== detection ({args.data}), {args.train} train / {args.val} val images, canvas {args.size}, P={args.patch}, "
          f"{args.epochs} epochs, tiny PEYOLOS (width 96, depth 4){', aux losses' if args.aux_loss else ''}, {dev} ==")
    print("scheme      split  AP     AP50   AP75   AP-S   AP-M   AP-L   loader/step img/s")
    for k, r in rows.items():
        for split in ("fit", "val"):
            a = r[split]
            print(f"{k:11s} {split:5s}  {a['AP']:.3f}  {a['AP50']:.3f}  {a['AP75']:.3f}  {a['AP_S']:6.3f} "
                  f"{a['AP_M']:6.3f} {a['AP_L']:6.3f}  {r['loader_img_s']:.0f}/{r['step_img_s']:.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
