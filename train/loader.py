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
  until it has produced its part of the epoch's sample count. So an epoch has
  the same number of samples on every rank (DDP never waits on a rank that ran
  dry), and epoch e is the same stream whether the run was interrupted before
  it or not (exact resume at epoch boundaries).
* evaluation: shards are dealt round-robin to the (rank, worker) streams and
  read once, in order: every validation sample is seen exactly once.

Decoding happens in the loader workers on the CPU (simplejpeg for JPEG, Pillow
for PNG, numpy for raw) and batches leave as uint8 NHWC tensors plus int64
labels; or, with ``raw=True`` (the trainer's choice on a GPU with JPEG
shards), the workers only read and the batch is decoded on the device in one
nvJPEG call (:func:`decode_on_device`), which frees the CPU cores.
"""

from __future__ import annotations

import random
from itertools import islice

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from himr_pipe.manifest import Manifest, ManifestError
from himr_pipe.scheme import Scheme
from himr_pipe.shards import LABEL, META, decode_image


class DataError(ValueError):
    pass


def read_manifest(shards_dir: str) -> dict:
    """The manifest of a complete OUT (DataError otherwise: missing, not ours, malformed or incomplete)."""
    try:
        return Manifest.load(shards_dir, require_complete=True).data
    except ManifestError as e:
        raise DataError(f"{e}; point at a complete OUT folder written by himr-pipe encrypt-shards") from None


def manifest_scheme(m: dict) -> Scheme:
    return Scheme.from_dict(m["job"]["scheme"])


def shard_paths(shards_dir: str, m: dict) -> list[str]:
    from himr_pipe.storage import Location

    loc = Location(shards_dir)
    return [loc.url(s["name"]) for s in m["shards"]]


def open_shards(urls, handler=wds.reraise_exception):
    """WebDataset's url_opener with our storage: ``{"url"}`` -> ``{"url", "stream"}`` for a path or a URL."""
    from himr_pipe.storage import open_url

    for s in urls:
        try:
            yield {**s, "stream": open_url(s["url"])}
        except Exception as e:
            if handler(e):
                continue
            break


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
                 rank: int = 0, world: int = 1, shuffle_buffer: int = 2000, raw: bool = False):
        self.urls, self.ext, self.raw = urls, ext, raw
        self.samples_per_rank, self.epoch, self.seed = samples_per_rank, epoch, seed
        self.rank, self.world, self.buf = rank, world, shuffle_buffer

    def __iter__(self):
        sid, n = _stream_id(self.rank, self.world)
        wi = get_worker_info()
        wid, nw = (wi.id, wi.num_workers) if wi is not None else (0, 1)
        quota = self.samples_per_rank // nw + (1 if wid < self.samples_per_rank % nw else 0)
        rng = random.Random(f"himr-train:{self.seed}:{self.epoch}:{sid}")
        # shard-level split: the epoch's shard order is the same on every rank; stream sid takes every
        # n-th shard (a disjoint share), and cycles through it until its sample quota is met
        order = list(self.urls)
        random.Random(f"himr-epoch:{self.seed}:{self.epoch}").shuffle(order)
        mine = order[sid::n] or [order[sid % len(order)]]  # more streams than shards: share some

        def shards():
            while True:
                for u in mine:
                    yield {"url": u}

        samples = shard_samples(shards(), handler=wds.warn_and_continue)
        samples = wds.shuffle(self.buf, initial=min(self.buf, 100), rng=random.Random(rng.random()))(samples)
        for s in islice(samples, quota):
            yield decode_sample(s, self.ext, self.raw)


class EvalStream(IterableDataset):
    def __init__(self, urls: list[str], ext: str, rank: int = 0, world: int = 1, raw: bool = False):
        self.urls, self.ext, self.rank, self.world, self.raw = urls, ext, rank, world, raw

    def __iter__(self):
        sid, n = _stream_id(self.rank, self.world)
        mine = [{"url": u} for u in self.urls[sid::n]]
        for s in shard_samples(iter(mine)):
            yield decode_sample(s, self.ext, self.raw)


def collate(batch):
    """A batch for every task: images stacked (or, raw, a list of encoded images: they differ in length); class
    labels as one int64 tensor, detection targets as a list (they differ in length too)."""
    from torch.utils.data import default_collate  # stacks into shared memory in a worker process

    imgs, ys = [b[0] for b in batch], [b[1] for b in batch]
    x = imgs if imgs and imgs[0].dim() == 1 else default_collate(imgs)
    return x, (torch.tensor(ys, dtype=torch.int64) if ys and isinstance(ys[0], int) else ys)


def train_loader(shards_dir: str, batch_size: int, epoch: int, seed: int = 0, samples_per_epoch: int | None = None,
                 workers: int = 2, rank: int = 0, world: int = 1, shuffle_buffer: int = 2000,
                 raw: bool = False) -> DataLoader:
    """The loader of one training epoch (build one per epoch: its stream depends on the epoch).

    ``raw``: batches of encoded JPEG bytes (a list of 1-D uint8 tensors) for :func:`decode_on_device`.
    """
    m = read_manifest(shards_dir)
    total = samples_per_epoch or m["totals"]["written"]
    per_rank = total // world
    ds = TrainStream(shard_paths(shards_dir, m), m["job"]["format"]["ext"], per_rank, epoch, seed, rank, world,
                     shuffle_buffer, raw)
    return DataLoader(ds, batch_size=batch_size, num_workers=workers, drop_last=True, persistent_workers=False,
                      pin_memory=torch.cuda.is_available() and not raw, collate_fn=collate)


def eval_loader(shards_dir: str, batch_size: int, workers: int = 2, rank: int = 0, world: int = 1,
                raw: bool = False) -> DataLoader:
    m = read_manifest(shards_dir)
    ds = EvalStream(shard_paths(shards_dir, m), m["job"]["format"]["ext"], rank, world, raw)
    return DataLoader(ds, batch_size=batch_size, num_workers=workers, drop_last=False,
                      collate_fn=collate)


def decode_on_device(blobs: list[torch.Tensor], device) -> torch.Tensor:
    """Decode a batch of JPEGs in one call on ``device`` (nvJPEG on a GPU) -> uint8 NHWC."""
    from torchvision.io import ImageReadMode, decode_jpeg

    imgs = decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)
    return torch.stack(imgs).permute(0, 2, 3, 1)
