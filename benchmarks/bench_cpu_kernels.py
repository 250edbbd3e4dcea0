"""The CPU's encryption, side by side in one process: the fused per-image numpy kernel (kernels/cpu.py, what the
worker runs) against the batched torch reference followed by the encoder (what it ran before issue 18).

For each scheme at its CLI defaults (224x224, P=16, mi-shuffle with flip), on a batch of 64 real photos resized
to 224x224 (the bundled sample photos, cut at many offsets), in one thread, rounds interleaved, median:

* kernel alone: ``ImageKernel`` image by image against ``encrypt(impl="torch")`` on the batch, us per image;
* kernel + JPEG q90 encode (the sink's whole job for a batch), us per image, and its ratio to ``none``'s encode
  alone (the physical floor: what encoding the plain batch costs).

Run:  python benchmarks/bench_cpu_kernels.py [--rounds 7] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from himr_pipe.encode import choose_format
from himr_pipe.kernels import encrypt, make_permutations
from himr_pipe.kernels.cpu import ImageKernel
from himr_pipe.scheme import Scheme, default_flip

SCHEMES = ("rs", "mi", "mi-shuffle")
B = 64


def photos(n: int) -> torch.Tensor:
    """n real 224x224 crops of the bundled photos (resized to at least 224 on the short side)."""
    from PIL import Image

    from himr_pipe.sample_data import PHOTOS

    out, rng = [], np.random.default_rng(0)
    imgs = []
    for name in PHOTOS.values():
        a = np.asarray(Image.fromarray(np.asarray(_photo(name))).convert("RGB"))
        s = 256 / min(a.shape[:2])
        imgs.append(np.asarray(Image.fromarray(a).resize((max(256, round(a.shape[1] * s)),
                                                          max(256, round(a.shape[0] * s))))))
    for i in range(n):
        a = imgs[i % len(imgs)]
        y, x = rng.integers(0, a.shape[0] - 223), rng.integers(0, a.shape[1] - 223)
        out.append(a[y:y + 224, x:x + 224])
    return torch.from_numpy(np.stack(out))


def _photo(name: str):
    from skimage import data

    return getattr(data, name)()


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) / B * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = photos(B)
    xa = x.numpy()
    plain_fmt = choose_format("jpeg", Scheme.named("none"), 90)
    cases = {}
    for name in SCHEMES:
        s = Scheme.named(name, 16, 224, 224, flip=default_flip(name))
        fmt = choose_format("jpeg", s, 90)
        perms = make_permutations(np.random.default_rng(1).integers(0, 2**63, (B, s.num_patches)),
                                  orient=s.flip) if s.shuffled else None
        tperms = None if perms is None else torch.from_numpy(perms)
        out = torch.empty((B, *s.out_size, 3), dtype=torch.uint8)
        k = ImageKernel(s)
        assert torch.equal(encrypt(s, x, tperms, impl="cpu"), encrypt(s, x, tperms, impl="torch"))

        def fused_kernel(k=k, perms=perms):
            for i in range(B):
                k(xa[i], None if perms is None else perms[i])

        def fused_all(k=k, perms=perms, fmt=fmt):
            for i in range(B):
                fmt.encode(k(xa[i], None if perms is None else perms[i]))

        def batched_kernel(s=s, tperms=tperms, out=out):
            encrypt(s, x, tperms, impl="torch", out=out)

        def batched_all(s=s, tperms=tperms, out=out, fmt=fmt):
            encrypt(s, x, tperms, impl="torch", out=out)
            for a in out.numpy():
                fmt.encode(a)

        # (default arguments bind this scheme's objects: closures would all see the last loop's)
        cases[name] = (fused_kernel, batched_kernel, fused_all, batched_all)

    def plain():
        for a in xa:
            plain_fmt.encode(a)

    times = {n: [[], [], [], []] for n in SCHEMES}
    floor = []
    for _ in range(args.rounds):
        floor.append(timed(plain))
        for n, fns in cases.items():
            for j, fn in enumerate(fns):
                times[n][j].append(timed(fn))
    med = statistics.median
    base = med(floor)
    print(f"CPU encryption of {B} real 224x224 photos, one thread, median of {args.rounds} interleaved rounds")
    print(f"plain JPEG q90 encode (none's sink): {base:.0f} us/img")
    print(f"{'scheme':11s}{'fused kernel':>14s}{'torch batch':>13s}{'speed-up':>10s}"
          f"{'fused+encode':>14s}{'batch+encode':>14s}{'speed-up':>10s}{'floor/fused':>13s}")
    res = {"plain_encode_us": base, "schemes": {}}
    for n in SCHEMES:
        fk, bk, fa, ba = (med(t) for t in times[n])
        res["schemes"][n] = {"fused_kernel_us": fk, "torch_batch_us": bk, "fused_with_encode_us": fa,
                             "batch_then_encode_us": ba, "plain_encode_over_fused": base / fa}
        print(f"{n:11s}{fk:14.0f}{bk:13.0f}{bk / fk:10.2f}{fa:14.0f}{ba:14.0f}{ba / fa:10.2f}{base / fa:13.2f}")
    print("(floor/fused: none's encode alone over the scheme's fused encrypt + encode; above 1 where the scheme "
          "encodes fewer pixels, as MI's quarter-size images)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
