"""The leak of each candidate setting: the product's own shards, attacked by the product's own audit.

For every setting it runs the real path a user runs: ``himr-pipe sample-data``
(24 real photos by default: 6 scikit-image photos x 4 random crops, about
500x375 JPEG), ``encrypt-shards`` at 224x224 with the setting, then
:func:`himr_pipe.audit.report.audit_out` on every sample: the strongest
jigsaw attack we have on the stored bytes (for MI-like settings followed by
the regularised least-squares MI inverse), scored against the true layout
from the job key and against the plain image.

Printed per setting: neighbour and direct accuracy (chance is about 1/N),
exact reconstructions, PSNR/SSIM of the attacker's picture against the plain
image beside the same-information baseline (MI-like), attack seconds per
image, and whether the setting meets the leak budget.

Run:  python benchmarks/bench_leak.py [--n 24] [--settings rs,rs-gap1,...] [--json PATH] [--learned] [--segments]
      [--uncapped]

``--uncapped``: the audit as it was before its seam costs were capped (jigsaw v3: ``PLACE_DEFAULTS['cap']`` None),
for the side-by-side table of the two.

``--learned``: every setting twice, the audit as it is and with the learned seam model
(:mod:`himr_pipe.audit.learned`) combined into its seam costs at its fitted weight (``gamma_fit``, even where the
audit leaves it off for too small a held-out gain), side by side with the ratio (with / without);
``--without-json PATH`` takes the first column from an earlier run's ``--json`` (same --work, --n and seed:
the audit is deterministic). With --flip the audit's neighbour/direct are already pose-free (the best of the
frame's 8 symmetries, ``scores.symmetric_layout_scores``).

``--segments``: every setting twice, with today's placement and with the placement that moves and turns whole
segments (:mod:`himr_pipe.audit.segments`), on the same seam scores.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

# (label, scheme name, patch, gap, drop, format): the candidates at the default 224x224
SETTINGS = [
    ("rs P=16 png", "rs", 16, 0, 0.0, "png"),
    ("rs P=16 jpeg", "rs", 16, 0, 0.0, "jpeg"),
    ("rs P=8 jpeg", "rs", 8, 0, 0.0, "jpeg"),
    ("rs P=32 jpeg", "rs", 32, 0, 0.0, "jpeg"),
    ("rs P=16 gap 1 png", "rs", 16, 1, 0.0, "png"),
    ("rs P=16 gap 1 jpeg", "rs", 16, 1, 0.0, "jpeg"),
    ("rs P=16 gap 2 jpeg", "rs", 16, 2, 0.0, "jpeg"),
    ("rs P=16 gap 2 png", "rs", 16, 2, 0.0, "png"),
    ("rs P=16 drop 0.25 jpeg", "rs", 16, 0, 0.25, "jpeg"),
    ("rs P=16 gap 1 drop 0.25 jpeg", "rs", 16, 1, 0.25, "jpeg"),
    ("mi P=16 jpeg", "mi", 16, 0, 0.0, "jpeg"),
    ("mi-shuffle P=16 png", "mi-shuffle", 16, 0, 0.0, "png"),
    ("mi-shuffle P=16 jpeg", "mi-shuffle", 16, 0, 0.0, "jpeg"),
    ("mi-shuffle P=16 gap 1 jpeg", "mi-shuffle", 16, 1, 0.0, "jpeg"),
    ("mi-shuffle P=16 drop 0.25 jpeg", "mi-shuffle", 16, 0, 0.25, "jpeg"),
    ("mi-shuffle P=8 png", "mi-shuffle", 8, 0, 0.0, "png"),
    ("mi-shuffle P=16 gap 1 png", "mi-shuffle", 16, 1, 0.0, "png"),
    ("mi-shuffle P=32 jpeg", "mi-shuffle", 32, 0, 0.0, "jpeg"),
    ("mi-shuffle P=32 gap 1 jpeg", "mi-shuffle", 32, 1, 0.0, "jpeg"),
    ("rs P=16 flip jpeg", "rs", 16, 0, 0.0, "jpeg"),
    ("rs P=16 gap 1 flip jpeg", "rs", 16, 1, 0.0, "jpeg"),
    ("rs P=16 gap 1 flip png", "rs", 16, 1, 0.0, "png"),
    ("mi-shuffle P=16 flip jpeg", "mi-shuffle", 16, 0, 0.0, "jpeg"),
    ("mi-shuffle P=16 flip png", "mi-shuffle", 16, 0, 0.0, "png"),
    ("mi-shuffle P=16 gap 1 flip jpeg", "mi-shuffle", 16, 1, 0.0, "jpeg"),
    ("mi-shuffle P=16 gap 1 flip png", "mi-shuffle", 16, 1, 0.0, "png"),
]
# a label ending in " flip <format>" is the flip defence (Scheme.flip)


def slug(label: str) -> str:
    """A folder name for a setting's shards: letters, digits, '-' and '_' only."""
    return re.sub(r"[^A-Za-z0-9-]+", "_", label.replace(".", "")).strip("_")


def leak_table(settings=SETTINGS, n: int = 24, work: Path | None = None, seed: int = 0,
               learned: bool = False) -> dict:
    """{label: {"scheme": ..., "format": ..., "mean": {...}, "meets_budget": bool, ...}} for ``settings``;
    ``learned``: the audit with the learned seam model."""
    from himr_pipe.audit.learned import enabled
    from himr_pipe.audit.report import audit_out
    from himr_pipe.sample_data import PHOTOS, make_sample_folder
    from himr_pipe.scheme import Scheme, SchemeError
    from himr_pipe.tradeoff import encrypt

    work = Path(work or tempfile.mkdtemp(prefix="himr-leak-"))
    src = work / "src"
    if not src.exists():
        make_sample_folder(src, per_class=max(1, -(-n // len(PHOTOS))), seed=seed)
    out = {}
    for label, name, patch, gap, drop, fmt in settings:
        o, st = work / slug(label), work / (slug(label) + ".state")   # tradeoff.encrypt's state: OUT + ".state"
        if not (o / "manifest.json").exists():
            try:   # the encrypt-shards command itself, as himr-pipe tradeoff runs it
                encrypt(src, o, Scheme.named(name, patch, 224, 224, gap, drop, flip=" flip " in label), fmt, 90,
                        seed)
            except (SchemeError, RuntimeError) as e:
                out[label] = {"error": str(e)}
                continue
        t = time.perf_counter()
        with enabled(learned, force=learned):
            rep, _ = audit_out(str(o), n, str(st), seed=0)
        rep["seconds"] = time.perf_counter() - t
        out[label] = {k: rep[k] for k in ("setting", "format", "attack", "samples", "mean", "meets_budget",
                                          "over_budget", "seconds")}
    return out


def print_table(res: dict) -> None:
    """One row per setting; pose-free and side-by-side (proximity, with its chance figure) as in
    :mod:`himr_pipe.audit.attack`."""
    print("| setting | neighbour | direct | pose-free neighbour | side by side (chance) | solved "
          "| attacker's PSNR / SSIM | baseline PSNR / SSIM | s/img | budget |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, r in res.items():
        if "error" in r:
            print(f"| {label} | n/a: {r['error'].splitlines()[-1]} |||||||||")
            continue
        m = r["mean"]
        base = f"{m['baseline_psnr']:.1f} / {m['baseline_ssim']:.3f}" if "baseline_ssim" in m else "-"
        near = f"{m['proximity']:.3f} ({m['proximity_chance']:.3f})" if "proximity" in m else "-"
        print(f"| {label} | {m['neighbour_accuracy']:.3f} | {m['direct_accuracy']:.3f} | "
              f"{m.get('pose_free_neighbour', float('nan')):.3f} | {near} | "
              + (f"{m['solved'] * r['samples']:.0f}/{r['samples']}" if "solved" in m else "-")
              + f" | {m['psnr']:.1f} / {m['ssim']:.3f} | "
              f"{base} | {m['attack_seconds']:.2f} | {'meets' if r['meets_budget'] else 'over'} |")


def print_learned(without: dict, with_: dict) -> None:
    """The audit without and with the learned seam model, side by side (ratio: with / without)."""
    print("| setting | neighbour without | with | ratio | direct without | with | ratio | s/img without | with |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r in with_.items():
        b = without.get(label, {})
        if "error" in r or "mean" not in b:
            continue
        m0, m1 = b["mean"], r["mean"]

        def ratio(k):
            return f"{m1[k] / m0[k]:.2f}" if m0[k] else "-"
        print(f"| {label} | {m0['neighbour_accuracy']:.3f} | {m1['neighbour_accuracy']:.3f} | "
              f"{ratio('neighbour_accuracy')} | {m0['direct_accuracy']:.3f} | {m1['direct_accuracy']:.3f} | "
              f"{ratio('direct_accuracy')} | {m0['attack_seconds']:.2f} | {m1['attack_seconds']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=24, help="photos (6 scikit-image photos x n/6 random crops)")
    ap.add_argument("--settings", default=None, help="comma list of labels (see SETTINGS) or substrings")
    ap.add_argument("--json", default=None)
    ap.add_argument("--work", default=None)
    ap.add_argument("--learned", action="store_true", help="also the audit with the learned seam model")
    ap.add_argument("--without-json", default=None, help="with --learned: the first column from this --json")
    ap.add_argument("--segments", action="store_true",
                    help="also run each setting with the placement that moves and turns segments (audit.segments)")
    ap.add_argument("--uncapped", action="store_true", help="the audit before the seam-cost cap (jigsaw v3)")
    a = ap.parse_args()
    if a.uncapped:
        from himr_pipe.audit.placement import PLACE_DEFAULTS

        PLACE_DEFAULTS["cap"] = None   # the solver reads this dict at every call
    chosen = SETTINGS
    if a.settings:
        want = [w.strip() for w in a.settings.split(",")]
        chosen = [s for s in SETTINGS if s[0] in want] or [s for s in SETTINGS if any(w in s[0] for w in want)]
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="himr-leak-"))
    if a.segments:   # today's placement against the one that moves and turns segments, on the same seam scores
        from himr_pipe.audit import segments

        res = leak_table(chosen, a.n, work)
        with segments.enabled():
            res.update({k + " +segments": v for k, v in leak_table(chosen, a.n, work).items()})
        print("| setting | neighbour | direct | pose-free neighbour | s/img |\n|---|---|---|---|---|")
        for label, r in sorted(res.items()):
            m = r.get("mean", {})
            print(f"| {label} | {m.get('neighbour_accuracy', float('nan')):.3f} | "
                  f"{m.get('direct_accuracy', float('nan')):.3f} | {m.get('pose_free_neighbour', float('nan')):.3f} | "
                  f"{m.get('attack_seconds', float('nan')):.1f} |")
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1))
        return
    if a.learned and a.without_json:
        res = json.loads(Path(a.without_json).read_text())
        res = {s[0]: res[s[0]] for s in chosen if s[0] in res}
    else:
        res = leak_table(chosen, a.n, work)
    if a.uncapped:   # the attack's name states it as shipped; say which ran
        for r in res.values():
            if "attack" in r:
                r["attack"] = r["attack"].replace("seam costs capped", "seam costs NOT capped (--uncapped: v3)")
    print_table(res)
    if a.learned:
        res_l = leak_table(chosen, a.n, work, learned=True)
        print("\nwith the learned seam model:")
        print_table(res_l)
        print()
        print_learned(res, res_l)
        res = {"without": res, "with_learned": res_l}
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
