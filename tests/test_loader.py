"""Streaming loaders: shard-level splits, equal epochs per rank, determinism, eval exactly once."""

from collections import Counter

import pytest
import torch

from conftest import encrypt
from himr_pipe.train.loader import TrainStream, eval_loader, read_manifest, shard_paths, train_loader


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
