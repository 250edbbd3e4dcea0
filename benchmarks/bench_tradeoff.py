"""The privacy/accuracy trade-off: what each scheme and defence leaks, next to what it costs on digits.

One command, two halves, one table:

* **leak** (:func:`bench_leak.leak_table`): the product's own shards of 24
  real photos at 224x224, P=16, stored as JPEG q90 (the default format) and
  as PNG (lossless), attacked by the audit's strongest attack; neighbour and
  direct accuracy, and for MI-like settings the SSIM of the attacker's
  picture beside the same-information baseline's; whether the leak budget is
  met;
* **accuracy** (:func:`accuracy_table`, below): top-1 on digits at two
  patch sizes at equal budget, and the cost against ``none``.

``--accuracy-json`` / ``--leak-json`` reuse saved halves (so the table can be
rebuilt without retraining), and ``--json`` saves both.

The accuracy half in detail:

For every candidate setting (:data:`CANDIDATES`: none; rs with and without the
gap / drop defences; mi; mi-shuffle with and without them) this trains the
tiny model of ``bench_digits.py`` (width 64, depth 4, 4 heads, batch 64,
lr 2e-3, label smoothing 0.1, one seed) on scikit-learn's digits encrypted with
that setting, and reports held-out top-1 at two patch sizes that both give an
8x8 grid, one patch per original digit pixel:

* P=4 on 32x32 images (MI: 16x16 images of 2x2 cells),
* P=8 on 64x64 images (MI: 32x32 images of 4x4 cells),

and the cost of each row against the ``none`` row at the same P. Every row has
the same budget: the same epochs, model, batch, lr and training seed; the
data are the same split, encrypted with the same seeds (``--seed`` for train,
``--seed`` + 1 for validation). Shards are PNG, so the figures are the
scheme's own cost, with nothing lost to compression.

One rule for every shuffled row (rs, mi-shuffle, with or without defences):
**augmentation off, RPE on.** Augmentation off because bench_digits showed it
costs accuracy at this small budget (every scheme lost 3 to 9 points with it).
RPE on because it is the model ``himr-pipe train`` builds by default (PEViT,
and MI-ViT without positions for mi-shuffle) and bench_digits showed no clear
reason to drop it: without RPE rs did 4.7 points better with augmentation off
but 3.9 points worse with it on, each from a single seed. ``none`` and ``mi``
have no RPE (they keep positions) and are trained without augmentation too.

Budget: 30 epochs by default, bench_digits' budget, at which ``none`` reaches
0.97 (18 trainings: 8 at P=4, 10 at P=8; about 45 minutes on a 2-core machine,
120-160 s per training). At 15 epochs (``--epochs 15``, about 22 minutes) every
model is still rising and the shuffled ones take off late, so their costs came
out up to 0.25 higher: read such a run as a smoke test, not as the table.

A setting the scheme refuses at a patch size (a gap needs 2*gap < the stored
cell: P for rs, P/2 for mi-shuffle; so no mi-shuffle gap at P=4, no rs gap 2
at P=4) is printed as "n/a" with the scheme's reason and not trained.

Run:  python benchmarks/bench_tradeoff.py [--epochs 30] [--settings "none,rs,rs gap 1"] [--patches 4,8]
                                          [--json PATH] [--work DIR] [--seed 0] [--photos 24]
                                          [--accuracy-json PATH] [--leak-json PATH]

Settings are picked by their labels; spaces, '+' and '-' are ignored in the
match ("rs gap 1 + drop 0.25" = "rsgap1drop0.25"). Another script can import
:func:`accuracy_table` and :data:`CANDIDATES`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_digits import encrypt, make_digits, run_training  # noqa: E402
from bench_leak import leak_table  # noqa: E402

# (label, scheme name, gap, drop)
CANDIDATES: list[tuple[str, str, int, float]] = [
    ("none", "none", 0, 0.0),
    ("rs", "rs", 0, 0.0),
    ("rs gap 1", "rs", 1, 0.0),
    ("rs gap 2", "rs", 2, 0.0),
    ("rs drop 0.25", "rs", 0, 0.25),
    ("rs gap 1 + drop 0.25", "rs", 1, 0.25),
    ("mi", "mi", 0, 0.0),
    ("mi-shuffle", "mi-shuffle", 0, 0.0),
    ("mi-shuffle gap 1", "mi-shuffle", 1, 0.0),
    ("mi-shuffle drop 0.25", "mi-shuffle", 0, 0.25),
]

# the one rule for every row (see the module docstring)
RPE = True
AUGMENT = False
GRID = 8  # patches per side: image size = GRID * P, one patch per original 8x8 digit pixel


def _norm(label: str) -> str:
    return re.sub(r"[\s+\-_]", "", label.lower())


def pick_settings(text: str | None) -> list[tuple[str, str, int, float]]:
    """The candidates named in a comma list of labels (all of them for None), in CANDIDATES order."""
    if not text:
        return list(CANDIDATES)
    by = {_norm(c[0]): c for c in CANDIDATES}
    want = [_norm(t) for t in text.split(",") if t.strip()]
    bad = [t for t in want if t not in by]
    if bad:
        raise SystemExit(f"unknown setting(s) {bad}; choose from: " + ", ".join(repr(c[0]) for c in CANDIDATES))
    return [c for c in CANDIDATES if _norm(c[0]) in want]


def _refusal(scheme: str, patch: int, size: int, gap: int, drop: float) -> str | None:
    """The scheme's reason for refusing this setting at this patch size, or None."""
    from himr_pipe.scheme import Scheme, SchemeError

    try:
        Scheme.named(scheme, patch, size, size, gap, drop)
    except SchemeError as e:
        return str(e)
    return None


def accuracy_table(settings=None, patches=(4, 8), epochs: int = 30, seed: int = 0, work=None, log=print) -> dict:
    """Train every setting at every patch size with the same budget; return all results.

    ``settings``: candidates as in :data:`CANDIDATES` (tuples) or their labels (None: all).
    ``patches``: patch sizes P; the images are 8P x 8P (P=4: 32 px, P=8: 64 px).
    ``work``: a folder for data, shards and runs (None: a temporary one, removed afterwards).

    Returns ``{"epochs", "seed", "patches", "rule", "counts", "rows": [{"label", "scheme", "gap", "drop",
    "results": {"P": {...}}}], "total_seconds"}`` where each ``results[str(P)]`` is either
    ``{"status": "ok", "val_top1", "best_val_top1", "train_loss", "epochs", "seconds", "encrypt_seconds",
    "cost_vs_none"}``, ``{"status": "n/a", "reason"}`` (the scheme refuses it) or
    ``{"status": "error", "error", "traceback"}``.
    """
    if settings is None:
        settings = list(CANDIDATES)
    else:
        settings = [s if isinstance(s, tuple) else pick_settings(s)[0] for s in settings]
    patches = [int(p) for p in patches]
    tmp = work is None
    work = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="himr-tradeoff-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    counts, rows = {}, []
    try:
        for p in patches:
            size = GRID * p
            data = work / f"digits{size}"
            if not (data / "val").is_dir():
                counts[str(p)] = make_digits(data, size=size)
            else:
                counts[str(p)] = {s: sum(1 for _ in (data / s).rglob("*.png")) for s in ("train", "val")}
            log(f"P={p}: digits {counts[str(p)]} at {size}x{size} in {data}")
        for label, scheme, gap, drop in settings:
            row = {"label": label, "scheme": scheme, "gap": gap, "drop": drop, "results": {}}
            rows.append(row)
            for p in patches:
                size = GRID * p
                why = _refusal(scheme, p, size, gap, drop)
                if why:
                    row["results"][str(p)] = {"status": "n/a", "reason": why}
                    log(f"  {label:22s} P={p}: n/a ({why})")
                    continue
                tag = f"{scheme}_p{p}_g{gap}_d{drop}"
                try:
                    te = time.perf_counter()
                    dirs = {}
                    for split in ("train", "val"):
                        dirs[split] = work / f"{tag}_{split}"
                        if not (dirs[split] / "manifest.json").exists():
                            encrypt(work / f"digits{size}" / split, dirs[split], scheme, seed=seed + (split == "val"),
                                    patch=p, defence=(gap, drop), size=size)
                    te = time.perf_counter() - te
                    run = work / f"run_{tag}_e{epochs}_s{seed}"
                    shutil.rmtree(run, ignore_errors=True)
                    r = run_training(dirs["train"], dirs["val"], run, epochs, rpe=RPE, aug=AUGMENT, seed=seed)
                    r.update(status="ok", epochs=epochs, encrypt_seconds=te)
                    log(f"  {label:22s} P={p}: val top-1 {r['val_top1']:.3f} (best {r['best_val_top1']:.3f}, "
                        f"train loss {r['train_loss']:.3f}) in {r['seconds']:.0f} s")
                except (Exception, SystemExit) as e:  # one broken row must not lose the others
                    r = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
                    log(f"  {label:22s} P={p}: ERROR {r['error']}\n{r['traceback']}")
                row["results"][str(p)] = r
        base = {}
        for row in rows:
            if row["scheme"] == "none":
                for p, r in row["results"].items():
                    if r.get("status") == "ok":
                        base[p] = r["val_top1"]
        for row in rows:
            for p, r in row["results"].items():
                if r.get("status") == "ok" and p in base:
                    r["cost_vs_none"] = base[p] - r["val_top1"]
    finally:
        if tmp:
            shutil.rmtree(work, ignore_errors=True)
    return {"epochs": epochs, "seed": seed, "patches": patches,
            "sizes": {str(p): GRID * p for p in patches},
            "rule": {"augmentation": AUGMENT, "rpe_for_shuffled": RPE,
                     "model": "width 64, depth 4, 4 heads; batch 64, lr 2e-3, warm-up 2, label smoothing 0.1",
                     "format": "png"},
            "counts": counts, "rows": rows, "total_seconds": time.perf_counter() - t0}


def _cell(r: dict | None, key: str) -> str:
    if r is None:
        return "-"
    if r["status"] == "n/a":
        return "n/a"
    if r["status"] == "error":
        return "error"
    if key == "cost":
        return f"{r['cost_vs_none']:+.3f}" if "cost_vs_none" in r else "- (no none row)"
    return f"{r['val_top1']:.3f}"


def format_table(res: dict) -> str:
    ps = [str(p) for p in res["patches"]]
    head = ["setting"] + [f"top-1 P={p}/{res['sizes'][p]}px" for p in ps] + [f"cost vs none P={p}" for p in ps]
    lines = [head]
    notes = []
    for row in res["rows"]:
        lines.append([row["label"]] + [_cell(row["results"].get(p), "top1") for p in ps]
                     + [_cell(row["results"].get(p), "cost") for p in ps])
        for p in ps:
            r = row["results"].get(p)
            if r and r["status"] == "n/a":
                notes.append(f"n/a: {row['label']} at P={p}: {r['reason']}")
            elif r and r["status"] == "error":
                notes.append(f"error: {row['label']} at P={p}: {r['error']}")
    w = [max(len(l[i]) for l in lines) for i in range(len(head))]
    fmt = lambda l: " | ".join(c.ljust(w[i]) for i, c in enumerate(l))  # noqa: E731
    out = [fmt(lines[0]), "-+-".join("-" * x for x in w)] + [fmt(l) for l in lines[1:]]
    return "\n".join(out + ([""] + notes if notes else []))


LEAK_PATCH = 16  # the leak is measured at the product's default geometry: 224x224, P=16


def leak_for(settings, n: int = 24, work=None) -> dict:
    """{label: {"jpeg": leak, "png": leak}} for every encrypted candidate, at 224x224 and P=16."""
    rows = []
    for label, scheme, gap, drop in settings:
        if scheme != "none":
            rows += [(f"{label} | {fmt}", scheme, LEAK_PATCH, gap, drop, fmt) for fmt in ("jpeg", "png")]
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


def trade_off_table(acc: dict, leak: dict) -> str:
    """Markdown: leak (JPEG q90 and PNG at P=16) next to the accuracy on digits, per candidate."""
    ps = [str(p) for p in acc["patches"]]
    head = (["setting", "leak, JPEG q90: neighbour / direct", "leak, PNG: neighbour / direct"]
            + [f"digits top-1 P={p}/{acc['sizes'][p]}px (cost)" for p in ps])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in acc["rows"]:
        lk = leak.get(row["label"], {})
        acc_cells = []
        for p in ps:
            r = row["results"].get(p)
            acc_cells.append(_cell(r, "top1") + (f" ({r['cost_vs_none']:+.3f})" if r and "cost_vs_none" in r
                                                 and row["scheme"] != "none" else ""))
        lines.append("| " + " | ".join([row["label"], _leak_cell(lk.get("jpeg")), _leak_cell(lk.get("png"))]
                                       + acc_cells) + " |")
    lines.append("")
    lines.append("`*`: over the leak budget (direct <= 0.02, neighbour <= 0.10, an MI-like picture below the "
                 "same-information baseline's SSIM, no kept positions).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--settings", default=None, help="comma list of labels (default: all): "
                    + ", ".join(c[0] for c in CANDIDATES))
    ap.add_argument("--patches", default="4,8", help="patch sizes P (images are 8P x 8P)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write all results here")
    ap.add_argument("--work", default=None, help="keep data, shards and runs here (default: a temporary folder)")
    ap.add_argument("--photos", type=int, default=24, help="photos attacked per setting for the leak")
    ap.add_argument("--accuracy-json", default=None, help="reuse the accuracy half saved by an earlier --json")
    ap.add_argument("--leak-json", default=None, help="reuse the leak half saved by an earlier --json")
    args = ap.parse_args()
    patches = [int(p) for p in args.patches.split(",") if p.strip()]
    settings = pick_settings(args.settings)
    if args.accuracy_json:
        saved = json.loads(Path(args.accuracy_json).read_text())
        res = saved.get("accuracy", saved)
    else:
        res = accuracy_table(settings, patches, args.epochs, args.seed, args.work,
                             log=lambda s: print(s, flush=True))
    print(f"\n== digits, 8x8 grid, {res['epochs']} epochs, same budget per row, augmentation "
          f"{'on' if AUGMENT else 'off'}, RPE {'on' if RPE else 'off'} for the shuffled schemes, PNG, CPU ==")
    print(format_table(res))
    print(f"total {res['total_seconds']:.0f} s")
    if args.leak_json:
        leak = json.loads(Path(args.leak_json).read_text())["leak"]
    else:
        t = time.perf_counter()
        leak = leak_for(settings, args.photos, args.work)
        print(f"\nleak measured in {time.perf_counter() - t:.0f} s")
    print(f"\n== trade-off: leak on {args.photos} photos at 224x224, P={LEAK_PATCH} | accuracy on digits ==")
    print(trade_off_table(res, leak))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"accuracy": res, "leak": leak}, indent=1))


if __name__ == "__main__":
    main()
