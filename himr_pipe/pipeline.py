"""encrypt-shards: source -> decode + resize -> encrypt -> encode -> shard sink.

The main process enumerates SRC, plans the shards (sample order drawn from
the job key), and hands whole shards to worker processes (the shard is the
unit of work, as in img2dataset). A worker reads and screens the bytes of
its samples, decodes and resizes them in batches with DALI, encrypts each
batch with one kernel call, encodes the images in a thread pool (simplejpeg
releases the GIL) while DALI already decodes the next batch, and writes the
shard under a temporary name. Its stats go to the owner's state, then the
shard is renamed into place. A rerun finds complete shards and redoes the
rest; because order and permutations derive from the job key, shard by
shard, the result is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, keys
from .decode import DEFAULT_MAX_PIXELS, RESIZE_MODES, DecodeBatch, Header, inspect_header
from .encode import ImageFormat
from .lock import LOCK_NAME, OutLock, OutLocked
from .manifest import (MANIFEST, TIMM_INFO, Manifest, ManifestError, build_manifest, build_timm_info,
                       write_json_atomic)
from .state import OwnerState
from .scheme import Scheme
from .shards import ShardWriter, shard_name
from .sources import DEFAULT_MAX_BYTES, Input, InputError, Source, open_source, read_input

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
# --views K > 1: torchvision's RandomResizedCrop defaults, then a horizontal flip half of the time
VIEW_TRANSFORM = {"random_resized_crop": {"scale": [0.08, 1.0], "ratio": [3 / 4, 4 / 3]}, "hflip": 0.5}
AUDIT_SAMPLES = 4  # the quick audit that ends a run: a few seconds, figures into the manifest
FAILPOINT_ENV = "HIMR_PIPE_FAILPOINT"  # "kill-after=N": SIGKILL the worker after N samples (tests)


class JobError(Exception):
    """A problem found before any work: the run does not start."""


@dataclass(frozen=True)
class JobConfig:
    """What defines the output. Two runs with equal configs write the same OUT."""

    scheme: Scheme
    fmt: ImageFormat
    resize: str = "crop"
    shard_size: int = 1000
    split: str = "train"
    shuffle: bool = True
    seeded: bool = False
    include_paths: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    decoder: str = "dali"      # decode stage: they resize alike but not pixel for pixel
    encoder: str = "cpu"       # encode stage (resolved, never "auto"): codecs differ in bytes
    views: int = 1             # >1: that many random-resized-crop + flip views per input, each a sample

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise JobError(f"--resize must be one of {RESIZE_MODES}")
        if self.shard_size < 1:
            raise JobError("--shard-size must be at least 1")
        if self.views < 1:
            raise JobError("--views must be at least 1")
        if not self.split or any(c in self.split for c in "/\\{}. "):
            raise JobError(f"--split {self.split!r} must be a plain name (it prefixes the shard files)")

    def public(self) -> dict:
        """The job as written into the manifest: all parameters, never a seed."""
        return {
            "tool": f"himr-pipe {__version__}",
            "scheme": self.scheme.to_dict(),
            "format": self.fmt.to_dict(),
            "resize": self.resize,
            "shard_size": self.shard_size,
            "split": self.split,
            "shuffle": self.shuffle,
            "randomness": "seeded" if self.seeded else "cryptographic",
            "randomness_note": (
                "sample order and permutations are reproducible by whoever holds the seed; the seed is not stored here"
                if self.seeded else
                "sample order and permutations come from a key drawn from the OS's cryptographic source; "
                "it is kept only in the owner's state, never in this folder"),
            "include_paths": self.include_paths,
            "max_pixels": self.max_pixels,
            "max_bytes": self.max_bytes,
            "decoder": self.decoder,
            "encoder": self.encoder,
            "views": self.views,
            "view_transform": VIEW_TRANSFORM if self.views > 1 else None,
        }

    @classmethod
    def from_public(cls, d: dict) -> "JobConfig":
        from .encode import ImageFormat

        f = d["format"]
        fmt = ImageFormat(f["name"], f.get("quality", 90), f.get("subsampling", "444"), f.get("compress_level", 1))
        return cls(Scheme.from_dict(d["scheme"]), fmt, d["resize"], d["shard_size"], d["split"], d["shuffle"],
                   d["randomness"] == "seeded", d["include_paths"], d["max_pixels"], d["max_bytes"],
                   d.get("decoder", "dali"), d.get("encoder", "cpu"), d.get("views", 1))


@dataclass
class RunOptions:
    """How to run; does not change the output."""

    workers: int = 1           # worker processes; 0 runs in this process
    threads: int = 0           # DALI + encoder threads per worker; 0 = cpu_count // workers
    batch_size: int = 64
    state_dir: str | None = None
    progress: bool | None = None   # None: on when stderr is a terminal
    device: str = "cpu"            # "cpu" or "cuda[:N]": where decode, encryption and encode run
    kernels: str = "auto"          # "auto" (Triton on CUDA, torch on CPU), "torch" or "triton"
    audit_samples: int = AUDIT_SAMPLES  # quick audit of this many samples at the end (0: none)


@dataclass
class RunResult:
    manifest: dict
    exit_code: int
    seconds: float
    processed: int = 0
    state_dir: str = ""
    messages: list[str] = field(default_factory=list)


# -- the plan -----------------------------------------------------------------------
def plan_shards(source: Source, key_hex: str, cfg: JobConfig) -> list[list[tuple[Input, int]]]:
    """Cut the accepted inputs (x their views) into shards, in an order drawn from the job key."""
    ok = [(i, v) for i in source.inputs if i.skip is None for v in range(cfg.views)]
    if cfg.shuffle:
        ok = [ok[j] for j in keys.sample_order(key_hex, len(ok))]
    return [ok[s:s + cfg.shard_size] for s in range(0, len(ok), cfg.shard_size)]


# -- the worker -----------------------------------------------------------------
@dataclass(frozen=True)
class PlannedSample:
    """One sample of a shard's plan: an input (or one of its views) at a position of the shard."""

    pos: int        # position in the shard's plan: the output key is {shard:06d}_{pos:06d}
    index: int      # the input's sample id (its position in the sorted source listing)
    ref: str        # owner-side name; never written to OUT unless --include-paths
    label: int
    loc: tuple      # where its bytes are (sources.read_input)
    view: int = 0   # which of --views


@dataclass(frozen=True)
class ScreenedSample:
    """A planned sample whose bytes passed the header check, on its way through the decoder."""

    sample: PlannedSample
    header: Header


@dataclass(frozen=True)
class ShardTask:
    index: int
    name: str
    items: tuple  # of PlannedSample, in plan order


class _Worker:
    """Per-process state: one DALI pipeline and one encoder pool, reused across shards."""

    def __init__(self, cfg: JobConfig, key_hex: str, out_dir: str, state_dir: str, threads: int,
                 batch_size: int, device: str = "cpu", kernels: str = "auto", progress=None):
        import torch

        from .decode import make_decoder
        from .encode import make_encoder

        torch.set_num_threads(1)
        self.cfg = cfg
        self.key_hex = key_hex
        self.out_dir = out_dir
        self.state_dir = state_dir
        self.batch_size = batch_size
        self.device = device
        self.kernels = kernels
        self.decoder = make_decoder(cfg.decoder, cfg.scheme.size, cfg.resize, batch_size, threads, device,
                                    views=cfg.views > 1)
        self.encoder = make_encoder(cfg.encoder, cfg.fmt, threads, device)
        self.progress = progress
        s = cfg.scheme
        self.sample_meta = {"scheme": s.name, "size": list(s.out_size), "patch": s.out_cell}
        self.sample_json = json.dumps(self.sample_meta).encode()
        fp = os.environ.get(FAILPOINT_ENV, "")
        self.kill_after = int(fp.split("=", 1)[1]) if fp.startswith("kill-after=") else None
        self.done_samples = 0

    def _batches(self, items, skipped: list, draws: np.ndarray | None = None):
        """Read and screen inputs; yield DecodeBatches whose tag lists the ScreenedSamples they hold."""
        cfg = self.cfg

        def batch(data, screened, wins):
            return DecodeBatch(data, np.array(wins, np.float32) if draws is not None else None, screened)

        data, screened, wins = [], [], []
        for it in items:
            try:
                blob = read_input(it.loc, cfg.max_bytes)
                hdr = inspect_header(blob, cfg.max_pixels)
            except InputError as e:
                skipped.append((it.index, it.ref, e.reason))
                continue
            data.append(blob)
            screened.append(ScreenedSample(it, hdr))
            if draws is not None:
                wins.append(view_window(draws[it.pos], hdr.width, hdr.height))
            if len(data) == self.batch_size:
                yield batch(data, screened, wins)
                data, screened, wins = [], [], []
        if data:
            yield batch(data, screened, wins)

    def _report(self, n: int) -> int:
        if self.progress is not None and n:
            self.progress(n)
        return n

    def run(self, task: ShardTask) -> dict:
        import torch

        from himr_pipe.kernels import encrypt, make_permutations

        cfg, s = self.cfg, self.cfg.scheme
        perm_keys = None  # shuffled schemes: one row of sort keys per planned sample; sorted on the device per batch
        n = len(task.items)
        if s.shuffled:
            perm_keys = keys.permutation_keys(self.key_hex, task.index, n, s.num_patches)
        draws = None  # --views: five uniform draws per planned sample (crop window and flip)
        if cfg.views > 1:
            draws = keys.view_draws(self.key_hex, task.index, n)
        writer = ShardWriter(self.out_dir, task.name)
        skipped: list[tuple[int, str, str]] = []
        written: list[tuple[str, int, str]] = []
        count = {"upscaled": 0, "reported": 0}
        # seconds per stage, kept in the owner's state: where a shard's time went
        timing = {"read_decode": 0.0, "encrypt": 0.0, "encode": 0.0, "write": 0.0}
        ext = cfg.fmt.ext
        clock = time.perf_counter

        def sink(enc, meta, n_bad):
            """Encode and write one batch, in batch order."""
            if meta:
                t1 = clock()
                blobs = self.encoder.encode(enc)  # waits for the (asynchronous) kernel on a GPU
                t2 = clock()
                timing["encode"] += t2 - t1
                for sc, blob in zip(meta, blobs):
                    it = sc.sample
                    key = f"{task.index:06d}_{it.pos:06d}"
                    members = {ext: blob, "cls": str(it.label).encode(), "json": self.sample_json}
                    if cfg.include_paths or cfg.views > 1:
                        extra = {"view": it.view} if cfg.views > 1 else {}
                        if cfg.include_paths:
                            extra["source"] = it.ref
                        members["json"] = json.dumps({**self.sample_meta, **extra}).encode()
                    writer.add(key, members)
                    written.append((key, it.index, it.ref))
                    count["upscaled"] += _upscaled(sc.header, s.size, cfg.resize)
                timing["write"] += clock() - t2
                self.done_samples += len(meta)
            count["reported"] += self._report(len(meta) + n_bad)
            if self.kill_after is not None and self.done_samples >= self.kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        try:
            t = clock()
            for batch, images, bad in self.decoder.run(self._batches(task.items, skipped, draws)):
                timing["read_decode"] += clock() - t
                meta = batch.tag  # the ScreenedSamples of this batch, in batch order
                for j in sorted(bad):
                    skipped.append((meta[j].sample.index, meta[j].sample.ref, bad[j]))
                meta = [m for j, m in enumerate(meta) if j not in bad]
                enc = None
                if meta:
                    t = clock()
                    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(images)
                    x = x.to(self.device)
                    perms = None
                    if perm_keys is not None:
                        rows = torch.from_numpy(perm_keys[[m.sample.pos for m in meta]]).to(self.device,
                                                                                             non_blocking=True)
                        perms = make_permutations(rows)
                    enc = encrypt(s, x, perms, impl=self.kernels)
                    timing["encrypt"] += clock() - t
                # No sink thread: measured, encoding and writing in a thread of their own (overlapping the
                # next batch) ran no faster on the CPU or on an H100 (the GIL; DALI already decodes ahead).
                sink(enc, meta, len(bad))
                t = clock()
            self._report(len(task.items) - count["reported"])  # inputs rejected before decoding
            info = writer.commit()
        except BaseException:
            writer.abort()
            raise
        stats = {
            "index": task.index, "name": task.name, "planned": len(task.items),
            "samples": info.samples, "bytes": info.bytes, "sha256": info.sha256, "upscaled": count["upscaled"],
            "written": written, "skipped": sorted(skipped), "seconds": timing,
            "inputs_written": sorted({w[1] for w in written}),
        }
        if info.samples == 0:
            writer.abort()  # an empty tar helps no reader; the stats still account for every input
            stats.update(bytes=0, sha256=None)
        # state first, then the rename: a shard under its final name always has its stats
        OwnerState(self.state_dir).write_shard(stats)
        if info.samples:
            writer.publish()
        return {k: v for k, v in stats.items() if k not in ("written",)}


def view_window(u, width: int, height: int) -> tuple[float, float, float, float, float]:
    """RandomResizedCrop's window from five uniform draws, relative to the image (see decode.VIEW_FIELDS).

    Area fraction uniform in ``scale``, log aspect ratio uniform in ``ratio``;
    a window too large for the image is clipped to it (torchvision retries
    instead; clipping keeps one draw per view, which keeps resume exact).
    """
    rrc = VIEW_TRANSFORM["random_resized_crop"]
    lo, hi = rrc["scale"]
    area = lo + float(u[0]) * (hi - lo)
    lr0, lr1 = math.log(rrc["ratio"][0]), math.log(rrc["ratio"][1])
    r = math.exp(lr0 + float(u[1]) * (lr1 - lr0))
    rw = min(1.0, math.sqrt(area * r * height / width))
    rh = min(1.0, math.sqrt(area / r * width / height))
    return (float(u[2]) * (1 - rw), float(u[3]) * (1 - rh), rw, rh, float(u[4]))


def _upscaled(hdr, size, resize) -> bool:
    h, w = size
    return hdr.width < w or hdr.height < h if resize == "stretch" else (
        min(hdr.width / w, hdr.height / h) < 1.0)


_WORKER: _Worker | None = None


def _init_worker(cfg_public: dict, key_hex: str, out_dir: str, state_dir: str, threads: int,
                 batch_size: int, device: str, kernels: str, queue) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C
    cfg = JobConfig.from_public(cfg_public)
    _WORKER = _Worker(cfg, key_hex, out_dir, state_dir, threads, batch_size, device, kernels,
                      progress=lambda n: queue.put(n))


def _run_task(task: ShardTask) -> dict:
    assert _WORKER is not None
    return _WORKER.run(task)


# -- the job ----------------------------------------------------------------------
def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if k in ("tool", "randomness_note"):
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, prefix + k + ".")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def _own_files(out: Path, prefix: str) -> bool:
    """True when every entry of OUT is something this tool writes."""
    for e in os.listdir(out):
        if e in (MANIFEST, TIMM_INFO, MANIFEST + ".tmp", TIMM_INFO + ".tmp", LOCK_NAME):
            continue
        if e.endswith(".tar") or e.endswith(".tar.tmp"):
            continue
        return False
    return True


def prepare(src: str, out: str, cfg: JobConfig, seed: int | None, opts: RunOptions):
    """All checks that must pass before any work; returns (source, state_dir, key, lock).

    From the moment OUT exists this run holds its lock (:mod:`.lock`): a second run on the same OUT is
    refused here, before it reads or writes anything. The caller releases the lock when the run ends."""
    if (seed is not None) != cfg.seeded:
        raise ValueError("cfg.seeded must match whether a seed is given")
    from .sources import SourceError

    try:
        source = open_source(src)
    except SourceError as e:
        raise JobError(str(e)) from None
    outp = Path(out)
    if outp.exists() and not outp.is_dir():
        raise JobError(f"OUT {out!r} exists and is not a folder")
    outp.mkdir(parents=True, exist_ok=True)
    lock = OutLock(out)
    try:
        lock.__enter__()
    except OutLocked as e:
        raise JobError(str(e)) from None
    try:
        return (*_prepare_locked(src, out, outp, cfg, seed, opts, source), lock)
    except BaseException:
        lock.__exit__(None, None, None)
        raise


def _prepare_locked(src: str, out: str, outp: Path, cfg: JobConfig, seed: int | None, opts: RunOptions, source):
    srcp = Path(src)
    if srcp.exists() and srcp.is_dir() and (outp.resolve() == srcp.resolve() or srcp.resolve() in outp.resolve().parents):
        raise JobError("OUT must not be inside SRC")
    ostate = OwnerState.for_out(out, opts.state_dir)
    state = ostate.path
    if state.resolve() == outp.resolve() or outp.resolve() in state.resolve().parents:
        raise JobError("the state folder holds the owner's secrets and must not be inside OUT")
    job = cfg.public()
    mpath = outp / MANIFEST
    manifest = None
    if mpath.exists():
        try:
            manifest = Manifest.load(out).data
        except ManifestError as e:
            raise JobError(f"{e}; use an empty OUT") from None
        diff = _diff(manifest.get("job", {}), job)
        if diff:
            raise JobError("OUT holds the manifest of a different job (" + "; ".join(diff[:5]) +
                           "). Rerun with the same options to resume it, or use an empty OUT.")
    elif not _own_files(outp, cfg.split):
        raise JobError(f"OUT {out!r} is not empty and holds no himr-pipe manifest; use an empty or new folder")

    jstate = ostate.read_job()
    fresh = manifest is None and not any(e.endswith(".tar") for e in os.listdir(outp))
    if fresh or jstate is None:
        if not fresh:
            if manifest is not None and manifest.get("status") == "complete":
                jstate = None  # complete and traceable from the manifest alone: nothing to resume
            else:
                raise JobError(f"OUT holds a partial run but the owner state for it is missing ({state}); "
                               "pass the --state-dir of that run, or start again in an empty OUT")
        if jstate is None:
            key = keys.key_from_seed(seed) if seed is not None else keys.new_key()
            jstate = {"job": job, "key": key, "seed_check": keys.seed_digest(seed, key) if seed is not None else None,
                      "source": {"kind": source.kind, "root": os.path.abspath(src), "fingerprint": source.fingerprint,
                                 "inputs": len(source.inputs)},
                      "out": os.path.abspath(out)}
            ostate.start(jstate)
    else:
        diff = _diff(jstate["job"], job)
        if diff:
            raise JobError(f"the owner state at {state} belongs to a different job ({'; '.join(diff[:5])})")
        if seed is not None and jstate.get("seed_check") != keys.seed_digest(seed, jstate["key"]):
            raise JobError("--seed differs from the seed of the interrupted run; rerun with the same seed")
        if jstate["source"]["fingerprint"] != source.fingerprint:
            raise JobError("SRC changed since the interrupted run (files added, removed or modified); "
                           "rerun on the same SRC or start again in an empty OUT")
    if manifest is None or manifest.get("status") != "complete":
        write_json_atomic(mpath, build_manifest(job, source.classes, source.empty_classes, [],
                                                len(source.inputs), [], 0, "incomplete"))
    return source, state, jstate["key"]


def encrypt_shards(src: str, out: str, cfg: JobConfig, seed: int | None = None,
                   opts: RunOptions | None = None, log=print) -> RunResult:
    opts = opts or RunOptions()
    t0 = time.time()
    source, state, key, lock = prepare(src, out, cfg, seed, opts)
    try:
        return _run(src, out, cfg, opts, t0, source, state, key)
    finally:
        lock.__exit__(None, None, None)


def _run(src: str, out: str, cfg: JobConfig, opts: RunOptions, t0: float, source, state, key) -> RunResult:
    shards = plan_shards(source, key, cfg)
    names = [shard_name(cfg.split, i) for i in range(len(shards))]
    for e in os.listdir(out):
        if e.startswith(f".{cfg.split}-") and e.endswith(".tar.tmp"):
            os.remove(os.path.join(out, e))  # leftovers of an interrupted run

    done: dict[int, dict] = {}
    todo: list[ShardTask] = []
    for i, items in enumerate(shards):
        st = OwnerState(state).read_shard(i)
        final = os.path.join(out, names[i])
        if st is not None and st.get("planned") == len(items) and (
                st["samples"] == 0 or (os.path.exists(final) and os.path.getsize(final) == st["bytes"])):
            done[i] = st
            continue
        todo.append(ShardTask(i, names[i], tuple(PlannedSample(pos, x.index, x.ref, x.label, x.loc, v)
                                                for pos, (x, v) in enumerate(items))))

    total_inputs = len(source.inputs)
    pre_skipped = [(x.index, x.ref, x.skip) for x in source.inputs if x.skip is not None]
    remaining = sum(len(t.items) for t in todo)
    threads = opts.threads or max(1, (os.cpu_count() or 1) // max(1, opts.workers))
    show = sys.stderr.isatty() if opts.progress is None else opts.progress
    from tqdm import tqdm

    bar = tqdm(total=remaining, unit="img", disable=not show, dynamic_ncols=True, smoothing=0.1,
               desc=f"encrypt-shards {cfg.scheme.name}")
    failure = None
    try:
        if opts.workers == 0:
            w = _Worker(cfg, key, out, str(state), threads, opts.batch_size, opts.device, opts.kernels,
                        progress=bar.update)
            for t in todo:
                try:
                    done[t.index] = w.run(t)
                except Exception as e:  # an I/O error (disk full...) or a bug: stop cleanly, keep what is done
                    failure = f"shard {t.name} failed: {type(e).__name__}: {e}"
                    break
        elif todo:
            failure = _run_pool(cfg, key, out, str(state), threads, opts, todo, done, bar)
    except KeyboardInterrupt:
        failure = "interrupted"
    finally:
        bar.close()

    # The manifest is assembled from the per-shard stats, complete or not.
    shard_recs, skipped, upscaled, inputs_written = [], {}, 0, set()
    for idx, ref, reason in pre_skipped:
        skipped[idx] = (idx, ref, reason)
    for i in sorted(done):
        st = done[i]
        for x in st["skipped"]:  # with --views an input is planned once per view: count it once
            skipped[x[0]] = tuple(x)
        inputs_written.update(st["inputs_written"])
        upscaled += st.get("upscaled", 0)
        if st["samples"]:
            shard_recs.append({"name": st["name"], "samples": st["samples"], "bytes": st["bytes"],
                               "sha256": st["sha256"]})
    skipped = sorted(skipped.values())
    skip_recs = [({"input": i, "reason": r, "path": ref} if cfg.include_paths else {"input": i, "reason": r})
                 for i, ref, r in skipped]
    complete = failure is None and len(done) == len(shards)
    manifest = build_manifest(cfg.public(), source.classes, source.empty_classes, shard_recs, total_inputs,
                              skip_recs, upscaled, "complete" if complete else "incomplete", len(inputs_written))
    if complete:
        t = manifest["totals"]
        assert t["inputs_written"] + t["skipped"] == total_inputs, t
        assert t["written"] == t["inputs_written"] * cfg.views, t
        write_json_atomic(os.path.join(out, TIMM_INFO), build_timm_info(cfg.split, shard_recs))
        # the owner's copy of what was skipped, by name
        OwnerState(state).write_skipped([{"input": i, "path": ref, "reason": r} for i, ref, r in skipped])
    write_json_atomic(os.path.join(out, MANIFEST), manifest)
    secs = time.time() - t0  # the run's own time; the quick audit's is recorded with its figures
    msgs = []
    if complete and opts.audit_samples > 0 and cfg.scheme.kind != "none" and manifest["totals"]["written"]:
        # after the complete manifest is on disk: an interrupted audit never leaves OUT unfinished
        manifest["audit"] = quick_audit(out, str(state), opts.audit_samples, source, msgs)
        write_json_atomic(os.path.join(out, MANIFEST), manifest)
    if failure:
        msgs.append(f"run stopped: {failure}. Complete shards are kept; rerun the same command to resume.")
        code = EXIT_FAILED
    else:
        code = EXIT_PARTIAL if skipped else EXIT_OK
    return RunResult(manifest, code, secs, remaining, str(state), msgs)


def quick_audit(out: str, state: str, samples: int, source, msgs: list) -> dict:
    """Attack a few samples of the finished OUT; the figures (numbers only) go into the manifest.

    The same sampler and attack as ``himr-pipe audit OUT --samples N --seed 0``, so that command
    reproduces these figures. A setting over the leak budget adds one plain warning line.
    """
    from .audit.attack import warning_line
    from .audit.report import audit_out, manifest_figures
    from .scheme import Scheme

    t = time.perf_counter()
    try:
        report, _ = audit_out(out, samples, state, seed=0, source=source)
    except Exception as e:  # the audit must never cost the user a finished run
        msgs.append(f"the quick audit failed ({type(e).__name__}: {e}); run himr-pipe audit OUT to measure the leak")
        return {"error": f"{type(e).__name__}: {e}"}
    fig = manifest_figures(report)
    msgs.append(f"quick audit: {time.perf_counter() - t:.0f} s")
    warn = warning_line(Scheme.from_dict(report["scheme"]), report["mean"])
    if warn:
        msgs.append(warn)
    return fig


def _run_pool(cfg, key, out, state, threads, opts, todo, done, bar) -> str | None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # DALI and torch threads do not survive fork
    queue = ctx.Queue()
    failure = None
    with ProcessPoolExecutor(max_workers=min(opts.workers, len(todo)), mp_context=ctx,
                             initializer=_init_worker,
                             initargs=(cfg.public(), key, out, state, threads, opts.batch_size,
                                       opts.device, opts.kernels, queue)) as ex:
        futs = {ex.submit(_run_task, t): t for t in todo}
        pending = set(futs)
        try:
            while pending:
                fin, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(queue, bar)
                for f in fin:
                    try:
                        st = f.result()
                        done[st["index"]] = st
                    except BrokenProcessPool:
                        failure = "a worker process died (killed or crashed)"
                    except Exception as e:  # a bug or an I/O error in one shard
                        failure = f"shard {futs[f].name} failed: {type(e).__name__}: {e}"
                if failure:
                    for f in pending:
                        f.cancel()
                    break
        except KeyboardInterrupt:
            for f in pending:
                f.cancel()
            failure = "interrupted"
        _drain(queue, bar)
    return failure


def _drain(queue, bar) -> None:
    import queue as q

    while True:
        try:
            bar.update(queue.get_nowait())
        except q.Empty:
            return
        except (OSError, ValueError, EOFError):
            return
