"""The trainer on tiny shards: loop and evaluation, exact resume, DDP with two CPU processes, clear mismatches."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import cli, encrypt

RATE_LINE = re.compile(r"loss [\d.]+ lr \S+ \| loader \d+ img/s, step \d+ img/s, waiting \d+% of the time")
TINY = ("--embed-dim", "32", "--depth", "1", "--heads", "2", "--batch-size", "4", "--workers", "0",
        "--warmup-epochs", "0.5", "--log-interval", "2", "--lr", "1e-3")


@pytest.fixture(scope="module")
def tiny_shards(sample_src, tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    outs = {}
    for scheme in ("rs", "mi", "mi-shuffle", "none", "rs-flip"):
        out = base / scheme
        encrypt(sample_src, out, "--scheme", scheme.removesuffix("-flip"), "--size", "32", "--patch", "8",
                "--format", "png", "--seed", "3", "--shard-size", "6", *(["--flip"] if "flip" in scheme else []))
        outs[scheme] = out
    return outs


@pytest.mark.parametrize("scheme", ["rs", "mi", "mi-shuffle", "none", "rs-flip"])
def test_train_and_evaluate(tiny_shards, tmp_path, scheme):
    res = cli("train", tiny_shards[scheme], "--val", tiny_shards[scheme], "--out", tmp_path / "run",
              "--epochs", "2", *TINY)
    assert RATE_LINE.search(res.output), res.output
    assert "val top-1" in res.output
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and 0.0 <= log[-1]["val_top1"] <= 1.0
    assert all(r["train_loss"] == r["train_loss"] for r in log)  # finite, not NaN
    assert (tmp_path / "run" / "checkpoint-last.pt").exists()


def test_resume_is_exact(tiny_shards, tmp_path):
    args = (tiny_shards["rs"], "--epochs", "3", *TINY)
    cli("train", *args, "--out", tmp_path / "straight")
    cli("train", *args, "--out", tmp_path / "split", "--stop-after", "1")
    res = cli("train", *args, "--out", tmp_path / "split", "--resume")
    assert "resumed" in res.output
    a = torch.load(tmp_path / "straight" / "checkpoint-last.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "checkpoint-last.pt", weights_only=False)
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_mismatches_are_clear_errors(tiny_shards, tmp_path):
    r = cli("train", tiny_shards["rs"], "--val", tiny_shards["mi"], "--out", tmp_path / "x", "--epochs", "1",
            *TINY, expect=2)
    assert "scheme" in r.output
    r = cli("train", tiny_shards["rs"], "--val", tiny_shards["rs-flip"], "--out", tmp_path / "x", "--epochs", "1",
            *TINY, expect=2)   # a model that sees cells in their orientation is not the flip data's model
    assert "scheme" in r.output
    cli("train", tiny_shards["rs"], "--out", tmp_path / "y", "--epochs", "1", *TINY)
    r = cli("train", tiny_shards["none"], "--out", tmp_path / "y", "--epochs", "2", "--resume", *TINY, expect=2)
    assert "checkpoint" in r.output


def test_a_run_is_never_overwritten_or_resumed_on_other_terms(tiny_shards, tmp_path):
    """Issue 22: a second run into a trained --out without --resume is refused (the checkpoint untouched);
    --resume with no checkpoint says it starts from scratch; --resume with a run-defining option changed (the
    batch size, the depth) is refused naming it, with no traceback."""
    run = tmp_path / "run"
    res = cli("train", tiny_shards["rs"], "--out", run, "--epochs", "1", "--resume", *TINY)
    assert "no checkpoint at" in res.output and "starting from scratch" in res.output
    before = (run / "checkpoint-last.pt").read_bytes()
    r = cli("train", tiny_shards["rs"], "--out", run, "--epochs", "1", *TINY, expect=2)
    assert "exists: pass --resume" in r.output
    assert (run / "checkpoint-last.pt").read_bytes() == before
    r = cli("train", tiny_shards["rs"], "--out", run, "--epochs", "1", "--resume", *TINY, "--batch-size", "3",
            expect=2)
    assert "batch_size 4 -> 3" in r.output and "Traceback" not in r.output
    r = cli("train", tiny_shards["rs"], "--out", run, "--epochs", "1", "--resume", *TINY, "--depth", "2", expect=2)
    assert "depth 1 -> 2" in r.output
    assert (run / "checkpoint-last.pt").read_bytes() == before


def test_ddp_two_cpu_processes(tiny_shards, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "himr_pipe.cli", "train", str(tiny_shards["rs"]), "--val", str(tiny_shards["rs"]),
           "--out", str(tmp_path / "ddp"), "--epochs", "2", "--device", "cpu", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and 0.0 <= log[-1]["val_top1"] <= 1.0
    # each rank streams half of the 18 samples per epoch: 9 // 4 = 2 steps per epoch on each
    assert log[-1]["step"] == 4


def test_decode_on_the_device_path(sample_src, tmp_path):
    """The GPU-side decoding path (batched torchvision decode_jpeg), run on the CPU as its stand-in."""

    from himr_pipe.train.loader import decode_on_device, train_loader

    shards = tmp_path / "jpg"
    encrypt(sample_src, shards, "--scheme", "rs", "--size", "32", "--patch", "16", "--seed", "3", "--shard-size", "6")
    cpu = list(train_loader(str(shards), 4, epoch=0, workers=0))
    raw = list(train_loader(str(shards), 4, epoch=0, workers=0, raw=True))
    assert [y.tolist() for _, y in cpu] == [y.tolist() for _, y in raw]
    for (a, _), (blobs, _) in zip(cpu, raw):
        b = decode_on_device(blobs, "cpu")
        assert b.shape == a.shape and (b.int() - a.int()).abs().float().mean() < 2  # two libjpeg decoders agree
    res = cli("train", shards, "--val", shards, "--out", tmp_path / "run", "--epochs", "1", "--decode", "device",
              *TINY)
    assert "val top-1" in res.output
    r = cli("train", sample_src.parent / "nope", "--out", tmp_path / "x", *TINY, expect=2)
    assert "does not exist" in r.output or "manifest" in r.output
