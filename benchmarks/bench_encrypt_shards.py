"""Throughput of `himr-pipe encrypt-shards` against a naive single-process baseline.

What it measures, side by side in one run on this machine:

* naive: a plain Python loop over the files (PIL decode, shorter side to 224 +
  centre crop, RS patch shuffle in numpy with P=16, PIL JPEG q90) written with
  the standard ``tarfile`` into shards of the same size, plus a ``.cls`` member,
  run in a fresh process of its own (this script with ``--naive SRC OUT``);
* ``himr-pipe encrypt-shards`` with ``--scheme none``, ``rs`` and ``mi`` (default
  settings, ``--shard-size 250``), run as a subprocess;
* the ratios rs/none (goal >= 0.95) and rs/naive (goal >= 2.0);
* peak RSS of encrypt-shards, summed over the process and all its children
  (the workers are spawned processes), sampled every ~20 ms (goal < 2 GiB).

Run:  python benchmarks/bench_encrypt_shards.py [--n 1000] [--quick] [--repeat 1]
                                                [--work DIR] [--json PATH]

Why marginal rates: a run of encrypt-shards pays fixed costs (Python and torch
imports, spawning workers, building the DALI pipeline) that have nothing to
do with the steady-state speed and would dominate a small set. Each method is
timed on a set of N images and on a set of 2N images, and the rate reported
is (2N - N) / (t_2N - t_N): the fixed costs cancel. End-to-end rates at 2N are
printed too, for reference. Methods run interleaved (naive, none, rs, mi for
N, then for 2N) so that drift in machine load hits all of them alike; with
``--repeat R`` each timing is the best of R. Marginal rates come from a
difference of two timings, so they are noisy on a busy or small machine: use
``--repeat 3`` (or a larger ``--n``) for figures worth quoting. The table also
gives the marginal CPU time per image (user + sys over all processes), which
load drift hardly moves.

The naive loop in a fresh process is sensitive to glibc's malloc: every
decoded image is a large buffer that glibc maps and returns to the kernel,
costing ~0.5 ms of page faults per image. Anything that raises its thresholds
first (importing torch, or building the image sets in the same process)
makes it ~30% faster. ``MALLOC_TOP_PAD_=67108864 python benchmarks/...``
measures every method with that tuned allocator.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from himr_pipe.sample_data import PHOTOS, make_sample_folder

SIZE, PATCH, QUALITY, SHARD_SIZE = 224, 16, 90, 250
METHODS = ("naive", "none", "rs", "mi")
NCLASSES = len(PHOTOS)


# -- the image sets --------------------------------------------------------------
def image_set(work: Path, per_class: int, seed: int) -> tuple[Path, int]:
    """An ImageNet-style folder of ``per_class`` JPEGs (q90) per class, made once and cached.

    Sizes as ImageNet's (``sample_data.imagenet_like_size``): 500x375 two times in five, else each side
    uniform in 333..640, a fifth portrait; hundreds of distinct sizes. (The first version of this
    benchmark used 500x375 alone, which flattered every per-size cost.)"""
    root = work / f"set-imagenet-{per_class}x{NCLASSES}-seed{seed}"
    done = work / f"{root.name}.complete"  # outside SRC: any file there would count as an input
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        r = make_sample_folder(root, per_class=per_class, size="imagenet", quality=QUALITY, seed=seed)
        done.write_text(json.dumps(r))
        print(f"  made {r['images']} images of {r['sizes']} sizes in {root} ({time.perf_counter() - t:.0f} s)", flush=True)
    return root, per_class * NCLASSES


# -- the naive baseline -------------------------------------------------------------
def naive(src: Path, out: Path) -> int:
    """Single-process PIL + numpy + tarfile loop; returns the number of samples written."""
    rng = np.random.default_rng()
    files = [(label, f) for label, d in enumerate(sorted(p for p in src.iterdir() if p.is_dir()))
             for f in sorted(d.iterdir())]
    out.mkdir(parents=True)
    g = SIZE // PATCH
    tar, written = None, 0
    for i, (label, path) in enumerate(files):
        im = Image.open(path).convert("RGB")
        w, h = im.size
        s = SIZE / min(w, h)
        nw, nh = max(SIZE, round(w * s)), max(SIZE, round(h * s))
        im = im.resize((nw, nh), Image.BILINEAR)  # Pillow antialiases when reducing
        left, top = (nw - SIZE) // 2, (nh - SIZE) // 2
        a = np.asarray(im.crop((left, top, left + SIZE, top + SIZE)))
        patches = a.reshape(g, PATCH, g, PATCH, 3).transpose(0, 2, 1, 3, 4).reshape(g * g, PATCH, PATCH, 3)
        patches = patches[rng.permutation(g * g)]
        a = patches.reshape(g, g, PATCH, PATCH, 3).transpose(0, 2, 1, 3, 4).reshape(SIZE, SIZE, 3)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=QUALITY)
        if i % SHARD_SIZE == 0:
            if tar is not None:
                tar.close()
            tar = tarfile.open(out / f"train-{i // SHARD_SIZE:06d}.tar", "w")
        key = f"{i:09d}"
        for ext, data in (("jpg", buf.getvalue()), ("cls", str(label).encode())):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        written += 1
    if tar is not None:
        tar.close()
    return written


def run_naive(src: Path, out: Path) -> int:
    """The naive loop in a fresh process, so that nothing this script did before changes its speed."""
    proc = subprocess.run([sys.executable, __file__, "--naive", str(src), str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"FAILED: naive on {src} (exit {proc.returncode})\n{proc.stdout}{proc.stderr}")
    return int(proc.stdout.split()[-1])


# -- encrypt-shards as a subprocess, with summed peak RSS ------------------------------------
class PeakRSS:
    """Sample the RSS of a process tree every ``interval`` s in a thread; keep the peak."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.proc, self.interval, self.peak = psutil.Process(pid), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            total = 0
            try:
                for p in [self.proc] + self.proc.children(recursive=True):
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def encrypt_shards(scheme: str, src: Path, out: Path, state: Path) -> tuple[int, int]:
    """Run the CLI; returns (written, peak RSS bytes). Fails loudly on any problem."""
    cmd = [sys.executable, "-m", "himr_pipe.cli", "encrypt-shards", str(src), str(out), "--scheme", scheme,
           "--shard-size", str(SHARD_SIZE), "--state-dir", str(state), "--no-progress", "--no-audit"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mon = PeakRSS(proc.pid)
    log, _ = proc.communicate()
    peak = mon.stop()
    if proc.returncode != 0:
        sys.exit(f"FAILED (exit {proc.returncode}): {' '.join(cmd)}\n{log}")
    return json.loads((out / "manifest.json").read_text())["totals"]["written"], peak


# -- the benchmark ---------------------------------------------------------------------
def cpu_seconds() -> float:
    """CPU time (user + sys) of the finished child process trees (not of this script's RSS sampler)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(method: str, src: Path, work: Path, expect: int) -> tuple[float, float, int]:
    """One timed run of ``method`` on ``src``; returns (wall s, CPU s, peak RSS bytes or 0)."""
    out, state = work / "out", work / "state"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    t, c = time.perf_counter(), cpu_seconds()
    if method == "naive":
        written, peak = run_naive(src, out), 0
    else:
        written, peak = encrypt_shards(method, src, out, state)
    secs, cpu = time.perf_counter() - t, cpu_seconds() - c
    if written != expect:
        sys.exit(f"FAILED: {method} on {src} wrote {written} samples, expected {expect}")
    return secs, cpu, peak


def summarize(n1: int, n2: int, secs: list, cpu: list, peak_mib: float | None) -> dict:
    """``secs``, ``cpu``: one (N, 2N) pair per round. Each round gives a marginal rate (its two runs were
    interleaved with the other methods'); the median over rounds is the figure (a best-of taken separately
    for N and 2N pairs the luckiest N with the luckiest 2N, which can swing a ratio by 30%)."""
    med = statistics.median
    rates = [(n2 - n1) / (b - a) if b > a else None for a, b in secs]  # None: noise swamped the difference
    good = [r for r in rates if r is not None]
    return {"seconds_n": med(a for a, _ in secs), "seconds_2n": med(b for _, b in secs),
            "marginal_img_s_per_round": rates, "marginal_img_s": med(good) if good else None,
            "end_to_end_img_s_2n": n2 / med(b for _, b in secs),
            "marginal_cpu_ms_per_img": med(1e3 * (b - a) / (n2 - n1) for a, b in cpu),
            "peak_rss_mib": peak_mib}


def steady_state(src: Path, count: int, rounds: int) -> dict:
    """img/s of none, rs and mi in this process, warm (one worker, ``--workers 0``: no start-up at all in
    the timings), interleaved, median of ``rounds``: the cleanest ratio between schemes on a busy machine."""
    from himr_pipe.encode import choose_format
    from himr_pipe.job import JobConfig, RunOptions
    from himr_pipe.pipeline import encrypt_shards as run
    from himr_pipe.scheme import Scheme

    def once(scheme: str, out: Path) -> float:
        sch = Scheme.named(scheme, PATCH, SIZE, SIZE)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(f"{out}.state", ignore_errors=True)
        t = time.perf_counter()
        res = run(str(src), str(out), JobConfig(sch, choose_format("jpeg", sch, QUALITY), shard_size=SHARD_SIZE),
                  opts=RunOptions(workers=0, state_dir=f"{out}.state", progress=False, audit_samples=0),
                  log=lambda *a: None)
        dt = time.perf_counter() - t
        if res.exit_code != 0 or res.manifest["totals"]["written"] != count:
            sys.exit(f"FAILED: steady-state {scheme}: {res.messages}")
        return dt

    out = src.parent / "steady-out"
    once("rs", out)  # warm-up: imports, DALI pipeline, thread pools
    times: dict = {m: [] for m in METHODS[1:]}
    for r in range(rounds):
        for m in times:
            times[m].append(once(m, out))
            print(f"  [steady {r + 1}/{rounds}] {m:5s} {count} img  {times[m][-1]:6.2f} s  "
                  f"{count / times[m][-1]:6.0f} img/s", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(f"{out}.state", ignore_errors=True)
    return {m: {"seconds": v, "img_s": count / statistics.median(v)} for m, v in times.items()}


def report(n1: int, n2: int, repeat: int, res: dict, ratios: dict, worst_peak: float) -> None:
    def f(x, spec):
        return "n/a" if x is None else format(x, spec)

    print(f"\nencrypt-shards vs naive: N={n1} and 2N={n2} images, shard size {SHARD_SIZE}, "
          f"{os.cpu_count()} CPUs, median of {repeat} rounds")
    print(f"{'method':8s}{'t(N) s':>9s}{'t(2N) s':>9s}{'marginal img/s':>16s}{'e2e@2N img/s':>14s}"
          f"{'cpu ms/img':>12s}{'peak RSS MiB':>14s}")
    for m, v in res.items():
        print(f"{m:8s}{v['seconds_n']:9.2f}{v['seconds_2n']:9.2f}{f(v['marginal_img_s'], '.1f'):>16s}"
              f"{v['end_to_end_img_s_2n']:14.1f}{v['marginal_cpu_ms_per_img']:12.2f}"
              f"{f(v['peak_rss_mib'], '.0f') if v['peak_rss_mib'] else '-':>14s}")
    print("(cpu ms/img: marginal CPU time, user + sys, summed over all processes and threads)")
    for name, r in ratios.items():
        verdict = "n/a" if r["marginal"] is None else ("ok" if r["marginal"] >= r["goal"] else "BELOW GOAL")
        print(f"{name:9s} marginal {f(r['marginal'], '.2f'):>5s}  (e2e@2N {r['end_to_end_2n']:.2f})"
              f"  goal >= {r['goal']}: {verdict}")
    print(f"peak RSS of encrypt-shards {worst_peak:.0f} MiB  goal < 2048 MiB: "
          f"{'ok' if worst_peak < 2048 else 'ABOVE GOAL'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="N: sets of about N and 2N images (default 1000)")
    ap.add_argument("--quick", action="store_true", help="smoke run: N=200")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (each times every method on N and 2N); medians count")
    ap.add_argument("--steady", type=int, default=3,
                    help="rounds of the in-process steady-state comparison on the 2N set (0: skip it)")
    ap.add_argument("--work", type=Path, default=None, help="cache folder for the image sets and outputs")
    ap.add_argument("--json", type=Path, default=None, help="write the full results here")
    ap.add_argument("--naive", nargs=2, type=Path, metavar=("SRC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.naive:  # the child process of run_naive
        print(naive(*args.naive))
        return
    n = 200 if args.quick else args.n
    work = args.work or Path(tempfile.gettempdir()) / "himr-bench-encrypt-shards"
    work.mkdir(parents=True, exist_ok=True)

    print(f"building image sets under {work}", flush=True)
    per_class = max(1, round(n / NCLASSES))
    sets = [image_set(work, per_class, seed=1), image_set(work, 2 * per_class, seed=2)]
    secs = {m: [] for m in METHODS}
    cpu = {m: [] for m in METHODS}
    peak = {m: 0 for m in METHODS}
    for r in range(args.repeat):
        rs, cs = {m: [] for m in METHODS}, {m: [] for m in METHODS}
        for k, (src, count) in enumerate(sets):
            for m in METHODS:
                s, c, p = timed(m, src, work, count)
                rs[m].append(s)
                cs[m].append(c)
                peak[m] = max(peak[m], p)
                print(f"  [{r + 1}/{args.repeat}] {m:5s} {count:5d} img  {s:7.2f} s  {count / s:6.1f} img/s"
                      f"  cpu {c:6.2f} s"
                      + (f"  peak RSS {p / 2**20:6.0f} MiB" if p else ""), flush=True)
        for m in METHODS:
            secs[m].append(tuple(rs[m]))
            cpu[m].append(tuple(cs[m]))
    shutil.rmtree(work / "out", ignore_errors=True)
    shutil.rmtree(work / "state", ignore_errors=True)
    steady = steady_state(*sets[1], args.steady) if args.steady else None

    n1, n2 = (c for _, c in sets)
    res = {m: {"name": m, **summarize(n1, n2, secs[m], cpu[m], peak[m] / 2**20 if m != "naive" else None)}
           for m in METHODS}
    ratios = {}
    for name, goal in (("rs/none", 0.95), ("rs/naive", 2.0)):
        a, b = (res[m] for m in name.split("/"))
        ratios[name] = {"marginal": a["marginal_img_s"] / b["marginal_img_s"]
                        if a["marginal_img_s"] and b["marginal_img_s"] else None,
                        "end_to_end_2n": a["end_to_end_img_s_2n"] / b["end_to_end_img_s_2n"], "goal": goal}
        if steady:  # naive has no start-up to speak of: its end-to-end rate is its steady rate
            ours = steady[name.split("/")[0]]["img_s"]
            ratios[name]["steady"] = ours / (steady[b["name"]]["img_s"] if b["name"] in steady
                                             else b["end_to_end_img_s_2n"])
    worst_peak = max(peak.values()) / 2**20
    report(n1, n2, args.repeat, res, ratios, worst_peak)
    if steady:
        print(f"steady state in one process on the 2N set (median of {args.steady}): "
              + ", ".join(f"{m} {v['img_s']:.0f} img/s" for m, v in steady.items()))
        for name, r in ratios.items():
            print(f"{name:9s} steady   {r['steady']:.2f}  goal >= {r['goal']}: "
                  f"{'ok' if r['steady'] >= r['goal'] else 'BELOW GOAL'}")
    if args.json:
        args.json.write_text(json.dumps({
            "n": n1, "2n": n2, "repeat": args.repeat, "cpus": os.cpu_count(), "shard_size": SHARD_SIZE,
            "methods": res, "ratios": ratios, "steady_state": steady, "peak_rss_mib": worst_peak,
            "python": sys.version.split()[0],
        }, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
