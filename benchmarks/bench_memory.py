"""Peak memory of one worker on images whose headers claim 9400 x 9400 (issue 35), with and without the batch's
pixel budget (``decoders.BATCH_PIXELS``).

Sixteen small JPEGs (a flat 9400 x 9400 picture at quality 50: tens of KB each, 88 M pixels once decoded, under
the default --max-pixels) in one class folder; ``encrypt-shards --workers 0 --batch-size 16`` runs in a child
process, once with the budget as shipped and once with it lifted (the worker's ``BATCH_PIXELS`` set to 10**18
in the child, as before issue 35: the sixteen decode as one batch). The child's peak RSS is read from
``getrusage(RUSAGE_CHILDREN)`` after each run.

    python benchmarks/bench_memory.py [--images 16] [--side 9400]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import sys
import himr_pipe.worker as w
if sys.argv[1] == "before":
    w.BATCH_PIXELS = 10 ** 18
from himr_pipe.cli import main
main(sys.argv[2:])
"""


def run(mode: str, src: Path, out: Path, batch: int) -> tuple[float, float]:
    """(peak RSS in GiB, seconds) of one encrypt-shards child."""
    argv = ["encrypt-shards", str(src), str(out), "--workers", "0", "--no-audit", "--no-progress",
            "--batch-size", str(batch), "--shard-size", str(batch), "--state-dir", f"{out}.state"]
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, mode, *argv], capture_output=True, text=True)
    secs = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"FAILED ({mode}): exit {r.returncode}\n{r.stderr[-2000:]}")
    # RUSAGE_CHILDREN's ru_maxrss is the largest of the children waited for so far: run "after" first
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20, secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--side", type=int, default=9400)
    a = ap.parse_args()

    import numpy as np
    from PIL import Image

    from himr_pipe.decoders import BATCH_PIXELS, DEFAULT_MAX_PIXELS

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "src" / "big"
        src.mkdir(parents=True)
        img = np.full((a.side, a.side, 3), 128, np.uint8)
        img[: a.side // 2, :, 0] = 200  # two flat halves: a real scan, tiny on disk
        Image.fromarray(img).save(src / "img_00.jpg", "JPEG", quality=50)
        del img
        blob = (src / "img_00.jpg").read_bytes()
        for i in range(1, a.images):
            (src / f"img_{i:02d}.jpg").write_bytes(blob)
        after, t_after = run("after", src.parent, Path(d) / "after", a.images)
        before, t_before = run("before", src.parent, Path(d) / "before", a.images)
    px = a.side * a.side
    print(f"{a.images} JPEGs of {len(blob) / 1e3:.0f} KB, headers {a.side} x {a.side} ({px / 1e6:.1f} M pixels "
          f"each); BATCH_PIXELS {BATCH_PIXELS / 1e6:.0f} M, --max-pixels {DEFAULT_MAX_PIXELS / 1e6:.1f} M")
    print(f"  {'':<34}{'peak RSS (GiB)':<18}{'seconds':<10}")
    print(f"  {'before (one batch of all)':<34}{before:<18.2f}{t_before:<10.1f}")
    print(f"  {'after (BATCH_PIXELS budget)':<34}{after:<18.2f}{t_after:<10.1f}")
    print(f"  peak before / after = {before / after:.2f}")


if __name__ == "__main__":
    main()
