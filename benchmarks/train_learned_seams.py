"""Retrain the learned seam model's shipped weights (himr_pipe/audit/learned_weights.npz).

Training data: public photos that install with the project and are not the bundled sample photos the audit
reports on (``himr_pipe.audit.learned.TRAIN_PHOTOS``), random 160x160 crops in a random orientation, encrypted
by the product's kernels with --flip and stored as the product stores them. Deterministic from --seed.

    python benchmarks/train_learned_seams.py                    # every setting of learned.SETTINGS
    python benchmarks/train_learned_seams.py --only 0 --out /tmp/m0.npz   # one setting (to run them side by side)
    python benchmarks/train_learned_seams.py --merge /tmp/m0.npz /tmp/m1.npz /tmp/m2.npz
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from himr_pipe.audit import learned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--puzzles", type=int, default=16)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", type=int, action="append", help="index into learned.SETTINGS (repeatable)")
    ap.add_argument("--out", default=str(learned.WEIGHTS))
    ap.add_argument("--merge", nargs="+", help="merge these weight files into --out, train nothing")
    a = ap.parse_args()
    out = Path(a.out)
    if a.merge:
        models = dict(learned.load_models(out))
        for f in a.merge:
            models.update(learned.load_models(Path(f)))
        learned.save_models(models, out)
        print(f"{out}: {sorted(models)} ({out.stat().st_size} bytes)")
        return
    chosen = [learned.SETTINGS[k] for k in a.only] if a.only else learned.SETTINGS
    t = time.perf_counter()
    rep = learned.train_all(a.puzzles, a.seed, a.steps, chosen, path=out)
    print(json.dumps(rep), f"{time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
