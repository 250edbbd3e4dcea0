"""The run's control and its records (issue 35): a shard is published only while its driver holds OUT, a full
disk or a read-only parent is one line naming the file, and what a run records and prints is true."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import encrypt, manifest, shard_bytes
from himr_pipe.worker import WorkerHooks, WorkerSpec

ARGS = ("--scheme", "rs", "--format", "png", "--seed", "5", "--shard-size", "5", "--batch-size", "5")


def one_error_line(res, code: int) -> str:
    """The run's one line on stderr (exit ``code``), no traceback."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("himr-pipe: error:")]
    assert len(lines) == 1, res.output
    return lines[0]


@dataclass(frozen=True)
class DriverDiesBefore(WorkerHooks):
    """The driver "dies" (its lock file goes: nobody holds OUT) between a worker's check and its rename, at the
    ``at``-th publish; ``seen``: the shards in OUT at that moment, written to this file."""

    at: int
    out: str
    seen: str

    def before_publish(self, name: str) -> None:
        count = Path(self.seen + ".n")
        n = int(count.read_text()) if count.exists() else 0
        count.write_text(str(n + 1))
        if n == self.at:
            os.unlink(os.path.join(self.out, ".himr-pipe.lock"))
            Path(self.seen).write_text("\n".join(sorted(e for e in os.listdir(self.out) if e.endswith(".tar"))))


def with_driver(monkeypatch, hooks):
    """Every WorkerSpec carries ``hooks`` and names this process as its driver (as Ray's do)."""
    init = WorkerSpec.__init__

    def spec(self, **fields):
        init(self, **{**fields, "hooks": hooks, "driver": (socket.gethostname(), os.getpid())})

    monkeypatch.setattr(WorkerSpec, "__init__", spec)


@pytest.mark.parametrize("at", [0, 1, 3])
def test_no_shard_appears_after_the_driver_dies_between_check_and_rename(sample_src, tmp_path, monkeypatch, at):
    out, seen = tmp_path / "out", tmp_path / "seen"
    with_driver(monkeypatch, DriverDiesBefore(at, str(out), str(seen)))
    res = encrypt(sample_src, out, *ARGS, expect=None)
    assert res.exit_code == 1 and "no longer held" in res.output and "Traceback" not in res.output
    before = seen.read_text().split()
    assert len(before) == at
    assert sorted(e for e in os.listdir(out) if e.endswith(".tar")) == before  # nothing after the "kill"
    assert not list(out.glob(".*.tmp"))


def test_a_full_disk_at_the_manifest_is_one_line_naming_it_and_the_rerun_is_identical(sample_src, tmp_path,
                                                                                        monkeypatch):
    from himr_pipe import storage

    encrypt(sample_src, tmp_path / "ref", *ARGS)
    out = tmp_path / "out"
    write = storage.atomic_write

    def full(path, data, *a, **k):
        if str(path).endswith("manifest.json") and b'"complete"' in data:
            raise OSError(28, "No space left on device")  # ENOSPC at the final manifest
        write(path, data, *a, **k)

    monkeypatch.setattr(storage, "atomic_write", full)
    line = one_error_line(encrypt(sample_src, out, *ARGS, expect=None), 1)
    assert "OUT's manifest" in line and str(out / "manifest.json") in line and "No space left" in line
    assert not list(out.glob("*.tmp"))
    monkeypatch.setattr(storage, "atomic_write", write)  # space freed
    assert "every shard written before" in encrypt(sample_src, out, *ARGS).output  # not "0 img/s"
    assert shard_bytes(out) == shard_bytes(tmp_path / "ref") and manifest(out) == manifest(tmp_path / "ref")


def test_a_full_disk_at_the_owner_state_is_one_line_naming_it(sample_src, tmp_path, monkeypatch):
    from himr_pipe import atomic

    write = atomic.atomic_write

    def full(path, data, *a, **k):
        if str(path).endswith("job.json"):
            raise OSError(122, "Disk quota exceeded")  # EDQUOT
        write(path, data, *a, **k)

    monkeypatch.setattr(atomic, "atomic_write", full)
    line = one_error_line(encrypt(sample_src, tmp_path / "out", *ARGS, expect=None), 1)
    assert "the owner state's job record" in line and "job.json" in line and "quota" in line


def test_out_inside_a_read_only_folder_is_refused_in_one_line(sample_src, tmp_path, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        if os.geteuid() == 0:  # root writes anyway: the refusal the kernel would give, injected
            def refuse(*a, **k):
                raise OSError(30, "Read-only file system", str(parent / "out"))

            monkeypatch.setattr(os, "makedirs", refuse)
        line = one_error_line(encrypt(sample_src, parent / "out", *ARGS, expect=None), 2)
    finally:
        parent.chmod(0o700)
    assert "cannot create OUT" in line and str(parent / "out") in line
    assert not (parent / "out").exists()


def test_a_changed_sha256_in_the_manifest_is_blamed_on_the_manifest(sample_src, tmp_path):
    import json

    out = tmp_path / "out"
    encrypt(sample_src, out, *ARGS)
    m = manifest(out)
    m["shards"][1]["sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(m, indent=1) + "\n")
    line = one_error_line(encrypt(sample_src, out, *ARGS, expect=None), 2)
    assert "manifest does not match shard" in line and m["shards"][1]["name"] in line
    assert "another key" not in line


def test_a_finished_outs_rerun_says_it_is_complete_and_does_nothing(sample_src, tmp_path, monkeypatch):
    from himr_pipe import pipeline

    out = tmp_path / "out"
    encrypt(sample_src, out, *ARGS, audit=True)
    before, man = shard_bytes(out), manifest(out)
    monkeypatch.setattr(pipeline, "quick_audit", lambda *a, **k: pytest.fail("the audit ran again"))
    res = encrypt(sample_src, out, *ARGS, audit=True)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("himr-pipe: OUT is already complete"), res.output
    assert f"{man['totals']['inputs_written']} written" in lines[0] and "img/s" not in lines[0]
    assert shard_bytes(out) == before and manifest(out) == man


def test_a_changed_src_after_a_finished_run_is_not_called_an_interrupted_run(sample_src, tmp_path):
    import shutil

    src, out = tmp_path / "src", tmp_path / "out"
    shutil.copytree(sample_src, src)
    encrypt(src, out, *ARGS)
    victim = next(p for p in sorted(src.rglob("*.jpg")))
    victim.unlink()
    line = one_error_line(encrypt(src, out, *ARGS, expect=None), 2)
    assert "OUT is complete" in line and "SRC has changed" in line and "interrupted" not in line
