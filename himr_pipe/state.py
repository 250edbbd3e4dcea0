"""The owner's private state: one reader and writer for everything a job keeps outside OUT.

It is always a local folder, also when OUT is on an object store: the key never leaves the owner's machine
except to the run's own workers.

Layout of a state folder (mode 0700; default location: :func:`default_state_dir`, or ``--state-dir``; never
inside OUT):

* ``job.json``: the job (as in the manifest), the job key, a check value of
  the seed, SRC's location and fingerprint, OUT's location;
* ``shards/NNNNNN.json``: per-shard stats: planned and written counts, bytes,
  sha256, the map from every output key to its input (index and source
  path), the skipped inputs by name, seconds per stage;
* ``skipped.json``: every skipped input of a finished run, by name;
* detection only: ``image_ids.json`` and ``dropped_annotations.json`` (:meth:`OwnerState.write_extra`).

This is what lets an interrupted run without ``--seed`` resume to the same result, and what lets the owner
trace a sample back to its file. ``job.json`` is written when a job is prepared (:mod:`himr_pipe.job`), the
rest by the pipeline; read by resume, ``decrypt`` and ``audit``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from .manifest import read_json, write_json_atomic
from .errors import Failed


def default_state_dir(out_dir: str) -> Path:
    """``$HIMR_PIPE_STATE_HOME`` or ``$XDG_STATE_HOME/himr-pipe`` or ``~/.local/state/himr-pipe``, then one
    folder per OUT (its name and a hash of its absolute path)."""
    base = os.environ.get("HIMR_PIPE_STATE_HOME")
    if not base:
        xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        base = os.path.join(xdg, "himr-pipe")
    from .storage import Location

    out = Location(out_dir)  # a URL (an object-store OUT) is keyed by the URL itself
    tag = hashlib.sha256(out.identity.encode()).hexdigest()[:16]
    return Path(base) / f"{out.leaf}-{tag}"


@dataclass(frozen=True, kw_only=True)
class ShardStats:
    """What a worker reports of one shard, and the owner's state keeps (``shards/NNNNNN.json``): every planned
    sample accounted for, as written or skipped with its reason. The driver, resume, decrypt and the audit
    read it back with :meth:`from_dict`."""

    index: int
    name: str
    planned: int            # samples in the shard's plan
    samples: int            # samples written
    bytes: int              # the published tar's size (0: nothing written, no file)
    sha256: str | None      # the tar's digest (None: no file)
    upscaled: int           # samples whose input was smaller than the canvas
    written: list           # (output key, input index, owner-side ref) per sample written
    skipped: list           # (input index, owner-side ref, reason) per input skipped
    seconds: dict           # busy seconds per stage (worker.ShardWorker.run)
    inputs_written: list    # the input indices with at least one sample written
    boxes: int | None = None      # detection: training boxes written
    boxes_cut: int | None = None  # detection: boxes cut by views or too small

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("boxes", "boxes_cut"):   # classification records carry no box counts
            if d[k] is None:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ShardStats":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class StateError(Failed, OSError):
    """The owner's state folder cannot be written (full, read-only, gone): the run stops, blaming the state."""


class OwnerState:
    """The state folder of one job."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def for_out(cls, out: str, state_dir: str | None = None) -> "OwnerState":
        """The state of ``out``: ``state_dir`` (a local path; ``file://`` allowed) or the default."""
        from .storage import is_url, local_path

        if state_dir and is_url(str(state_dir)):
            raise ValueError(f"the owner's state holds the job key and stays on this machine: --state-dir must be "
                             f"a local folder, not {state_dir!r}")
        return cls(local_path(str(state_dir)) if state_dir else default_state_dir(out))

    def __str__(self) -> str:
        return str(self.path)

    # -- the job record ----------------------------------------------------------------
    @property
    def job_path(self) -> Path:
        return self.path / "job.json"

    def read_job(self) -> dict | None:
        return read_json(self.job_path) if self.job_path.exists() else None

    def start(self, job_record: dict) -> None:
        """A new job: forget any per-shard stats of an earlier one, then write the job record (0700)."""
        if self.path.exists():
            shutil.rmtree(self.path / "shards", ignore_errors=True)
        try:
            (self.path / "shards").mkdir(parents=True, exist_ok=True)
            os.chmod(self.path, 0o700)
        except OSError as e:
            raise StateError(f"cannot create the owner state folder {self.path} ({e.strerror or e}); free space "
                             "or pass another --state-dir") from None
        write_json_atomic(self.job_path, job_record, private=True, what="the owner state's job record (key)")

    # -- per-shard stats ----------------------------------------------------------------
    def shard_path(self, index: int) -> Path:
        return self.path / "shards" / f"{index:06d}.json"

    def read_shard(self, index: int) -> ShardStats | None:
        p = self.shard_path(index)
        return ShardStats.from_dict(read_json(p)) if p.exists() else None

    def write_shard(self, stats: ShardStats) -> None:
        write_json_atomic(self.shard_path(stats.index), stats.to_dict(), private=True,
                          what=f"the owner state's record of shard {stats.name}")

    def shards(self) -> dict[str, ShardStats]:
        """Every recorded shard's stats, by shard file name."""
        out = {}
        for p in sorted((self.path / "shards").glob("*.json")):
            st = ShardStats.from_dict(read_json(p))
            out[st.name] = st
        return out

    def mismatches(self, shards: list[dict]) -> list[str]:
        """Why this state cannot be the one that wrote ``shards`` (a manifest's shard entries): every shard
        with samples must have a record here with the same sha256. A shard's bytes depend on the job key (the
        permutations, and the sample order), so another key, or a state without these records, shows here
        without any secret in OUT. Empty: the state matches."""
        recs = self.shards()
        out = []
        for e in shards:
            if not e.get("samples"):
                continue
            st = recs.get(e["name"])
            if st is None:
                out.append(f"{e['name']}: no record in the state")
            elif st.sha256 != e.get("sha256"):
                out.append(f"{e['name']}: written with another key (the state records other bytes than OUT's "
                           "manifest and its shard)")
        return out

    # -- the end of a run ---------------------------------------------------------------
    def write_skipped(self, skipped: list[dict]) -> None:
        write_json_atomic(self.path / "skipped.json", skipped, private=True,
                          what="the owner state's list of skipped inputs")

    def write_extra(self, name: str, obj) -> None:
        """Another private record of a finished run (detection: image_ids.json, dropped_annotations.json)."""
        write_json_atomic(self.path / name, obj, private=True, what=f"the owner state's {name}")

    @property
    def skipped_path(self) -> Path:
        return self.path / "skipped.json"
