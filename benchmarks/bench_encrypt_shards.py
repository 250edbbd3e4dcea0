"""Throughput of `himr-pipe encrypt-shards` as users run it, against a naive single-process baseline.

What it measures, side by side in one run on this machine:

* naive: a plain Python loop over the files (PIL decode, shorter side to 224 +
  centre crop, RS patch shuffle in numpy with P=16, PIL JPEG q90) written with
  the standard ``tarfile`` into shards of the same size, plus a ``.cls`` member,
  run in a fresh process of its own (this script with ``--naive SRC OUT``);
* the CLI itself, ``himr-pipe encrypt-shards SRC OUT --scheme S --no-audit`` with
  every other option at its default (worker processes, threads, JPEG q90,
  ``--shard-size 250``), run as a subprocess, for S in none, rs, mi and
  mi-shuffle (the default scheme, with its default flip defence);
* the ratios rs/none, mi-shuffle/none (goal >= 0.95), mi/none (goal >= 1.0: MI
  encodes a quarter of the pixels) and rs/naive (goal >= 4);
* peak RSS of encrypt-shards, summed over the process and all its children
  (the workers are spawned processes), sampled every ~20 ms (goal < 2 GiB);
* where each scheme's time goes: the workers' stage timings from the owner's
  state (busy ms per image of each stage's thread, summed over shards).

The image set: ImageNet-like JPEGs of hundreds of sizes (``sample_data``'s
``imagenet`` sizes), 6 classes, made once and cached under ``--work``.

Why marginal rates: a run of encrypt-shards pays fixed costs (Python and torch
imports, spawning workers, building the DALI pipeline) that have nothing to
do with the steady-state speed. Each method is timed on a set of N images and
on one of 3N (default N=3000, so the difference is several seconds even for
the fastest method), and the rate reported is (3N - N) / (t_3N - t_N): the
fixed costs cancel. Methods run interleaved (every method on N, then every
method on 3N, round after round) so that drift in machine load hits all of
them alike; the figure is the median over ``--rounds`` (default 3) of each
round's marginal rate. The table also gives the marginal CPU time per image
(user + sys over all processes), which load drift hardly moves.

Run:  python benchmarks/bench_encrypt_shards.py [--n 3000] [--rounds 3] [--quick]
                                                [--workers W] [--work DIR] [--json PATH]

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
METHODS = ("naive", "none", "rs", "mi", "mi-shuffle")
GOALS = {"rs/none": 0.95, "mi-shuffle/none": 0.95, "mi/none": 1.0, "rs/naive": 4.0}
STAGES = ("read", "decode", "launch", "encrypt", "encode", "write", "wait_sink")
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


CLI_ARGS: list[str] = []  # --cli-arg: more options for every CLI run


def encrypt_shards(scheme: str, src: Path, out: Path, state: Path, workers: int | None) -> tuple[int, int]:
    """Run the CLI; returns (written, peak RSS bytes). Fails loudly on any problem."""
    cmd = [sys.executable, "-m", "himr_pipe.cli", "encrypt-shards", str(src), str(out), "--scheme", scheme,
           "--shard-size", str(SHARD_SIZE), "--state-dir", str(state), "--no-progress", "--no-audit", *CLI_ARGS]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mon = PeakRSS(proc.pid)
    log, _ = proc.communicate()
    peak = mon.stop()
    if proc.returncode != 0:
        sys.exit(f"FAILED (exit {proc.returncode}): {' '.join(cmd)}\n{log}")
    return json.loads((out / "manifest.json").read_text())["totals"]["written"], peak


def stage_ms(state: Path, count: int) -> dict:
    """Busy ms per image of each worker stage (the owner's per-shard timings, summed over shards)."""
    total = dict.fromkeys(STAGES, 0.0)
    for f in (state / "shards").glob("*.json"):
        for k, v in json.loads(f.read_text()).get("seconds", {}).items():
            total[k] = total.get(k, 0.0) + v
    return {k: 1e3 * v / count for k, v in total.items()}


# -- the benchmark ---------------------------------------------------------------------
def cpu_seconds() -> float:
    """CPU time (user + sys) of the finished child process trees (not of this script's RSS sampler)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(method: str, src: Path, work: Path, expect: int, workers: int | None) -> dict:
    """One timed run of ``method`` on ``src``: wall s, CPU s, peak RSS bytes (0 for naive), stage ms/img."""
    out, state = work / "out", work / "state"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    t, c = time.perf_counter(), cpu_seconds()
    if method == "naive":
        written, peak = run_naive(src, out), 0
    else:
        written, peak = encrypt_shards(method, src, out, state, workers)
    secs, cpu = time.perf_counter() - t, cpu_seconds() - c
    if written != expect:
        sys.exit(f"FAILED: {method} on {src} wrote {written} samples, expected {expect}")
    return {"seconds": secs, "cpu": cpu, "peak": peak, "stages": stage_ms(state, expect) if method != "naive" else None}


def summarize(n1: int, n2: int, runs: list) -> dict:
    """``runs``: one (small set, large set) pair of :func:`timed` results per round. Each round gives a
    marginal rate (its two runs were interleaved with the other methods'); the median over rounds is the
    figure (a best-of taken separately for each set pairs the luckiest small run with the luckiest large one,
    which can swing a ratio by 30%)."""
    med = statistics.median
    rates = [(n2 - n1) / (b["seconds"] - a["seconds"]) if b["seconds"] > a["seconds"] else None for a, b in runs]
    good = [r for r in rates if r is not None]  # None: noise swamped the difference
    stages = [b["stages"] for _, b in runs if b["stages"]]
    return {"seconds_n": med(a["seconds"] for a, _ in runs), "seconds_3n": med(b["seconds"] for _, b in runs),
            "marginal_img_s_per_round": rates, "marginal_img_s": med(good) if good else None,
            "end_to_end_img_s_3n": n2 / med(b["seconds"] for _, b in runs),
            "marginal_cpu_ms_per_img": med(1e3 * (b["cpu"] - a["cpu"]) / (n2 - n1) for a, b in runs),
            "peak_rss_mib": max(max(a["peak"], b["peak"]) for a, b in runs) / 2**20 or None,
            "stage_ms_per_img_3n": {k: med(s[k] for s in stages) for k in stages[0]} if stages else None}


def ratios_of(res: dict) -> dict:
    """The goals' ratios (those whose two methods ran). The figure is the median over rounds of each round's
    ratio of marginal rates: the two rates of a round were measured minutes apart, in the same machine state,
    so a round's ratio is a paired comparison; the ratio of the two medians is given beside it."""
    out = {}
    for name, goal in GOALS.items():
        if not all(m in res for m in name.split("/")):
            continue
        a, b = (res[m] for m in name.split("/"))
        per_round = [x / y for x, y in zip(a["marginal_img_s_per_round"], b["marginal_img_s_per_round"]) if x and y]
        out[name] = {"marginal": statistics.median(per_round) if per_round else None, "per_round": per_round,
                     "of_medians": a["marginal_img_s"] / b["marginal_img_s"]
                     if a["marginal_img_s"] and b["marginal_img_s"] else None,
                     "cpu": b["marginal_cpu_ms_per_img"] / a["marginal_cpu_ms_per_img"],
                     "end_to_end_3n": a["end_to_end_img_s_3n"] / b["end_to_end_img_s_3n"], "goal": goal}
    return out


def report(n1: int, n2: int, rounds: int, workers, res: dict, ratios: dict) -> None:
    def f(x, spec):
        return "n/a" if x is None else format(x, spec)

    print(f"\nencrypt-shards (CLI, defaults{'' if workers is None else f', --workers {workers}'}) vs naive: "
          f"N={n1} and 3N={n2} images, shard size {SHARD_SIZE}, {os.cpu_count()} CPUs, median of {rounds} rounds")
    print(f"{'method':11s}{'t(N) s':>9s}{'t(3N) s':>9s}{'marginal img/s':>16s}{'e2e@3N img/s':>14s}"
          f"{'cpu ms/img':>12s}{'peak RSS MiB':>14s}")
    for m, v in res.items():
        print(f"{m:11s}{v['seconds_n']:9.2f}{v['seconds_3n']:9.2f}{f(v['marginal_img_s'], '.1f'):>16s}"
              f"{v['end_to_end_img_s_3n']:14.1f}{v['marginal_cpu_ms_per_img']:12.2f}"
              f"{f(v['peak_rss_mib'], '.0f') if v['peak_rss_mib'] else '-':>14s}")
    print("(cpu ms/img: marginal CPU time, user + sys, summed over all processes and threads)")
    print("\nworker stages on the 3N set, busy ms per image of each stage's thread (median over rounds):")
    print(f"{'method':11s}" + "".join(f"{k:>10s}" for k in STAGES))
    for m, v in res.items():
        if v["stage_ms_per_img_3n"]:
            print(f"{m:11s}" + "".join(f"{v['stage_ms_per_img_3n'].get(k, 0.0):10.3f}" for k in STAGES))
    print("(decode: the main thread's wait for the decoder and its CPU resize; encode: the sink's encoder call, "
          "the CPU's fused encryption included; encrypt: the kernels' busy time within it)\n")
    for name, r in ratios.items():
        verdict = "n/a" if r["marginal"] is None else ("ok" if r["marginal"] >= r["goal"] else "BELOW GOAL")
        rounds_txt = " ".join(f(x, ".2f") for x in r["per_round"])
        print(f"{name:16s} marginal {f(r['marginal'], '.2f'):>5s}  (rounds {rounds_txt}; of medians "
              f"{f(r['of_medians'], '.2f')}; by CPU time {r['cpu']:.2f}; e2e@3N {r['end_to_end_3n']:.2f})"
              f"  goal >= {r['goal']}: {verdict}")
    worst = max(v["peak_rss_mib"] or 0 for v in res.values())
    print(f"peak RSS of encrypt-shards {worst:.0f} MiB  goal <= 2048 MiB: {'ok' if worst <= 2048 else 'ABOVE GOAL'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="N: sets of about N and 3N images (default 3000)")
    ap.add_argument("--quick", action="store_true", help="smoke run: N=300, one round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (each times every method on N and 3N); medians count")
    ap.add_argument("--workers", type=int, default=None, help="pass --workers W to the CLI (default: its own default)")
    ap.add_argument("--cli-arg", action="append", default=[],
                    help="one more option for every CLI run (repeat it), e.g. --cli-arg=--kernels=torch")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--work", type=Path, default=None, help="cache folder for the image sets and outputs")
    ap.add_argument("--json", type=Path, default=None, help="write the full results here")
    ap.add_argument("--naive", nargs=2, type=Path, metavar=("SRC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.naive:  # the child process of run_naive
        print(naive(*args.naive))
        return
    n, rounds = (300, 1) if args.quick else (args.n, args.rounds)
    CLI_ARGS.extend(args.cli_arg)
    methods = [m for m in args.methods.split(",") if m]
    if any(m not in METHODS for m in methods):
        sys.exit(f"--methods: choose from {', '.join(METHODS)}")
    work = args.work or Path(tempfile.gettempdir()) / "himr-bench-encrypt-shards"
    work.mkdir(parents=True, exist_ok=True)

    print(f"building image sets under {work}", flush=True)
    per_class = max(1, round(n / NCLASSES))
    sets = [image_set(work, per_class, seed=1), image_set(work, 3 * per_class, seed=2)]
    runs: dict = {m: [] for m in methods}
    for r in range(rounds):
        got: dict = {m: [] for m in methods}
        for src, count in sets:
            for m in methods:
                t = timed(m, src, work, count, args.workers)
                got[m].append(t)
                print(f"  [{r + 1}/{rounds}] {m:10s} {count:5d} img  {t['seconds']:7.2f} s  "
                      f"{count / t['seconds']:6.1f} img/s  cpu {t['cpu']:6.2f} s"
                      + (f"  peak RSS {t['peak'] / 2**20:6.0f} MiB" if t["peak"] else ""), flush=True)
        for m in methods:
            runs[m].append(tuple(got[m]))
    shutil.rmtree(work / "out", ignore_errors=True)
    shutil.rmtree(work / "state", ignore_errors=True)

    n1, n2 = (c for _, c in sets)
    res = {m: {"name": m, **summarize(n1, n2, runs[m])} for m in methods}
    ratios = ratios_of(res)
    report(n1, n2, rounds, args.workers, res, ratios)
    if args.json:
        args.json.write_text(json.dumps({
            "n": n1, "3n": n2, "rounds": rounds, "workers": args.workers, "cli_args": args.cli_arg, "cpus": os.cpu_count(),
            "shard_size": SHARD_SIZE, "methods": res, "ratios": ratios, "python": sys.version.split()[0],
        }, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
