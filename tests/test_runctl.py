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
