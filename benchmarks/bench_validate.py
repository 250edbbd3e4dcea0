"""What the screening's check of the coded data costs against the decode it guards (issue 35).

``decoders.check_data`` runs libjpeg-turbo in strict mode at 1/8 scale (simplejpeg, min_height=min_width=1) on every JPEG before any
decoder sees it; every scan is still Huffman-decoded, the inverse DCT and colour work shrink. This times it against
a full decode of the same bytes, on the bundled photos at ImageNet's sizes (``sample_data``, quality 90): the
full decode by libjpeg-turbo (simplejpeg, the same library, one thread) and by DALI's CPU decoder (the default
decoder, one thread, batches of 64). Rounds alternate between the three, so that the shared machine's noise
falls on each alike; the minimum over rounds is reported.

With ``--pipeline N``, also the whole of ``encrypt-shards --workers 1 --no-audit`` on N such photos, once as shipped
and once with the check taken out (the worker's ``screen`` replaced by the header check alone, in the child): CPU
time (user + sys, which the shared machine's load hardly moves) and wall time per image, rounds alternating.

    python benchmarks/bench_validate.py [--images 96] [--rounds 5] [--pipeline 480]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pipeline", type=int, default=0)
    a = ap.parse_args()

    import numpy as np
    import simplejpeg

    from himr_pipe.decoders import DaliDecoder, check_data, inspect_header
    from himr_pipe.sample_data import make_sample_folder

    with tempfile.TemporaryDirectory() as d:
        make_sample_folder(Path(d) / "src", per_class=max(1, a.images // 6), size="imagenet", quality=90, seed=0)
        blobs = [p.read_bytes() for p in sorted(Path(d).rglob("*.jpg"))][:a.images]
    headers = [inspect_header(b) for b in blobs]
    dali = DaliDecoder((224, 224), "crop", 64, 1)
    batches = [blobs[i:i + 64] for i in range(0, len(blobs), 64)]

    def check():
        for b, h in zip(blobs, headers):
            check_data(b, h)

    def full():
        for b in blobs:
            simplejpeg.decode_jpeg(b)

    def dali_decode():  # decode (+ the resize to 224, which DALI's CPU path hands to himr_pipe.resize)
        for _ in dali.run(batches):
            pass

    dali_decode()  # the pipeline's build and first batch, not timed
    best = {"check": np.inf, "full": np.inf, "dali": np.inf}
    for _ in range(a.rounds):
        for name, fn in (("check", check), ("full", full), ("dali", dali_decode)):
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    n = len(blobs)
    px = np.mean([h.width * h.height for h in headers])
    print(f"{n} JPEGs, mean {px / 1e3:.0f} k pixels; best of {a.rounds} rounds, ms per image:")
    print(f"  {'strict 1/8 check':<34}{'full decode (libjpeg-turbo)':<30}{'DALI CPU decode + resize':<28}")
    print(f"  {best['check'] / n * 1e3:<34.3f}{best['full'] / n * 1e3:<30.3f}{best['dali'] / n * 1e3:<28.3f}")
    print(f"  check / full decode = {best['check'] / best['full']:.2f}; "
          f"check / DALI decode + resize = {best['check'] / best['dali']:.2f}")
    if a.pipeline:
        pipeline(a.pipeline, max(1, a.rounds // 2))


CHILD = """
import sys
import himr_pipe.worker as w
from himr_pipe.decoders import inspect_header
if sys.argv[1] == "off":
    w.screen = inspect_header
from himr_pipe.cli import main
main(sys.argv[2:])
"""


def pipeline(n: int, rounds: int) -> None:
    """CPU and wall seconds per image of encrypt-shards with the check on and off."""
    import resource
    import shutil
    import subprocess
    import sys

    from himr_pipe.sample_data import make_sample_folder

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "src"
        make_sample_folder(src, per_class=max(1, n // 6), size="imagenet", quality=90, seed=1)
        n = sum(1 for _ in src.rglob("*.jpg"))
        res: dict[str, list] = {"on": [], "off": []}
        for r in range(rounds):
            for mode in ("on", "off"):
                out = Path(d) / f"out_{mode}_{r}"
                argv = ["encrypt-shards", str(src), str(out), "--workers", "1", "--no-audit", "--no-progress",
                        "--state-dir", f"{out}.state"]
                c, t = cpu(), time.perf_counter()
                p = subprocess.run([sys.executable, "-c", CHILD, mode, *argv], capture_output=True, text=True)
                if p.returncode != 0:
                    sys.exit(f"FAILED ({mode}): exit {p.returncode}\n{p.stderr[-2000:]}")
                res[mode].append((cpu() - c, time.perf_counter() - t))
                shutil.rmtree(out)
    print(f"encrypt-shards --workers 1 on {n} photos, best of {rounds} rounds, ms per image (whole run):")
    for mode in ("on", "off"):
        c, w = min(x[0] for x in res[mode]), min(x[1] for x in res[mode])
        print(f"  check {mode:<4} CPU {c / n * 1e3:7.2f}   wall {w / n * 1e3:7.2f}")
    con, coff = min(x[0] for x in res["on"]), min(x[0] for x in res["off"])
    print(f"  CPU with / without the check = {con / coff:.2f}")


if __name__ == "__main__":
    main()
