"""Hostile cases of ``himr-pipe train`` (issue 35), each one line with its exit code, never a traceback:

* two runs into one ``--out`` at the same moment: the second is refused (exit 2) naming the holder, and the first
  finishes untouched (both exited 0 and the last overwrote the other's checkpoint and log);
* a damaged checkpoint, truncated or empty, for ``--resume``, for a new run (refused because it exists, now saying
  it is damaged), for ``--init`` and for ``predict``: exit 2 naming the file and what to do (a 32-line
  traceback, or only "Aborted!");
* a FIFO in place of a shard: never opened, skipped as a faulty shard with its reason (it hung ``train``, which
  then named a checkpoint it never wrote);
* a shard changed after it was written (one flipped ``.cls`` byte): held to the manifest's sha256, the run stops
  before its epoch's checkpoint (exit 1, the last checkpoint intact); ``--no-verify-shards`` trains on it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAIN, cli

TINY = (*TINY_TRAIN, "--log-interval", "0")


@pytest.fixture(scope="module")
def out(jpeg_out):
    """18 samples of the default scheme (JPEG) in 3 shards of 6 (conftest's)."""
    return jpeg_out


@pytest.fixture(scope="module")
def trained(out, tmp_path_factory):
    """A run of one epoch (of two): its whole checkpoint."""
    run = tmp_path_factory.mktemp("trained") / "run"
    cli("train", out, "--out", run, "--epochs", "2", "--stop-after", "1", *TINY)
    return run


def train_process(*args, timeout=180) -> subprocess.CompletedProcess:
    """``himr-pipe train ARGS`` in its own process (stderr apart from stdout; a hang fails the test)."""
    return subprocess.run([sys.executable, "-m", "himr_pipe.cli", "train", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def one_error_line(text: str) -> str:
    """The one error line of a failed command's output (and nothing of a traceback)."""
    assert "Traceback" not in text and "Aborted!" not in text, text
    errors = [ln for ln in text.splitlines() if "error:" in ln]
    assert len(errors) == 1, text
    return errors[0]


# ------------------------------------------------------------------------------ one run per --out

WAITING_RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from himr_pipe.train.config import TrainHooks
    sys.path.insert(0, {tests!r})
    import faults

    class WaitAtStep(TrainHooks):  # the run holds its --out, mid-epoch, until the test lets it go
        def after_step(self, step):
            if step == 1:
                Path({started!r}).touch()
                t = time.monotonic()
                while not Path({release!r}).exists() and time.monotonic() - t < 120:
                    time.sleep(0.05)

    faults.install(WaitAtStep())
    from himr_pipe.cli import main
    main(args={args!r}, prog_name="himr-pipe")
""")


def test_a_second_run_into_the_same_out_is_refused_naming_the_holder(out, tmp_path):
    run, started, release = tmp_path / "run", tmp_path / "started", tmp_path / "release"
    args = ["train", str(out), "--out", str(run), "--epochs", "1", "--seed", "0", *TINY]
    script = WAITING_RUN.format(tests=str(Path(__file__).parent), started=str(started), release=str(release),
                                args=args)
    first = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        guard = time.monotonic() + 180  # against a hang only: no timing is asserted
        while not started.exists() and time.monotonic() < guard:  # the first run is mid-epoch, holding --out
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        assert started.exists(), "the first run never reached its first step"
        # the second, with other options (the probe's --seed 5 --lr 0.01), is refused before any work
        res = cli("train", out, "--out", run, "--epochs", "1", *TINY, "--seed", "5", "--lr", "0.01", expect=2)
        line = one_error_line(res.output)
        assert line.startswith(f"himr-pipe: error: --out {run} is in use by another himr-pipe train run (host ")
        assert f"pid {first.pid}," in line and "wait for it to finish, or train into another --out" in line
        assert res.output.strip() == line
        assert not (run / "checkpoint-last.pt").exists()  # the refused run wrote nothing
    finally:
        release.touch()
        stdout, stderr = first.communicate(timeout=180)
    assert first.returncode == 0, stderr
    assert stdout.rstrip().splitlines()[-1] == f"himr-pipe train: checkpoint {run / 'checkpoint-last.pt'}"
    ck = torch.load(run / "checkpoint-last.pt", weights_only=False)
    assert ck["config"]["seed"] == 0 and ck["epoch"] == 1  # the first run's, whole
    assert [json.loads(x)["epoch"] for x in (run / "log.jsonl").read_text().splitlines()] == [0]
    assert not (run / ".himr-pipe.lock").exists()  # released when the run ended
    # and the --out is free again: a third run is refused only for the checkpoint it would overwrite
    res = cli("train", out, "--out", run, "--epochs", "1", *TINY, expect=2)
    assert "exists: pass --resume" in one_error_line(res.output)


# ------------------------------------------------------------------------------ damaged checkpoints

@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_checkpoint_is_one_line_naming_it(out, trained, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    ckpt = run / "checkpoint-last.pt"
    whole = ckpt.read_bytes()
    ckpt.write_bytes(whole[: len(whole) // 2] if damage == "truncated" else b"")
    why = "(empty: 0 bytes)" if damage == "empty" else "(damaged, cut short or not a torch file: "
    # --resume: it was a 32-line PytorchStreamReader traceback (truncated) or only "Aborted!" (empty), exit 1
    res = cli("train", out, "--out", run, "--epochs", "2", *TINY, "--resume", expect=2)
    line = one_error_line(res.output)
    assert line.startswith(f"himr-pipe: error: {ckpt}: not a readable checkpoint {why}"), line
    assert line.endswith("; remove it (--resume then starts over from scratch) or train into a new --out")
    # without --resume it is still refused (it exists), and now says why neither way can use it
    res = cli("train", out, "--out", run, "--epochs", "2", *TINY, expect=2)
    line = one_error_line(res.output)
    assert line.startswith(f"himr-pipe: error: {ckpt}: not a readable checkpoint {why}"), line
    assert "it can't be resumed, and a new run won't overwrite it: remove it" in line and "a new --out" in line
    assert ckpt.read_bytes() == (whole[: len(whole) // 2] if damage == "truncated" else b"")  # left as it was
    # --init and predict read checkpoints through the same reader
    res = cli("train", out, "--out", tmp_path / "new", "--epochs", "1", *TINY, "--init", ckpt, expect=2)
    line = one_error_line(res.output)
    assert line == f"himr-pipe: error: {ckpt}: not a readable checkpoint {why}" + line.split(why, 1)[1]
    assert line.endswith("; point --init at a whole checkpoint")
    img = next(p for p in sorted((Path(out).parent.parent).rglob("*.jpg")))
    res = cli("predict", ckpt, img, expect=2)
    assert one_error_line(res.output).startswith(f"himr-pipe: error: {ckpt}: not a readable checkpoint {why}")
    # removed, --resume starts over, as the message says
    ckpt.unlink()
    res = cli("train", out, "--out", run, "--epochs", "2", "--stop-after", "1", *TINY, "--resume")
    assert f"--resume: no checkpoint at {ckpt}; starting from scratch" in res.output and ckpt.exists()


# ------------------------------------------------------------------------------ a FIFO for a shard

def test_a_fifo_in_place_of_a_shard_is_skipped_never_opened(out, tmp_path):
    bad = tmp_path / "out"
    shutil.copytree(out, bad)
    shard = sorted(bad.glob("*.tar"))[1]
    shard.unlink()
    os.mkfifo(shard)
    res = cli("train", bad, "--out", tmp_path / "run", "--epochs", "1", *TINY)  # opened without blocking: no hang
    assert (f"himr-pipe train: warning: shard {shard.name}: not a regular file (a FIFO): not opened; the samples it "
            "lacks are skipped") in res.output
    rec = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert rec["skipped_samples"] >= 6
    # every shard a FIFO: a clear failure, and no checkpoint named, since none was written
    for s in bad.glob("*.tar"):
        s.unlink()
        os.mkfifo(s)
    r = train_process(bad, "--out", tmp_path / "run2", "--epochs", "1", *TINY)  # its own process: a hang times out
    assert r.returncode == 1
    line = one_error_line(r.stderr)
    assert line.startswith("himr-pipe train: error: none of the 3 shard(s) this loader stream reads gave a sample")
    assert line.endswith("; no checkpoint was written (the run stopped in its first epoch)")
    assert "checkpoint-last.pt" not in r.stderr + r.stdout and not (tmp_path / "run2" / "checkpoint-last.pt").exists()


# ------------------------------------------------------------------------------ shards held to their sha256

def flip_label(shard: Path) -> None:
    """One .cls byte changed in place: the tar stays whole, the sample decodes, its label is wrong."""
    with tarfile.open(shard) as tf:
        m = next(x for x in tf.getmembers() if x.name.endswith(".cls"))
    b = bytearray(shard.read_bytes())
    b[m.offset_data] = ord("5") if b[m.offset_data] != ord("5") else ord("4")
    shard.write_bytes(bytes(b))


def test_a_shard_changed_after_writing_stops_the_run_before_its_checkpoint(out, trained, tmp_path):
    bad = tmp_path / "out"
    shutil.copytree(out, bad)
    shard = sorted(bad.glob("*.tar"))[1]
    flip_label(shard)
    mismatch = (f"himr-pipe train: error: shard {shard.name} does not match the manifest's sha256 (its bytes changed "
                "after encrypt-shards wrote it; its samples may carry wrong labels)")
    # a new run: exit 1 in its first epoch, no checkpoint written or named
    res = cli("train", bad, "--out", tmp_path / "new", "--epochs", "1", *TINY, expect=1)
    line = one_error_line(res.output)
    assert line.startswith(mismatch) and "--no-verify-shards" in line
    assert line.endswith("; no checkpoint was written (the run stopped in its first epoch)")
    assert not (tmp_path / "new" / "checkpoint-last.pt").exists()
    # mid-run (resumed on the changed shards): exit 1, the last checkpoint named and intact
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = (run / "checkpoint-last.pt").read_bytes()
    res = cli("train", bad, "--out", run, "--epochs", "2", *TINY, "--resume", expect=1)
    line = one_error_line(res.output)
    assert line.startswith(mismatch)
    assert line.endswith(f"; the last checkpoint is {run / 'checkpoint-last.pt'}: fix the shards and --resume")
    assert (run / "checkpoint-last.pt").read_bytes() == before
    # as validation shards too (every sample counts there)
    res = cli("train", out, "--val", bad, "--out", tmp_path / "val", "--epochs", "1", *TINY, expect=1)
    assert one_error_line(res.output).startswith(mismatch)
    # --no-verify-shards: trained on as it is (what the loader did before)
    cli("train", bad, "--out", tmp_path / "unchecked", "--epochs", "1", *TINY, "--no-verify-shards")
    assert (tmp_path / "unchecked" / "checkpoint-last.pt").exists()


def test_the_hash_is_taken_while_streaming_whole_shards_only(out, monkeypatch):
    """The loader reads each shard once: its digest comes from the bytes the tar reader took (and the padding
    after the end-of-archive blocks), never from a second read; a shard left part-read is not judged."""
    from himr_pipe.train import loader

    m = loader.read_manifest(str(out))
    urls = loader.shard_paths(str(out), m)
    opened = []
    real = loader._open_regular
    monkeypatch.setattr(loader, "_open_regular", lambda u, o: opened.append(u) or real(u, o))
    faults = []
    got = list(loader.checked_samples(urls[0], 6, "jpg", frozenset({"jpg", "cls"}), False,
                                      lambda *a: faults.append(a), m["shards"][0]["sha256"]))
    assert len(got) == 6 and faults == [] and opened == [urls[0]]
    # a wrong digest for a shard read whole: the mismatch; read in part: nothing said
    with pytest.raises(loader.ShardMismatch):
        list(loader.checked_samples(urls[0], 6, "jpg", frozenset({"jpg", "cls"}), False, None, "0" * 64))
    part = loader.checked_samples(urls[0], 6, "jpg", frozenset({"jpg", "cls"}), False, None, "0" * 64)
    assert len([next(part) for _ in range(3)]) == 3
    part.close()


def test_an_out_it_cannot_write_in_is_one_line(out, tmp_path, monkeypatch):
    """A read-only --out (a finished run kept read-only; as root, permissions can't make one here): the lock file
    can't be created, and that is one line, exit 2, not a PermissionError traceback."""
    from himr_pipe import lock

    def denied(self):
        raise PermissionError(13, "Permission denied", self.path)

    monkeypatch.setattr(lock.OutLock, "__enter__", denied)
    run = tmp_path / "run"
    res = cli("train", out, "--out", run, "--epochs", "1", *TINY, expect=2)
    assert one_error_line(res.output) == (f"himr-pipe: error: --out {run}: can't write in it (Permission denied): a "
                                          "run writes its checkpoints and log there; train into another --out")


def test_a_full_disk_at_the_checkpoint_is_one_line_naming_it(out, tmp_path, monkeypatch):
    """The disk fills as the checkpoint is written: one line naming the checkpoint, exit 1, no traceback (the
    atomic writer leaves no part file under its name)."""
    import errno

    from himr_pipe.train import trainer

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(trainer, "atomic_write", full)
    run = tmp_path / "run"
    res = cli("train", out, "--out", run, "--epochs", "1", *TINY, expect=1)
    line = one_error_line(res.output)
    assert line.startswith(f"himr-pipe: error: cannot write the checkpoint {run / 'checkpoint-last.pt'} (No space")
    assert not (run / "checkpoint-last.pt").exists()
