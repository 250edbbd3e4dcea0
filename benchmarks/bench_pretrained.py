"""What a pretrained start buys each scheme: fine-tuning on the shapes proxy from scratch, from a public plain
checkpoint, and from a public checkpoint trained on the default scheme's encryption.

What it does, in one run (every step cached in ``--work``: a rerun reuses every finished pretraining and run):

1. **the public set** (:func:`himr_pipe.sample_data.make_public_classification`): six other shape classes
   (pentagon, hexagon, star, cross, ellipse, L) on ten other photos (scikit-learn's two sample photos and
   scikit-image's images that the proxy does not use): nothing of the proxy's classes or photos. 1000 images a
   class at 128 px, 80/20 split, JPEG q90.
2. **two public checkpoints**, the recipe's model (width 96, depth 4, 4 heads) trained ``--pre-epochs`` on it
   with ``himr-pipe train``'s own trainer: ``plain`` (scheme ``none``: a user's public ViT checkpoint, the
   layout of timm's ``vit_*``) and ``encrypted`` (the public set encrypted with the default scheme,
   ``mi-shuffle --flip``, as the paper pretrains on encrypted ImageNet).
3. **fine-tuning** on the shapes proxy (:mod:`himr_pipe.tradeoff`'s code and recipe, the from-scratch table's
   budget: 15 epochs, lr 1e-3) for each data draw (``--draws``: the proxy's seed, which draws its images, its
   split and its encryption keys), each setting and each start:

   - ``none`` and the default (``mi-shuffle flip``): 2 training seeds per draw and start;
   - ``rs`` and ``mi``: 1 seed;
   - starts: ``scratch``, ``plain`` (``--init`` the plain checkpoint, adapted per scheme by
     :mod:`himr_pipe.train.pretrained`), and ``encrypted`` for the default only;
   - the converged baseline: ``none`` from scratch for ``--long-epochs`` (3x the budget) at each draw of
     ``--long-draws``, after all the rest, to say whether the 15-epoch baseline had converged (a cost against an
     under-trained baseline is no cost).

4. prints, per start, each setting's mean top-1 over draws (with the spread over draws), and its **cost**
   (``none`` - setting, the same start, draw by draw), and writes everything to ``--json``.

Runs go side by side, one per core (``--jobs``), one thread each. About 3 minutes a run at 128 px on one core.

Run:  python benchmarks/bench_pretrained.py --work /tmp/bench_pretrained --json benchmarks/results/pretrained.json
      [--draws 0,5,9] [--jobs 2] [--pre-epochs 30] [--long-epochs 45] [--long-draws 0,5,9]
      [--only scratch,plain,encrypted] [--settings none,rs,mi,default]
      [--det-backbones]   (also pretrain the 64 px, P=8 backbones that bench_detection.py --init takes)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path

SIZE, PATCH = 128, 16
SETTINGS = {"none": ("none", False), "rs": ("rs", False), "mi": ("mi", False), "default": ("mi-shuffle", True)}
TWO_SEEDS = ("none", "default")


def _scheme(name: str, size: int = SIZE, patch: int = PATCH):
    from himr_pipe.scheme import Scheme

    kind, flip = SETTINGS[name]
    return Scheme.named(kind, patch=patch, height=size, width=size, flip=flip)


def _one_thread():
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _split(src: Path, dest: Path, seed: int) -> None:
    from himr_pipe.tradeoff import draw_sample, list_classes, write_sample

    if not (dest / "train").is_dir():
        by = list_classes(src)
        write_sample(draw_sample(by, sum(len(v) for v in by.values()), seed), dest)


def _encrypt(split: Path, out: Path, scheme, seed: int) -> None:
    from himr_pipe.tradeoff import encrypt

    for part, s in (("train", seed), ("val", seed + 1)):
        if not (out / part / "manifest.json").exists():
            encrypt(split / part, out / part, scheme, "jpeg", 90, s)


def run_job(job: dict) -> dict:
    """One training: {"train", "val", "run", "recipe", "seed", "init"} -> its result."""
    from himr_pipe.tradeoff import Recipe, train_one

    import shutil

    shutil.rmtree(job["run"], ignore_errors=True)  # a run killed half way starts again
    r = train_one(Path(job["train"]), Path(job["val"]), Path(job["run"]), Recipe(**job["recipe"]), job["seed"],
                  device="cpu", init=job.get("init"))
    return {**r, "key": job["key"]}


class Cache:
    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def put(self, key: str, value) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def run_all(jobs: list[dict], cache: Cache, n: int, log) -> None:
    todo = [j for j in jobs if j["key"] not in cache.data]
    if not todo:
        return
    log(f"{len(todo)} runs to do ({len(jobs) - len(todo)} cached), {n} at a time")
    with ProcessPoolExecutor(n, initializer=_one_thread) as ex:
        futs = {ex.submit(run_job, j): j for j in todo}
        for f in as_completed(futs):
            r = f.result()
            cache.put(r.pop("key"), r)
            log(f"  {futs[f]['key']}: top-1 {r['val_top1']:.4f} ({r['seconds']:.0f} s)")


def pretrain_jobs(work: Path, args, recipe, det: bool) -> list[dict]:
    from himr_pipe.sample_data import make_public_classification

    jobs = []
    sizes = [(SIZE, PATCH, recipe)]
    if det:  # the detection bench's geometry and width: 64 px, P=8, width 96, depth 4, 3 heads
        sizes.append((64, 8, replace(recipe, num_heads=3)))
    for size, patch, rec in sizes:
        pub = work / f"public{size}"
        if not pub.is_dir():
            make_public_classification(pub, per_class=args.public_per_class, size=size, seed=100)
        _split(pub, work / f"public{size}_split", 100)
        for name in ("none", "default") if size == SIZE else ("none", "mi"):
            out = work / f"public{size}_{name}"
            _encrypt(work / f"public{size}_split", out, _scheme(name, size, patch), 100)
            jobs.append({"key": f"pretrain/{size}/{name}", "train": str(out / "train"), "val": str(out / "val"),
                         "run": str(work / "runs" / f"pretrain{size}_{name}"),
                         "recipe": asdict(replace(rec, epochs=args.pre_epochs)), "seed": 0})
    return jobs


def finetune_jobs(work: Path, args, recipe, draws, starts, ckpt) -> list[dict]:
    from himr_pipe.sample_data import make_shapes_classification

    jobs = []
    for d in draws:
        src = work / f"shapes_s{d}"
        if not src.is_dir():
            make_shapes_classification(src, per_class=args.per_class, size=SIZE, seed=d)
        _split(src, work / f"shapes_s{d}_split", d)
        for name in args.settings.split(","):
            out = work / f"shapes_s{d}_{name}"
            _encrypt(work / f"shapes_s{d}_split", out, _scheme(name), d)
            seeds = tuple(range(d, d + args.seeds)) if name in TWO_SEEDS else (d,)
            for start in starts:
                if start == "encrypted" and name != "default":
                    continue
                init = None if start == "scratch" else ckpt["none" if start == "plain" else "default"]
                for s in seeds:
                    jobs.append({"key": f"{start}/{d}/{name}/{s}", "train": str(out / "train"),
                                 "val": str(out / "val"), "run": str(work / "runs" / f"{start}_{d}_{name}_{s}"),
                                 "recipe": asdict(recipe), "seed": s, "init": init})
    return jobs


def long_jobs(work: Path, args, recipe, draws) -> list[dict]:
    """``none`` from scratch at ``--long-epochs`` (the draw's second training seed): had the budget's baseline
    converged?"""
    return [{"key": f"long/{d}/none/{d + 1}", "train": str(work / f"shapes_s{d}_none" / "train"),
             "val": str(work / f"shapes_s{d}_none" / "val"), "run": str(work / "runs" / f"long_{d}_none"),
             "recipe": asdict(replace(recipe, epochs=args.long_epochs)), "seed": d + 1} for d in draws]


def summarise(cache: dict, draws, starts) -> dict:
    """{start: {setting: {"per_draw": {d: mean top-1}, "mean", "sd", "cost_per_draw", "cost", "cost_sd"}}}."""
    out = {}
    for start in [*starts, "long"]:
        rows = {}
        for name in SETTINGS:
            per = {}
            for d in draws:
                vals = [v["val_top1"] for k, v in cache.items() if k.startswith(f"{start}/{d}/{name}/")]
                if vals:
                    per[d] = statistics.fmean(vals)
            if per:
                rows[name] = {"per_draw": per, "mean": statistics.fmean(per.values()),
                              "sd": statistics.stdev(per.values()) if len(per) > 1 else 0.0}
        base = rows.get("none", {}).get("per_draw", {})
        for name, r in rows.items():
            costs = {d: base[d] - v for d, v in r["per_draw"].items() if d in base}
            if costs and name != "none":
                r.update(cost_per_draw=costs, cost=statistics.fmean(costs.values()),
                         cost_sd=statistics.stdev(costs.values()) if len(costs) > 1 else 0.0)
        if rows:
            out[start] = rows
    # the default's cost against the plain-start baseline (a practitioner's comparison when the encrypted
    # checkpoint is the one they pretrain)
    if "encrypted" in out and "plain" in out and "default" in out["encrypted"] and "none" in out["plain"]:
        base = out["plain"]["none"]["per_draw"]
        enc = out["encrypted"]["default"]["per_draw"]
        costs = {d: base[d] - enc[d] for d in enc if d in base}
        if costs:
            out["encrypted"]["default"].update(
                cost_vs_plain_none=statistics.fmean(costs.values()),
                cost_vs_plain_none_sd=statistics.stdev(costs.values()) if len(costs) > 1 else 0.0)
    return out


def table(summary: dict, draws) -> str:
    lines = [f"| start | setting | top-1 per draw ({', '.join(map(str, draws))}) | mean ± sd over draws | "
             "cost vs none, same start (mean ± sd) |", "|---|---|---|---|---|"]
    for start, rows in summary.items():
        for name, r in rows.items():
            per = " / ".join(f"{r['per_draw'][d]:.3f}" if d in r["per_draw"] else "-" for d in draws)
            cost = f"{r['cost']:+.3f} ± {r['cost_sd']:.3f}" if "cost" in r else "-"
            if "cost_vs_plain_none" in r:
                cost += f" (vs none from plain: {r['cost_vs_plain_none']:+.3f} ± {r['cost_vs_plain_none_sd']:.3f})"
            label = {"default": "mi-shuffle flip (default)"}.get(name, name)
            lines.append(f"| {start} | {label} | {per} | {r['mean']:.3f} ± {r['sd']:.3f} | {cost} |")
    return "\n".join(lines)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="kept: a rerun reuses every finished step")
    ap.add_argument("--json", default=None)
    ap.add_argument("--draws", default="0,5,9")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--per-class", type=int, default=1000, help="shapes proxy images per class")
    ap.add_argument("--public-per-class", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=2, help="training seeds of none and the default (the others: 1)")
    ap.add_argument("--pre-epochs", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=None, help="fine-tuning budget (default: the recipe's 15)")
    ap.add_argument("--long-epochs", type=int, default=45, help="the converged baseline's epochs (0: none)")
    ap.add_argument("--long-draws", default=None, help="the draws that get the converged baseline (default: all)")
    ap.add_argument("--only", default="scratch,plain,encrypted", help="which starts")
    ap.add_argument("--settings", default=",".join(SETTINGS),
                    help=f"which settings to train (of {', '.join(SETTINGS)}); the table shows every cached one")
    ap.add_argument("--det-backbones", action="store_true",
                    help="also pretrain the detection bench's backbones (64 px, P=8, 3 heads; none and mi)")
    ap.add_argument("--pretrain-only", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="train nothing: the table of what --work holds")
    args = ap.parse_args()

    from himr_pipe.tradeoff import RECIPE

    recipe = RECIPE if args.epochs is None else replace(RECIPE, epochs=args.epochs)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = Cache(work / "results.json")
    draws = [int(x) for x in args.draws.split(",") if x.strip()]
    starts = [x for x in args.only.split(",") if x]
    t0 = time.time()

    def log(s):
        print(f"[{time.time() - t0:6.0f} s] {s}", flush=True)

    pre = pretrain_jobs(work, args, recipe, args.det_backbones)
    if not args.report_only:
        run_all(pre, cache, args.jobs, log)
    ckpt = {j["key"].split("/")[-1]: str(Path(j["run"]) / "checkpoint-last.pt") for j in pre
            if j["key"].startswith(f"pretrain/{SIZE}/")}
    for j in pre:
        if j["key"] in cache.data:
            log(f"{j['key']}: public val top-1 {cache.data[j['key']]['val_top1']:.4f} -> {j['run']}/checkpoint-last.pt")
    if args.pretrain_only:
        return
    for d in draws if not args.report_only else ():  # draw by draw: a stopped run leaves whole draws behind
        run_all(finetune_jobs(work, args, recipe, [d], starts, ckpt), cache, args.jobs, log)
    if args.long_epochs and not args.report_only:
        long_draws = [int(x) for x in args.long_draws.split(",") if x.strip()] if args.long_draws else draws
        run_all(long_jobs(work, args, recipe, long_draws), cache, args.jobs, log)
    summary = summarise(cache.data, draws, starts)
    print(f"\nshapes proxy, {SIZE}x{SIZE}, P={PATCH}, JPEG q90; {recipe.describe()}; public checkpoints: "
          f"{args.pre_epochs} epochs on the public set (pretraining top-1: "
          + ", ".join(f"{k}: {v['val_top1']:.3f}" for k, v in cache.data.items() if k.startswith("pretrain/"))
          + ")\n")
    print(table(summary, draws))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "recipe": asdict(recipe), "summary": summary,
                                               "runs": cache.data, "seconds": time.time() - t0}, indent=1))


if __name__ == "__main__":
    main()
