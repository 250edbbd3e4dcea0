"""Streaming loaders: shard-level splits, equal epochs per rank, determinism, eval exactly once."""

from collections import Counter

import pytest
import torch

from conftest import encrypt
from himr_pipe.train.loader import (TrainStream, default_workers, eval_loader, loader_workers, read_manifest,
                                   shard_paths, train_loader)


@pytest.fixture(scope="module")
def shards(sample_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("ld") / "none"
    encrypt(sample_src, out, "--scheme", "none", "--size", "32", "--patch", "8", "--format", "png",
            "--seed", "2", "--shard-size", "3")  # 18 samples in 6 shards
    return out


def _images(stream):
    return [bytes(x.numpy()) for x, _ in stream]


def test_train_streams_split_shards_and_fill_equal_epochs(shards):
    m = read_manifest(str(shards))
    urls = shard_paths(str(shards), m)
    per_rank = [_images(TrainStream(urls, "png", 9, epoch=0, seed=1, rank=r, world=2)) for r in range(2)]
    assert [len(p) for p in per_rank] == [9, 9]  # the same count on every rank
    assert not set(per_rank[0]) & set(per_rank[1])  # disjoint shards, so disjoint samples
    assert _images(TrainStream(urls, "png", 9, 0, 1, 0, 2)) == per_rank[0]  # deterministic
    assert _images(TrainStream(urls, "png", 9, 1, 1, 0, 2)) != per_rank[0]  # another epoch, another order


def test_eval_reads_every_sample_exactly_once_across_ranks_and_workers(shards):
    seen = Counter()
    for rank in range(2):
        for x, y in eval_loader(str(shards), batch_size=4, workers=2, rank=rank, world=2):
            seen.update(bytes(img.numpy()) for img in x)
    assert sum(seen.values()) == 18 and max(seen.values()) == 1


def test_train_loader_batches(shards):
    batches = list(train_loader(str(shards), 4, epoch=0, workers=2))
    assert sum(len(x) for x, _ in batches) == 16  # 18 samples, drop_last batches of 4
    x, y = batches[0]
    assert x.dtype == torch.uint8 and x.shape == (4, 32, 32, 3) and y.dtype == torch.int64


def test_every_epoch_is_its_steps_in_whole_batches_for_any_worker_count(shards):
    """(samples // world) // batch full batches (the trainer's steps per epoch) whatever the loader workers: their
    quotas are whole batches, so none is left with a remainder that drop_last loses (before, 2 workers and
    batches of 5 gave 2 batches of 18 samples, not 3)."""
    for batch, world in ((4, 1), (5, 1), (7, 1), (2, 2)):
        steps = (18 // world) // batch
        for workers in (0, 1, 2, 3):
            sizes = [len(y) for _, y in train_loader(str(shards), batch, epoch=0, workers=workers, world=world)]
            assert sizes == [batch] * steps, (batch, world, workers, sizes)
    # and the epoch is still one stream per (seed, epoch, rank) for a given worker count
    a = [y.tolist() for _, y in train_loader(str(shards), 5, epoch=1, workers=2)]
    assert a == [y.tolist() for _, y in train_loader(str(shards), 5, epoch=1, workers=2)]


def test_loader_workers_never_outnumber_a_ranks_shards(shards, monkeypatch):
    assert loader_workers(8, 6) == 6 and loader_workers(8, 6, world=2) == 3 and loader_workers(8, 6, batches=2) == 2
    assert loader_workers(0, 6) == 0 and loader_workers(3, 1, world=2) == 1 and loader_workers(2, 6) == 2
    # 6 shards of 3 over 2 ranks: each rank reads 3, so 5 workers asked run 3, each on a shard of its own
    loader = train_loader(str(shards), 1, epoch=0, workers=5, rank=0, world=2)
    assert loader.num_workers == 3
    imgs = [bytes(x.numpy()) for xb, _ in loader for x in xb]
    assert len(imgs) == 9 and len(set(imgs)) == 9  # no sample read twice (workers beyond the shards shared them)
    assert eval_loader(str(shards), 4, workers=9).num_workers == 6
    # the default: 4, or the usable CPUs when fewer (shared by torchrun's processes on the machine)
    import himr_pipe.machine as machine

    for cpus, local, expected in ((2, None, 2), (1, None, 1), (16, None, 4), (4, "2", 2), (2, "4", 1)):
        monkeypatch.setattr(machine, "usable_cpus", lambda: cpus)
        if local:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        else:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        assert default_workers() == expected, (cpus, local)
