"""Streaming loaders from encrypted shards, deterministic per (seed, epoch, rank, worker).

Built from WebDataset's stages (``tar_file_expander``, ``group_by_keys``,
``shuffle``) so the stream never holds the dataset. Shards are opened by
:func:`open_shards`: local files, or any fsspec URL (an OUT on ``s3://``
streams straight into training):

* training: every (rank, loader worker) pair is one stream. Each epoch the
  shard list is shuffled the same way on every rank (seeded by seed and
  epoch) and dealt out shard by shard: stream s reads every n-th shard (a
  disjoint share, so ranks and workers see different data), through a
  shuffle buffer seeded by (seed, epoch, stream), cycling through its share
  (each pass shuffled on its own, so no sample comes twice before every other
  has come once) until it has produced its part of the epoch's sample count.
  So an epoch has the same number of samples on every rank (DDP never waits on
  a rank that ran dry), and epoch e is the same stream whether the run was
  interrupted before it or not (exact resume at epoch boundaries). A rank's epoch is
  ``(samples // world) // batch`` whole batches (the trainer's steps per
  epoch), dealt to its loader workers in whole batches, so no worker's
  remainder is dropped and every epoch has exactly that many steps whatever
  the worker count; a rank never runs more loader workers than it has shards
  (:func:`loader_workers`), so no two workers read the same shard.
* evaluation: shards are dealt round-robin to the (rank, worker) streams and
  read once, in order: every validation sample is seen exactly once.

Decoding happens in the loader workers on the CPU (simplejpeg for JPEG, Pillow
for PNG, numpy for raw) and batches leave as uint8 NHWC tensors plus int64
labels; or, with ``raw=True`` (the trainer's choice on a GPU with JPEG
shards), the workers only read and the batch is decoded on the device in one
nvJPEG call (:func:`decode_on_device`), which frees the CPU cores.

Every shard is read through :func:`checked_samples`, which holds it to the manifest: a shard that can't be
opened or read to its end (truncated, corrupt), a sample that lacks a member, does not decode or has no integer
label, and a shard that gives another number of samples than the manifest says are each a *fault*, named by
shard and key. Training skips what is faulty with one warning per shard (stderr) and counts the skipped samples
(``TrainStream.faults``: the trainer logs them per epoch); a stream whose every shard is unreadable raises
:class:`DataError` instead of cycling forever, and a stream left short says that its epoch repeats samples to
keep its length. Evaluation reads every sample once, so a fault there is a :class:`DataError` naming the shard:
a metric over what happened to be readable would be a wrong metric, silently.

A local shard is opened only if it is a regular file (:func:`_open_regular`: a FIFO in its place would block the
open forever); anything else is a fault of that shard, named and skipped like an unreadable one. A shard read
whole is held to the manifest's sha256, hashed as its tar streams by (``verify``, on by default); since its
samples have gone by when the digest is known, a mismatch is not a skip but :class:`ShardMismatch` (exit 1), which
fails the epoch before its checkpoint (docs/training.md says why).
"""

from __future__ import annotations

import multiprocessing as mp
import random
import sys
from itertools import islice

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from himr_pipe.manifest import Manifest, ManifestError
from himr_pipe.scheme import Scheme
from himr_pipe.shards import LABEL, META, decode_image
from himr_pipe.errors import Failed, Refused

# The normalisation every model sees its decoded images through, (pixel/255 - MEAN) / STD (ImageNet's): the
# trainer's steps and evaluation, and predict on plain images (both import it from here; ``trainer.MEAN`` too)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class DataError(Refused, ValueError):
    """The shards can't be trained or evaluated on as they are (the message names the OUT or the shard)."""


class ShardFault(DataError):
    """A shard met while training or evaluating can't be used (unreadable, or faulty where every sample counts):
    the run fails there (exit 1), its last checkpoint intact."""

    exit_code = Failed.exit_code


def error_message(e: BaseException) -> str:
    """A DataError's own message, also when it crossed from a loader worker (torch re-raises it with the
    worker's traceback in the message)."""
    msg = str(e)
    if "Original Traceback" in msg:
        tail = [ln for ln in msg.strip().splitlines() if ln.strip()][-1]
        for cls in ("ShardMismatch: ", "ShardFault: ", "DataError: "):
            if cls in tail:
                return tail.split(cls, 1)[1]
        msg = tail
    return msg


def read_manifest(shards_dir: str) -> dict:
    """The manifest of a complete OUT (DataError otherwise: missing, not ours, malformed or incomplete)."""
    try:
        m = Manifest.load(shards_dir, require_complete=True).data
    except ManifestError as e:
        raise DataError(f"{e}; point at a complete OUT folder written by himr-pipe encrypt-shards") from None
    if m.get("labelled") is False:
        raise DataError(f"{shards_dir} holds unlabelled samples (no .cls): training needs labels; encrypt a "
                        "labelled SRC (class sub-folders, or labels.csv beside the images)")
    return m


def manifest_scheme(m: dict) -> Scheme:
    return Scheme.from_dict(m["job"]["scheme"])


def shard_paths(shards_dir: str, m: dict) -> list[str]:
    from himr_pipe.storage import Location

    loc = Location(shards_dir)
    return [loc.url(s["name"]) for s in m["shards"]]


def required_members(m: dict) -> frozenset[str]:
    """The members every sample of the manifest's task has (a sample without one is a fault)."""
    from himr_pipe.tasks import job_task, task_named

    return frozenset(task_named(job_task(m["job"])).members(m["job"]["format"]["ext"]))


def default_workers() -> int:
    """Loader workers per training process when ``--workers`` is not given: 4, or as many as the usable CPUs
    (the affinity mask and a container's quota, shared by the processes torchrun starts on this machine) when
    they are fewer."""
    import os

    from himr_pipe.machine import usable_cpus

    return max(1, min(4, usable_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))))


def loader_workers(requested: int, shards: int, world: int = 1, batches: int | None = None) -> int:
    """The loader workers one rank runs: ``requested``, but never more than the shards the rank reads (a stream
    is a disjoint share of the shards: a worker beyond them would read another's) nor than the batches of its
    epoch (a worker without a batch would start for nothing). 0 stays 0 (loading in the training process)."""
    if requested <= 0:
        return 0
    return max(1, min(requested, shards // max(1, world), batches if batches is not None else requested))


def _warn(msg: str) -> None:
    print(f"himr-pipe train: warning: {msg}", file=sys.stderr, flush=True)


def _shard_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def checked_samples(url: str, expected: int | None, ext: str, members: frozenset[str], raw: bool, fault,
                    sha256: str | None = None):
    """The decoded samples of one shard, each held to the manifest; ``fault(url, what, key, lost)`` is told of
    every fault (``key`` None: the shard's own, an unreadable tar or a count that differs from ``expected``,
    ``lost`` the samples it lacks).

    Yields only the good samples, decoded as :func:`decode_sample` does (with
    ``raw``, the JPEG header is still read here, so that a corrupt file never reaches the device's one call
    for the whole batch).

    ``sha256`` (the manifest's): the shard's bytes are hashed as the tar is streamed (no second read), and once
    it has been read whole a digest that differs raises :class:`ShardMismatch`. Its samples have been yielded by
    then (that is the price of one read), so the mismatch can't be a skip: it fails the epoch before its
    checkpoint, which therefore never holds training on bytes the manifest does not vouch for."""
    errors: list[Exception] = []

    def handler(e: Exception) -> bool:
        errors.append(e)
        return True

    seen = 0
    digest = _Digest(sha256)
    for s in shard_samples(iter([{"url": url, "digest": digest}]), handler=handler):
        seen += 1
        key = s.get("__key__", "?")
        missing = sorted(members - set(s))
        if missing:
            fault(url, f"sample {key} lacks {', '.join(missing)}", key, 1)
            continue
        try:
            item = decode_sample(s, ext, raw)
            if raw and ext == "jpg":
                import simplejpeg

                simplejpeg.decode_jpeg_header(s[ext])
        except Exception as e:  # a corrupt image or label: named, skipped by the caller's rule
            fault(url, f"sample {key} does not decode ({type(e).__name__}: {e})", key, 1)
            continue
        yield item
    lost = max(0, expected - seen) if expected is not None else 0
    if errors:
        e = errors[0]
        if isinstance(e, NotRegular):
            fault(url, str(e), None, lost)
            return
        fault(url, f"unreadable after {seen} samples ({type(e).__name__}: {e.args[0] if e.args else e})", None, lost)
    elif expected is not None and seen != expected:
        fault(url, f"holds {seen} samples, the manifest says {expected}", None, lost)
    elif digest.mismatch():
        raise ShardMismatch(f"shard {_shard_name(url)} does not match the manifest's sha256 (its bytes changed "
                            "after encrypt-shards wrote it; its samples may carry wrong labels): check the OUT with "
                            "`himr-pipe verify OUT` and rerun its encrypt-shards command to repair it, or train with "
                            "--no-verify-shards")


class ShardMismatch(ShardFault):
    """A shard read whole whose bytes differ from the manifest's sha256 (exit 1: the epoch stops before its
    checkpoint)."""


class _Digest:
    """The sha256 of a shard's bytes as they stream by (``expected`` None: nothing is hashed)."""

    def __init__(self, expected: str | None):
        import hashlib

        self.expected = expected
        self.h = hashlib.sha256() if expected else None
        self.stream = None

    def wrap(self, stream):
        if self.h is None:
            return stream
        self.stream = _Hashing(stream, self.h)
        return self.stream

    def mismatch(self) -> bool:
        """The whole shard was read (the tar reader stops at its end-of-archive blocks: the rest, padding, is read
        here) and its digest is not the manifest's."""
        if self.stream is None:
            return False
        try:
            while self.stream.read(1 << 20):
                pass
        except (OSError, ValueError):  # closed or gone: judged on what was read
            pass
        try:
            self.stream.close()
        except Exception:  # noqa: BLE001 - the digest is what matters here
            pass
        return self.h.hexdigest() != self.expected


class _Hashing:
    """A binary stream that feeds every byte read through it to ``h``."""

    def __init__(self, raw, h):
        self.raw, self.h = raw, h

    def read(self, n: int = -1) -> bytes:
        b = self.raw.read(n)
        self.h.update(b)
        return b

    def close(self) -> None:
        self.raw.close()

    def __getattr__(self, name):
        return getattr(self.raw, name)


def open_shards(urls, handler=wds.reraise_exception):
    """WebDataset's url_opener with our storage: ``{"url"}`` -> ``{"url", "stream"}`` for a path or a URL."""
    from himr_pipe.storage import open_url

    for s in urls:
        try:
            stream = _open_regular(s["url"], open_url)
            yield {**s, "stream": s["digest"].wrap(stream) if s.get("digest") else stream}
        except Exception as e:
            if handler(e):
                continue
            break


class NotRegular(OSError):
    """A shard's path is not a regular file (a FIFO, socket or device): never opened, so never waited on."""


# the loader's words for what specials names (its lines say "a FIFO" where the sources' reasons say "fifo")
_NOT_REGULAR = {"fifo": "a FIFO", "socket": "a socket", "directory": "a folder", "character device": "a device",
                "block device": "a device"}


def _open_regular(url: str, open_url):
    """``open_url(url)``; a local path only if it is a regular file (:func:`himr_pipe.specials.open_regular`:
    opened without blocking, since a FIFO's open waits for a writer forever, and checked on the open file)."""
    from himr_pipe.specials import NotRegularFile, open_regular
    from himr_pipe.storage import is_url, local_path

    path = local_path(url)
    if is_url(path):
        return open_url(url)
    try:
        return open_regular(path)
    except NotRegularFile as e:
        kind = _NOT_REGULAR.get(e.reason.split(": ", 1)[-1], "not a file")
        raise NotRegular(f"not a regular file ({kind}): not opened") from None


def shard_samples(urls, handler=wds.reraise_exception):
    """Samples ({"__key__", ext: bytes, ...}) of the shards named by an iterable of ``{"url": ...}``."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    return group_by_keys(tar_file_expander(open_shards(urls, handler), handler=handler), handler=handler)


def decode_sample(sample: dict, ext: str, raw: bool = False) -> tuple[torch.Tensor, int | dict]:
    """(uint8 HWC image, label); with ``raw`` the encoded bytes as a 1-D uint8 tensor, to decode on the device.

    A detection sample (no ``.cls``) has its targets in place of the label: :func:`sample_targets`."""
    blob = sample[ext]
    y = int(sample[LABEL]) if LABEL in sample else sample_targets(sample)
    if raw:
        return torch.frombuffer(bytearray(blob), dtype=torch.uint8), y
    return torch.from_numpy(decode_image(blob, ext)), y


def sample_targets(sample: dict) -> dict:
    """A detection sample's targets: ``boxes`` (n, 4) normalised cxcywh on the canvas, ``labels`` (n,), its
    ``image_id`` in the ground truth and its ``frame`` (what maps the canvas back to the image)."""
    import json

    d = json.loads(sample[META])
    return {"boxes": torch.tensor(d["boxes"], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(d["labels"], dtype=torch.int64), "image_id": int(d["image_id"]),
            "frame": d["frame"]}


def _stream_id(rank: int, world: int) -> tuple[int, int]:
    wi = get_worker_info()
    wid, nw = (wi.id, wi.num_workers) if wi is not None else (0, 1)
    return rank * nw + wid, world * nw


class TrainStream(IterableDataset):
    def __init__(self, urls: list[str], ext: str, samples_per_rank: int, epoch: int, seed: int,
                 rank: int = 0, world: int = 1, shuffle_buffer: int = 2000, raw: bool = False,
                 counts: dict[str, int] | None = None, members: frozenset[str] | None = None,
                 batch_size: int = 1, sums: dict[str, str] | None = None):
        self.urls, self.ext, self.raw = urls, ext, raw
        self.sums = sums or {}  # url -> the manifest's sha256, each shard read whole is held to (none: no check)
        self.samples_per_rank, self.epoch, self.seed = samples_per_rank, epoch, seed
        self.batch_size = max(1, batch_size)  # workers' quotas are whole batches of this size
        self.rank, self.world, self.buf = rank, world, shuffle_buffer
        self.counts, self.members = counts or {}, members or frozenset({ext})
        # faults met this epoch, summed over the loader's workers (forked: the counter is shared)
        self._faults = mp.get_context("fork").Value("q", 0)

    @property
    def faults(self) -> int:
        """Samples skipped this epoch (faulty samples, and the samples a faulty shard's count lacks)."""
        return int(self._faults.value)

    def _count(self, n: int) -> None:
        with self._faults.get_lock():
            self._faults.value += n

    def __iter__(self):
        sid, n = _stream_id(self.rank, self.world)
        wi = get_worker_info()
        wid, nw = (wi.id, wi.num_workers) if wi is not None else (0, 1)
        # the rank's epoch is `steps` whole batches, dealt to its workers in whole batches: batched with
        # drop_last, no worker leaves a remainder, and the epoch has exactly `steps` batches for any worker count
        steps = self.samples_per_rank // self.batch_size
        quota = self.batch_size * (steps // nw + (1 if wid < steps % nw else 0))
        if quota == 0:
            return
        rng = random.Random(f"himr-train:{self.seed}:{self.epoch}:{sid}")
        # shard-level split: the epoch's shard order is the same on every rank; stream sid takes every
        # n-th shard (a disjoint share), and cycles through it until its sample quota is met
        order = list(self.urls)
        random.Random(f"himr-epoch:{self.seed}:{self.epoch}").shuffle(order)
        mine = order[sid::n] or [order[sid % len(order)]]  # more streams than shards: share some

        warned: set[tuple[str, bool]] = set()  # (shard, a shard's own fault): one warning each
        dead: set[str] = set()  # shards that gave no sample at all: not read again this epoch
        # a fault counts once an epoch: not again at each pass through the share, nor in a stream that reads a
        # shard only because there are more streams than shards (its owner, order[j::n], counts it)
        counted, own = set(), set(order[sid::n])

        def fault(url, what, key, lost):
            name = _shard_name(url)
            if (url, key) not in counted and url in own:
                counted.add((url, key))
                self._count(lost)
            if (url, key is None) not in warned:
                warned.add((url, key is None))
                _warn(f"shard {name}: {what}; " + ("its faulty samples are skipped" if key is not None else
                      "the samples it lacks are skipped") + " (the epoch's count is in log.jsonl)")

        def one_pass(good: list[int]):
            for u in mine:
                if u in dead:
                    continue
                n = 0
                for item in checked_samples(u, self.counts.get(u), self.ext, self.members, self.raw, fault,
                                            self.sums.get(u)):
                    n += 1
                    yield item
                if n == 0:
                    dead.add(u)
                good[0] += n

        def samples():
            # shuffled pass by pass through the share: a sample comes again only once every other has come
            # (shuffling across passes drew the buffer's first 100 from several passes: repeats in a small epoch)
            shuffle = wds.shuffle(self.buf, initial=min(self.buf, 100), rng=random.Random(rng.random()))
            first = True
            while True:
                good = [0]
                yield from shuffle(one_pass(good))
                if good[0] == 0:
                    raise ShardFault(f"none of the {len(mine)} shard(s) this loader stream reads gave a sample "
                                    f"({', '.join(_shard_name(u) for u in mine[:4])}{' ...' if len(mine) > 4 else ''}):"
                                    " check them with `himr-pipe verify OUT`")
                if first and warned and good[0] < quota:
                    _warn(f"{quota - good[0]} samples short after skipping faults: this epoch repeats samples of "
                          "its shards to keep its length")
                first = False

        yield from islice(samples(), quota)


class EvalStream(IterableDataset):
    def __init__(self, urls: list[str], ext: str, rank: int = 0, world: int = 1, raw: bool = False,
                 counts: dict[str, int] | None = None, members: frozenset[str] | None = None,
                 sums: dict[str, str] | None = None):
        self.urls, self.ext, self.rank, self.world, self.raw = urls, ext, rank, world, raw
        self.sums = sums or {}
        self.counts, self.members = counts or {}, members or frozenset({ext})

    def __iter__(self):
        sid, n = _stream_id(self.rank, self.world)

        def fault(url, what, key, lost):
            raise ShardFault(f"validation shard {_shard_name(url)}: {what}. Evaluation reads every sample once, "
                            "so it stops rather than report a metric over part of the set: check the OUT with "
                            "`himr-pipe verify OUT` and rerun its encrypt-shards command")

        for u in self.urls[sid::n]:
            yield from checked_samples(u, self.counts.get(u), self.ext, self.members, self.raw, fault,
                                       self.sums.get(u))


def collate(batch):
    """A batch for every task: images stacked (or, raw, a list of encoded images: they differ in length); class
    labels as one int64 tensor, detection targets as a list (they differ in length too)."""
    from torch.utils.data import default_collate  # stacks into shared memory in a worker process

    imgs, ys = [b[0] for b in batch], [b[1] for b in batch]
    x = imgs if imgs and imgs[0].dim() == 1 else default_collate(imgs)
    return x, (torch.tensor(ys, dtype=torch.int64) if ys and isinstance(ys[0], int) else ys)


def train_loader(shards_dir: str, batch_size: int, epoch: int, seed: int = 0, samples_per_epoch: int | None = None,
                 workers: int = 2, rank: int = 0, world: int = 1, shuffle_buffer: int = 2000,
                 raw: bool = False, verify: bool = True) -> DataLoader:
    """The loader of one training epoch (build one per epoch: its stream depends on the epoch): exactly
    ``(samples // world) // batch_size`` batches, from at most :func:`loader_workers` worker processes.

    ``raw``: batches of encoded JPEG bytes (a list of 1-D uint8 tensors) for :func:`decode_on_device`.
    ``verify``: each shard read whole is held to the manifest's sha256 (:func:`checked_samples`).
    """
    m = read_manifest(shards_dir)
    total = samples_per_epoch or m["totals"]["written"]
    per_rank = total // world
    urls = shard_paths(shards_dir, m)
    if not urls:
        raise DataError(f"{shards_dir} holds no shard: nothing to train on")
    ds = TrainStream(urls, m["job"]["format"]["ext"], per_rank, epoch, seed, rank, world, shuffle_buffer, raw,
                     shard_counts(urls, m), required_members(m), batch_size, shard_sums(urls, m) if verify else None)
    workers = loader_workers(workers, len(urls), world, per_rank // max(1, batch_size))
    return DataLoader(ds, batch_size=batch_size, num_workers=workers, drop_last=True, persistent_workers=False,
                      pin_memory=torch.cuda.is_available() and not raw, collate_fn=collate,
                      multiprocessing_context="fork" if workers else None)


def shard_counts(urls: list[str], m: dict) -> dict[str, int]:
    """url -> the samples the manifest says the shard holds."""
    return {u: int(s["samples"]) for u, s in zip(urls, m["shards"])}


def shard_sums(urls: list[str], m: dict) -> dict[str, str]:
    """url -> the sha256 the manifest gives the shard."""
    return {u: s["sha256"] for u, s in zip(urls, m["shards"]) if s.get("sha256")}


def eval_loader(shards_dir: str, batch_size: int, workers: int = 2, rank: int = 0, world: int = 1,
                raw: bool = False, verify: bool = True) -> DataLoader:
    m = read_manifest(shards_dir)
    urls = shard_paths(shards_dir, m)
    ds = EvalStream(urls, m["job"]["format"]["ext"], rank, world, raw, shard_counts(urls, m), required_members(m),
                    shard_sums(urls, m) if verify else None)
    workers = loader_workers(workers, len(urls), world) if urls else 0
    return DataLoader(ds, batch_size=batch_size, num_workers=workers, drop_last=False,
                      collate_fn=collate)


def decode_on_device(blobs: list[torch.Tensor], device) -> torch.Tensor:
    """Decode a batch of JPEGs in one call on ``device`` (nvJPEG on a GPU) -> uint8 NHWC."""
    from torchvision.io import ImageReadMode, decode_jpeg

    imgs = decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)
    return torch.stack(imgs).permute(0, 2, 3, 1)
