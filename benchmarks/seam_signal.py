"""How much a seam tells, per setting: why a learned seam model has little to add on MI cells.

For puzzles made as the training data are (``learned.make_training_puzzle``: public photos that are not the
audit's sample photos, --flip, the product's storage), per setting: the luma step across a true seam (mean
|last visible column of i - first visible column of j|, stored values), the step between two neighbouring
columns inside a cell, and the step to a random candidate; the median rank of the true neighbour among all 8N - 8 candidates
under the hand-crafted dissimilarity (0 = best); and its top-1.

    python benchmarks/seam_signal.py [--puzzles 4] [--size 224]
"""

from __future__ import annotations

import argparse

import numpy as np

from himr_pipe.audit import learned


def signal(p: dict, gap: int) -> dict:
    cell, band = p["cell"], learned.BAND
    A = p["A"].reshape(len(p["A"]), cell, band, 3)[..., 0] * 64     # luma, columns nearest the seam first
    B = p["B"].reshape(len(p["B"]), cell, band, 3)[..., 0] * 64
    i, j = p["pairs"][:, 0], p["pairs"][:, 1]
    rng = np.random.default_rng(0)
    r = rng.integers(0, len(B), len(j))
    g = gap                                                            # the first column the gap leaves visible
    seam = np.abs(A[i, :, g] - B[j, :, g]).mean()
    inside = np.abs(A[i, :, g] - A[i, :, g + 1]).mean()
    rand = np.abs(A[i, :, g] - B[r, :, g]).mean()
    D = p["D"]
    rank = (D[i] < D[i, j][:, None]).sum(1)
    return {"seam": seam, "inside": inside, "random": rand, "rank": float(np.median(rank)),
            "top1": learned.top1(D, p["pairs"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--puzzles", type=int, default=4)
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args()
    print("| setting | luma step across a true seam | inside a cell | to a random cell | median rank of the true "
          "neighbour (of 8N-8) | top-1 |")
    print("|---|---|---|---|---|---|")
    for name, patch, gap, fmt in learned.SETTINGS:
        rows = [signal(p, gap) for p in learned.training_set(name, patch, gap, fmt, a.puzzles, 7, a.size)]
        m = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        print(f"| {name} P={patch} gap {gap} flip {fmt} | {m['seam']:.1f} | {m['inside']:.1f} | {m['random']:.1f} | "
              f"{m['rank']:.0f} | {m['top1']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
