"""The worker: one shard, start to end, on any device.

It reads and screens the bytes of its planned samples (a reader thread, two
batches ahead), decodes and resizes them in batches (DALI, torchvision or
nvImageCodec; the next batch decodes while this one is resized), encrypts
them (on a GPU one kernel call a batch, into a reused buffer; on the CPU one
image at a time inside the encoder's call, in the thread that encodes it:
:class:`Fused`), encodes them and writes them a batch at a time (the sink thread), into
the shard under a temporary name (a local spool file when OUT is on an object store),
then publishes it atomically (:mod:`.storage`). It returns the shard's stats
and never touches the owner's state: the driver records them (so a worker
on another node needs no access to the owner's machine). A shard published
whose stats were not recorded (a crash in between) is simply redone, and a
redone shard is byte-identical, because order and permutations derive from
the job key, shard by shard.

What it composes lives beside it: the plan's records (:mod:`.plan`), the crop and letterbox geometry
(:mod:`.geometry`), and the thread stages and buffers (:mod:`.stages`). :class:`WorkerHooks` are the calls a
worker makes at fixed points of a shard (the tests inject crashes and slow-downs there).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import keys
from .decoders import BATCH_PIXELS, DecodeBatch, Header, screen
from .geometry import decode_geometry
from .lock import publish_held
from .plan import JobConfig, PlannedSample, ShardTask
from .state import ShardStats
from .stages import BufferPool, Prefetch, Sink, ordered_map
from .shards import ShardWriter
from .sources import InputError, ShardReader
from .storage import Location

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ScreenedSample:
    """A planned sample whose bytes passed the header check, on its way through the decoder."""

    sample: PlannedSample
    header: Header
    frame: object = None  # resize "letterbox": the boxes.Frame from the original image to the canvas


class ShardWorker:
    """Per-process state: one DALI pipeline and one encoder pool, reused across shards."""

    def __init__(self, cfg: JobConfig, key_hex: str, out_dir: str, threads: int,
                 batch_size: int, device: str = "cpu", kernels: str = "auto", progress=None,
                 driver: tuple | None = None, hooks: WorkerHooks | None = None):
        import torch

        from .decoders import make_decoder
        from .encode import make_encoder

        torch.set_num_threads(1)
        self.cfg = cfg
        self.key_hex = key_hex
        self.out = Location(out_dir)
        self.driver = tuple(driver) if driver else None
        if self.out.remote:
            Location.clean_spool()  # spool files left by a worker killed on this host
        self.batch_size, self.threads = batch_size, threads
        self.device = device
        self.kernels = kernels
        self.decoder = make_decoder(cfg.decoder, cfg.scheme.size, cfg.resize, batch_size, threads, device,
                                    views=cfg.views > 1)
        self.buffers = BufferPool(batch_size)
        self.encoder = make_encoder(cfg.encoder, cfg.fmt, threads, device)
        self.progress = progress
        s = cfg.scheme
        # every sample's JSON holds the scheme, the canvas and the cell; the task adds its targets
        self.members = cfg.task_def.member_writer(cfg, {"scheme": s.name, "size": list(s.out_size),
                                                        "patch": s.out_cell})
        self.hooks = hooks  # None in every real run (WorkerSpec.hooks)
        # the CPU's encryption runs inside the encoder's per-image call (see Fused); a GPU, an encoder of its
        # own or kernels asked for by name ("torch", "triton") take the batched path
        from .encode import CpuEncoder

        self.fused = device == "cpu" and kernels in ("auto", "cpu") and isinstance(self.encoder, CpuEncoder)
        import threading

        self._local, self._kernels, self._kernels_lock = threading.local(), [], threading.Lock()
        self.done_samples = 0

    def _read(self, items):
        """(planned sample, its bytes or the InputError why not), in plan order, through one ShardReader: each tar
        or parquet file is opened once for the shard, and closed however the shard ends."""
        with ShardReader([it.loc for it in items], self.cfg.max_bytes) as reader:
            for it in items:
                try:
                    yield it, reader.read(it.loc)
                except InputError as e:
                    yield it, e

    def _batches(self, items, skipped: list, draws: np.ndarray | None = None, timing: dict | None = None):
        """Read and screen inputs (header, coded data); yield DecodeBatches (tag: their ScreenedSamples) of at most
        ``batch_size`` images and BATCH_PIXELS decoded pixels, or one image (``timing["read"]``: time spent here)."""
        cfg = self.cfg
        clock = time.perf_counter
        t_read = clock()

        letterbox = cfg.resize == "letterbox"

        def batch(data, screened, wins):
            return DecodeBatch(data, np.array(wins, np.float32) if draws is not None or letterbox else None,
                               screened)

        def check(read):  # the header, then the coded data (libjpeg-turbo, without the GIL: on the worker's threads)
            return read[1] if isinstance(read[1], InputError) else screen(read[1], cfg.max_pixels)

        data, screened, wins, pixels = [], [], [], 0
        for (it, blob), hdr in ordered_map(check, self._read(items), self.threads, 2 * self.batch_size):
            try:
                if isinstance(hdr, Exception):
                    raise hdr
                t = it.target
                if t is not None and (hdr.width, hdr.height) != (t.width, t.height):
                    raise InputError(f"size-mismatch: the image is {hdr.width}x{hdr.height} but its annotations "
                                     f"say {t.width}x{t.height} (its boxes would not fit)")
            except InputError as e:
                skipped.append((it.index, it.ref, e.reason))
                continue
            if data and (len(data) == self.batch_size or pixels + hdr.width * hdr.height > BATCH_PIXELS):
                if timing is not None:
                    timing["read"] += clock() - t_read
                yield batch(data, screened, wins)
                t_read = clock()
                data, screened, wins, pixels = [], [], [], 0
            data.append(blob)
            pixels += hdr.width * hdr.height
            row, frame = decode_geometry(cfg.resize, cfg.scheme.size, hdr.width, hdr.height,
                                         None if draws is None else draws[it.pos])
            if row is not None:
                wins.append(row)
            screened.append(ScreenedSample(it, hdr, frame))
        if timing is not None:
            timing["read"] += clock() - t_read
        if data:
            yield batch(data, screened, wins)

    def _report(self, n: int) -> int:
        if self.progress is not None and n:
            self.progress(n)
        return n

    def run(self, task: ShardTask) -> ShardStats:
        """Write shard ``task`` and return its stats. The stages overlap, each in its own thread: reading and
        screening (the reader, up to two batches ahead), decoding (the decoder's threads; the CPU resize of
        batch i runs in this thread's call while batch i+1 decodes), and the sink (on the CPU encryption
        fused with encoding, image by image, over the encoder's threads; on a GPU the kernels are launched
        from this thread), encoding and the tar, a batch at a time. Queues between them are short, so memory stays bounded; batch buffers
        are reused (:class:`BufferPool`)."""
        import torch

        from himr_pipe.kernels import make_permutations

        cfg, s = self.cfg, self.cfg.scheme
        perm_keys = None  # shuffled schemes: one row of sort keys per planned sample; sorted on the device per batch
        n = len(task.items)
        if s.shuffled:
            perm_keys = keys.permutation_keys(self.key_hex, task.index, n, s.num_patches)
        draws = None  # --views: five uniform draws per planned sample (crop window and flip)
        if cfg.views > 1:
            draws = keys.view_draws(self.key_hex, task.index, n)
        writer = ShardWriter(self.out, task.name)
        skipped: list[tuple[int, str, str]] = []
        written: list[tuple[str, int, str]] = []
        task_counts = cfg.task_def.new_counts()  # detection: boxes written and cut
        count = {"upscaled": 0, "reported": 0, **task_counts}
        # seconds per stage, kept in the owner's state: where a shard's time went. The stages overlap, so
        # these are busy times of their own threads, and each slot has one writer: "read" the reader's,
        # "decode" (this thread's wait for the decoder), "launch" (permutations, buffers, and on a GPU the
        # kernels' launch) and "wait_sink" (its wait for room in the sink's queue) this thread's, "encrypt"
        # (the CPU's kernels: on the fused CPU path their busy time summed over the encoder's threads, a part
        # of "encode"), "encode" and "write" the sink's.
        timing = {"read": 0.0, "decode": 0.0, "launch": 0.0, "encrypt": 0.0, "encode": 0.0, "write": 0.0,
                  "wait_sink": 0.0}
        clock = time.perf_counter
        reader = Prefetch(self._batches(task.items, skipped, draws, timing), depth=2)
        sink = Sink(self._sink_batch, depth=2)
        args = (task, writer, written, count, timing)
        try:
            t = clock()
            for batch, images, bad in self.decoder.run(reader, alloc=self.buffers.allocator(s.size)):
                timing["decode"] += clock() - t
                meta = batch.tag  # the ScreenedSamples of this batch, in batch order
                for j in sorted(bad):
                    skipped.append((meta[j].sample.index, meta[j].sample.ref, bad[j]))
                meta = [m for j, m in enumerate(meta) if j not in bad]
                enc = None
                if meta:
                    t = clock()
                    x = images.to(self.device)
                    perms = None
                    if perm_keys is not None:
                        rows = perm_keys[[m.sample.pos for m in meta]]
                        if not self.fused:  # sorted on the device
                            rows = torch.from_numpy(rows).to(self.device, non_blocking=True)
                        perms = make_permutations(rows, orient=s.flip)  # flip: orientations packed in
                    if self.fused:
                        enc = Fused(x, perms)  # the sink encrypts each image as it encodes it
                    else:
                        out = self.buffers.take(len(meta), s.out_size, self.device) if s.definition.encrypts else None
                        # on a GPU the kernels are launched here (asynchronous); otherwise the sink runs them
                        enc = self._encrypt(x, perms, out) if x.is_cuda else (x, perms, out)
                    timing["launch"] += clock() - t
                t = clock()
                sink.put((enc, meta, len(bad), images), *args)
                timing["wait_sink"] += clock() - t  # the sink's queue was full: the sink is the slower stage
                t = clock()
            sink.close()
            self._report(len(task.items) - count["reported"])  # inputs rejected before decoding
            info = writer.commit()
        except BaseException:
            reader.stop()
            sink.stop()
            writer.abort()
            raise
        if info.samples == 0:
            writer.abort()  # an empty tar helps no reader; the stats still account for every input
        else:
            publish_held(self.out, writer, self.driver, self.hooks)  # only while the driver holds OUT
        stats = ShardStats(
            index=task.index, name=task.name, planned=len(task.items), samples=info.samples,
            bytes=info.bytes if info.samples else 0, sha256=info.sha256 if info.samples else None,
            upscaled=count["upscaled"], written=written, skipped=sorted(skipped), seconds=timing,
            inputs_written=sorted({w[1] for w in written}), **{k: count[k] for k in task_counts})
        return stats

    def _sink_batch(self, item, task, writer, written, count, timing) -> None:
        """The sink thread's work for one batch, in batch order: encode, build the members, write them."""
        enc, meta, n_bad, images = item
        cfg, clock = self.cfg, time.perf_counter
        if meta:
            if isinstance(enc, Fused):  # the CPU: each image encrypted in the thread that encodes it, just before
                before = self._kernel_seconds()
                t1 = clock()
                prepare = enc.prepare(self) if self.cfg.scheme.definition.encrypts else None
                blobs = self.encoder.encode(enc.images, prepare)
                t2 = clock()
                timing["encrypt"] += self._kernel_seconds() - before  # summed over the encoder's threads
                timing["encode"] += t2 - t1  # the fused encryption included
                enc = enc.images
            else:
                if isinstance(enc, tuple):  # kernels "torch" or "triton" on the CPU: one batched call here
                    t0 = clock()
                    enc = self._encrypt(*enc)
                    timing["encrypt"] += clock() - t0
                t1 = clock()
                blobs = self.encoder.encode(enc)  # waits for the (asynchronous) kernel on a GPU
                t2 = clock()
                timing["encode"] += t2 - t1
            self.buffers.give_back(images, enc)
            for sc, blob in zip(meta, blobs):
                it = sc.sample
                key = f"{task.index:06d}_{it.pos:06d}"
                writer.add(key, self.members(sc, blob, count))
                written.append((key, it.index, it.ref))
                count["upscaled"] += _upscaled(sc.header, cfg.scheme.size, cfg.resize)
            writer.flush()
            timing["write"] += clock() - t2
            self.done_samples += len(meta)
        count["reported"] += self._report(len(meta) + n_bad)
        if self.hooks is not None:
            self.hooks.after_batch(self.done_samples)

    def _encrypt(self, x, perms, out):
        """One batch through the scheme's kernel, in one call (a GPU's Triton kernels; on the CPU the torch
        reference or Triton's interpreter, when asked for by name)."""
        from himr_pipe.kernels import encrypt

        return encrypt(self.cfg.scheme, x, perms, impl=self.kernels, out=out)

    def _kernel(self):
        """This thread's :class:`~himr_pipe.kernels.cpu.ImageKernel` (its scratch buffers are its state)."""
        k = getattr(self._local, "kernel", None)
        if k is None:
            from himr_pipe.kernels.cpu import image_kernel

            k = self._local.kernel = image_kernel(self.cfg.scheme)
            with self._kernels_lock:
                self._kernels.append(k)
        return k

    def _kernel_seconds(self) -> float:
        with self._kernels_lock:
            return sum(k.seconds for k in self._kernels)


@dataclass(frozen=True)
class Fused:
    """A CPU batch on its way to the sink: the resized images and their permutations (None for unshuffled
    schemes), encrypted one image at a time inside the encoder's call (:meth:`prepare`), in the thread
    that encodes the image, so that the encrypted image is encoded while it is still in that core's cache.
    Measured against the batched kernel followed by the encoder: see benchmarks/RESULTS.md (issue 18)."""

    images: "torch.Tensor"
    perms: np.ndarray | None

    def prepare(self, worker: "ShardWorker"):
        perms = self.perms

        def one(i: int, img: np.ndarray) -> np.ndarray:
            return worker._kernel()(img, None if perms is None else perms[i])

        return one


def _upscaled(hdr, size, resize) -> bool:
    h, w = size
    if resize == "letterbox":  # scaled up when it fits inside the canvas on both sides
        return hdr.width < w and hdr.height < h
    return hdr.width < w or hdr.height < h if resize == "stretch" else (
        min(hdr.width / w, hdr.height / h) < 1.0)


class WorkerHooks:
    """Calls a worker makes at fixed points of a shard, for whoever builds it (the tests: a crash or a
    slow-down injected at an exact point of a run). Subclass and override; these defaults do nothing.
    An instance travels inside :class:`WorkerSpec` to worker processes and Ray tasks, so it must be
    picklable, and its class importable there (or pickled by value)."""

    def after_batch(self, done_samples: int) -> None:
        """A batch is in the shard's temporary file (the shard not yet published); ``done_samples``: the
        samples this worker has written since it was built, over all its shards."""

    def before_publish(self, name: str) -> None:
        """Shard ``name`` is complete, its driver found holding OUT; the rename comes next (:func:`~.lock.publish_held`)."""


@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    """How to build a worker: picklable, by keyword, the same for every distributor.

    The job travels as its public record (what the manifest holds, never a seed), so every distributor,
    the in-process one included, builds its worker through the same ``JobConfig.from_public`` round trip
    that worker processes and Ray tasks depend on (img2dataset's single ``Downloader`` object)."""

    job: dict           # JobConfig.public()
    key_hex: str
    out: str            # OUT's root (a path or a URL)
    threads: int
    batch_size: int
    device: str = "cpu"
    kernels: str = "auto"
    driver: tuple | None = None  # (host, pid) of the run that holds OUT: a worker not its child checks it (Ray)
    hooks: WorkerHooks | None = None  # None in every real run; the tests' fault injection (tests/faults.py)
    # the module that registered the job's scheme (himr_pipe.schemes), read where the spec is made: a worker
    # process or Ray task imports it before it reads the job, so a scheme registered outside the package is known
    scheme_module: str | None = None

    def __post_init__(self):
        if self.scheme_module is None:
            from .scheme import Scheme

            module = type(Scheme.from_dict(self.job["scheme"]).definition).__module__
            object.__setattr__(self, "scheme_module", module)

    def build(self, progress=None) -> ShardWorker:
        import importlib

        importlib.import_module(self.scheme_module)
        return ShardWorker(JobConfig.from_public(self.job), self.key_hex, self.out, self.threads,
                           self.batch_size, self.device, self.kernels, progress=progress, driver=self.driver,
                           hooks=self.hooks)


_WORKER: ShardWorker | None = None


def die_with(parent: int) -> None:
    """End this process as soon as ``parent`` (the driver) is gone, however it went (kill -9 included).

    On Linux the kernel sends SIGKILL at the parent's death (``PR_SET_PDEATHSIG``); everywhere, a daemon thread
    also checks once a second that the parent is still this process's parent (a dead parent's children are
    re-parented). Without this, a killed driver's spawned workers went on writing shards into OUT after its lock
    was gone, then idled for minutes holding its stdout open (issue 22).
    """
    import sys
    import threading
    import time

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass  # the thread below still ends us

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    if os.getppid() != parent:  # the driver died before we got here
        os._exit(1)
    threading.Thread(target=watch, name="himr-pipe-parent-watch", daemon=True).start()


def init_process_worker(spec: WorkerSpec, queue, parent: int | None = None) -> None:
    """A worker process's one worker, built from ``spec`` (its progress goes to the driver's queue); it ends
    with the driver process ``parent`` (:func:`die_with`)."""
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C and SIGTERM
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if parent is not None:
        die_with(parent)
    _WORKER = spec.build(progress=lambda n: queue.put(n))


def run_in_process_worker(task: ShardTask) -> ShardStats:
    assert _WORKER is not None
    return _WORKER.run(task)
