"""The privacy/accuracy trade-off: what each setting leaks, next to what it costs on two accuracy proxies.

One command, two halves, one table:

* **leak** (:func:`bench_leak.leak_table`): the product's own shards of 24
  real photos at 224x224, P=16 (the 2P settings at P=32), stored as JPEG q90
  (the default format) and as PNG (lossless), attacked by the audit's
  strongest attack; neighbour and direct accuracy, and for MI-like settings
  the SSIM of the attacker's picture beside the same-information baseline's;
  whether the leak budget is met;
* **accuracy**: ``himr-pipe tradeoff``'s own code (:func:`himr_pipe.tradeoff.run_tradeoff`,
  the same candidates, recipe and training path an owner runs on their data)
  on two proxies:

  - **shapes** (the structured proxy, :func:`himr_pipe.sample_data.make_shapes_classification`):
    one large shape (bar, disc, square, triangle) per 128x128 image, filled
    with a crop of one bundled photo on a crop of another, so every object
    spans many P=16 patches (an 8x8 grid) and its patches carry texture and
    edges of their own. JPEG q90, the product default. mi-shuffle stores
    8-pixel cells at P=16; at 2P (P=32) it stores a 4x4 grid of 16-pixel
    cells: a much coarser bag of pieces, so it is measured only when asked
    (``--settings``);
  - **digits** (the seam-only worst case): scikit-learn's 1797 digits at
    64x64, P=8 (one patch per original digit pixel: everything a patch
    carries is in its 1-pixel seams, which a gap blanks). PNG, as JPEG
    refuses rs/mi-shuffle cells under 8 pixels.

  Every row of a proxy has the same budget (the recipe of
  :data:`himr_pipe.tradeoff.RECIPE`, the same sample and split, the same
  encryption seeds). ``--seeds K`` training seeds for every row, and
  ``--close-seeds K2`` (default 3) for every row whose mean top-1 is within
  0.05 of another row's, so that close settings are told apart by more than
  one training run.

``--accuracy-json`` / ``--leak-json`` reuse saved halves (so the table can be
rebuilt without retraining), ``--no-leak`` skips the leak half, and
``--json`` saves both.

Run:  python benchmarks/bench_tradeoff.py [--proxies shapes,digits] [--settings "none,rs,rs gap 1"]
                                          [--seeds 1] [--close-seeds 3] [--epochs N] [--per-class 1000]
                                          [--json PATH] [--work DIR] [--seed 0] [--photos 24]
                                          [--accuracy-json PATH] [--leak-json PATH] [--no-leak]

On a 2-core CPU, pin it to one core (``taskset -c 1`` with ``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_leak import leak_table  # noqa: E402

from himr_pipe.tradeoff import (CANDIDATES, RECIPE, TradeoffRequest, format_table, pick_settings,  # noqa: E402
                                run_tradeoff)

# The shapes proxy's default selection: P=32 at 128 px is a 4x4 grid, asked for explicitly (module docstring).
SHAPES_DEFAULT = ["none", "rs", "rs gap 1", "rs gap 2", "mi-shuffle", "mi-shuffle gap 1", "rs flip", "rs gap 1 flip",
                  "mi-shuffle flip", "mi-shuffle gap 1 flip"]
# proxy -> how it is measured
PROXIES = {
    "shapes": {"size": 128, "patch": 16, "format": "jpeg", "what": "shapes proxy, 128x128, P=16, JPEG q90"},
    "digits": {"size": 64, "patch": 8, "format": "png", "what": "digits (seam-only worst case), 64x64, P=8, PNG"},
}
AUDIT_SAMPLES = 8  # per setting inside the accuracy half (the leak half attacks --photos photos at 224)


def make_proxy(name: str, root: Path, per_class: int, seed: int) -> int:
    """Write the proxy's ImageNet-style folder (once); returns its image count."""
    if not root.is_dir():
        if name == "shapes":
            from himr_pipe.sample_data import make_shapes_classification

            make_shapes_classification(root, per_class=per_class, size=PROXIES["shapes"]["size"], seed=seed)
        else:
            from bench_digits import make_digits

            make_digits(root, size=PROXIES["digits"]["size"], split=False)
    return sum(1 for p in root.rglob("*") if p.is_file())


def accuracy(proxies, settings, seeds: int, close_seeds: int, epochs: int | None, per_class: int, seed: int,
             work: Path, log=print) -> dict:
    """{proxy: run_tradeoff's result} for every proxy, every image of the proxy sampled."""
    out = {}
    for name in proxies:
        p = PROXIES[name]
        src = work / f"{name}_{per_class if name == 'shapes' else 'all'}_s{seed}"
        n = make_proxy(name, src, per_class, seed)
        log(f"== {name}: {n} images in {src}")
        chosen = settings if settings is not None else pick_settings(SHAPES_DEFAULT if name == "shapes" else None)
        req = TradeoffRequest(src=src, samples=n, size=str(p["size"]), patch=p["patch"], epochs=epochs,
                              fmt=p["format"], quality=90, seed=seed, seeds=seeds, close_seeds=close_seeds,
                              settings=tuple(c.label for c in chosen), work=work / f"{name}_work",
                              audit_samples=AUDIT_SAMPLES, progress=False)
        res = run_tradeoff(req, log=lambda s: log(f"  {s}"))
        res["proxy"] = p["what"]
        out[name] = res
        log(format_table(res))
    return out


LEAK_PATCH = 16  # the leak is measured at the product's default geometry: 224x224, P=16


def leak_for(settings, n: int = 24, work=None) -> dict:
    """{label: {"jpeg": leak, "png": leak}} for every encrypted candidate, at 224x224 and P=16 (2P: 32)."""
    rows = []
    for c in settings:
        if c.scheme != "none":
            rows += [(f"{c.label} | {fmt}", c.scheme, LEAK_PATCH * c.patch_factor, c.gap, 0.0, fmt)
                     for fmt in ("jpeg", "png")]
    flat = leak_table(rows, n, Path(work) / "leak" if work else None)
    out: dict = {}
    for key, r in flat.items():
        label, fmt = key.split(" | ")
        out.setdefault(label, {})[fmt] = r
    return out


def _leak_cell(r: dict | None) -> str:
    if not r:
        return "-"
    if "error" in r:
        return "n/a"
    m = r["mean"]
    s = f"{m['neighbour_accuracy']:.3f} / {m['direct_accuracy']:.3f}"
    if "baseline_ssim" in m:
        s += f" (SSIM {m['ssim']:.2f} vs {m['baseline_ssim']:.2f})"
    return s + ("" if r["meets_budget"] else " *")


def _acc_cell(res: dict | None, label: str) -> str:
    if res is None:
        return "-"
    r = next((x for x in res["rows"] if x["label"] == label), None)
    if r is None:
        return "-"
    if r["status"] != "ok":
        return r["status"]
    s = f"{r['top1_mean']:.3f}"
    if r.get("top1_std") is not None:
        s += f" ± {r['top1_std']:.3f} (n={len(r['runs'])})"
    if label != "none" and "cost_vs_none" in r:
        s += f" ({r['cost_vs_none']:+.3f})"
    return s


def trade_off_table(acc: dict, leak: dict | None) -> str:
    """Markdown: the leak (JPEG q90 and PNG at P=16) next to the top-1 (cost vs none) on each proxy."""
    names = list(acc)
    head = ["setting"]
    if leak is not None:
        head += ["leak, JPEG q90: neighbour / direct", "leak, PNG: neighbour / direct"]
    head += [f"top-1 (cost): {acc[n]['proxy']}" for n in names]
    labels = [c.label for c in CANDIDATES if any(r["label"] == c.label for n in names for r in acc[n]["rows"])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        cells = [label]
        if leak is not None:
            lk = leak.get(label, {})
            cells += [_leak_cell(lk.get("jpeg")), _leak_cell(lk.get("png"))]
        cells += [_acc_cell(acc[n], label) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if leak is not None:
        lines.append("`*`: over the leak budget (direct <= 0.02, neighbour <= 0.10, an MI-like picture below the "
                     "same-information baseline's SSIM, no kept positions). Leak figures are lower bounds.")
    for n in names:
        a = acc[n]
        lines.append(f"{n}: {a['counts']['train']} train / {a['counts']['val']} val, top-1 95% half-width <= "
                     f"{a['half_width']:.3f}; {a['recipe_text']}; ± is the standard deviation over training seeds; "
                     f"{a['total_seconds'] / 60:.0f} min on {a['device']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--proxies", default="shapes,digits", help="comma list: shapes, digits")
    ap.add_argument("--settings", default=None, help="comma list of labels (default: shapes "
                    + ", ".join(SHAPES_DEFAULT) + "; digits all): " + ", ".join(c.label for c in CANDIDATES))
    ap.add_argument("--seeds", type=int, default=1, help="training seeds for every row")
    ap.add_argument("--close-seeds", type=int, default=3,
                    help="training seeds for every row within 0.05 top-1 of another row")
    ap.add_argument("--epochs", type=int, default=None, help=f"default: the recipe's ({RECIPE.epochs})")
    ap.add_argument("--per-class", type=int, default=1000, help="shapes proxy: images per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write all results here")
    ap.add_argument("--work", default=None, help="keep data, shards and runs here (default: a temporary folder)")
    ap.add_argument("--photos", type=int, default=24, help="photos attacked per setting for the leak")
    ap.add_argument("--accuracy-json", default=None, help="reuse the accuracy half saved by an earlier --json")
    ap.add_argument("--leak-json", default=None, help="reuse the leak half saved by an earlier --json")
    ap.add_argument("--no-leak", action="store_true", help="skip the leak half")
    args = ap.parse_args()
    proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    bad = [p for p in proxies if p not in PROXIES]
    if bad:
        raise SystemExit(f"unknown proxy {bad}; choose from {', '.join(PROXIES)}")
    settings = pick_settings(args.settings) if args.settings else None
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="himr-bench-tradeoff-"))
    t = time.perf_counter()
    if args.accuracy_json:
        acc = json.loads(Path(args.accuracy_json).read_text())["accuracy"]
    else:
        acc = accuracy(proxies, settings, args.seeds, args.close_seeds, args.epochs, args.per_class, args.seed, work,
                       log=lambda s: print(s, flush=True))
    leak = None
    if args.leak_json:
        leak = json.loads(Path(args.leak_json).read_text())["leak"]
    elif not args.no_leak:
        measured = [c for c in CANDIDATES if any(r["label"] == c.label for a in acc.values() for r in a["rows"])]
        leak = leak_for(measured, args.photos, work)
    print("\n== trade-off: " + (f"leak on {args.photos} photos at 224x224, P={LEAK_PATCH} | " if leak else "")
          + "accuracy at equal budget per proxy ==")
    print(trade_off_table(acc, leak))
    print(f"total {time.perf_counter() - t:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"accuracy": acc, "leak": leak}, indent=1))


if __name__ == "__main__":
    main()
