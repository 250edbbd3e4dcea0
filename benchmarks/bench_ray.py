"""The Ray distributor's overhead against local processes, measured side by side on this machine.

Both run ``himr-pipe encrypt-shards --scheme rs`` (the same images, the same shards) as a subprocess:

* local: ``--workers W`` spawned processes;
* ray: ``--distributor ray --workers W`` (a local Ray with W CPUs, started by the run, one task per shard).

Marginal rates over sets of N and 2N images, (2N - N) / (t_2N - t_N), so that fixed costs (imports,
worker spawn, Ray's start-up of about 5 s) cancel; methods interleaved, best of ``--repeat``. The figure is
ray / local (goal >= 0.9). The image sets are bench_encrypt_shards.py's (500x375 JPEGs, cached).

Run:  python benchmarks/bench_ray.py [--n 1000] [--workers 2] [--repeat 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_encrypt_shards import NCLASSES, SHARD_SIZE, image_set  # noqa: E402


def run(method: str, src: Path, work: Path, workers: int) -> float:
    out, state = work / f"out-{method}", work / f"state-{method}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    cmd = [sys.executable, "-m", "himr_pipe.cli", "encrypt-shards", str(src), str(out), "--scheme", "rs",
           "--shard-size", str(SHARD_SIZE), "--state-dir", str(state), "--no-progress", "--no-audit",
           "--workers", str(workers), "--threads", "1"]
    if method == "ray":
        cmd += ["--distributor", "ray"]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"FAILED ({method}): {p.stdout}\n{p.stderr}")
    return secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    work = a.work or Path(tempfile.gettempdir()) / "himr-bench-encrypt-shards"
    work.mkdir(parents=True, exist_ok=True)
    per = max(1, a.n // NCLASSES)
    sets = {k: image_set(work, m, seed) for k, m, seed in (("n", per, 1), ("2n", 2 * per, 2))}
    best: dict = {}
    for r in range(a.repeat):
        for k, (src, _) in sets.items():
            for method in ("local", "ray"):
                s = run(method, src, work, a.workers)
                best[(method, k)] = min(best.get((method, k), s), s)
                print(f"  round {r + 1}: {method:5s} {k:2s} {s:6.1f} s", flush=True)
    n1, n2 = sets["n"][1], sets["2n"][1]
    rate = {m: (n2 - n1) / max(1e-9, best[(m, "2n")] - best[(m, "n")]) for m in ("local", "ray")}
    res = {"n": n1, "2n": n2, "workers": a.workers, "seconds": {f"{m}/{k}": v for (m, k), v in best.items()},
           "marginal_img_s": rate, "ray_over_local": rate["ray"] / rate["local"]}
    print(f"\nmarginal img/s over {n1} -> {n2} images, {a.workers} workers, best of {a.repeat}:")
    print(f"  local processes {rate['local']:7.0f}\n  ray             {rate['ray']:7.0f}\n"
          f"  ray / local     {res['ray_over_local']:7.2f}  (goal >= 0.9)")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
