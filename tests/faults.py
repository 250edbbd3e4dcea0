"""The tests' fault injection: a crash or a slow-down at an exact point of a run, through the hooks the product
offers its callers (:class:`himr_pipe.worker.WorkerHooks` in ``WorkerSpec.hooks``, and
:class:`himr_pipe.train.config.TrainHooks` given to ``train``). The product never reads a fault from anywhere;
a test installs one in its own process (:func:`install`, with pytest's ``monkeypatch.setattr``) or starts the
command under one: ``python tests/run_with_faults.py FAULT -- ARGS`` (:func:`command`).

FAULT is one of

* ``kill-after=N``: a worker SIGKILLs its process once it has written N samples (a crash mid-shard, as by kill -9);
* ``kill-once-after=N:MARKER``: the same, unless the file MARKER exists, which it creates first (so a retried
  task then runs through: the Ray retry test);
* ``slow-samples=SECONDS``: a worker sleeps that long after every batch it writes (a run that stays alive long
  enough to be signalled or killed from outside);
* ``train-kill-at-step=N``: the trainer SIGKILLs its process once step N is done (a run killed mid-epoch);
* ``train-kill-after-checkpoint=E``: the trainer SIGKILLs its process right after epoch E's checkpoint is on
  disk, before its log is (a kill between the two writes).

The worker's hooks travel inside the pickled WorkerSpec: a spawned worker process imports this module by the
sys.path its parent passes it (tests/ is on it); a Ray worker gets the class by value (``test_ray``).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from himr_pipe.train.config import TrainHooks
from himr_pipe.worker import WorkerHooks, WorkerSpec


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class KillAfter(WorkerHooks):
    samples: int
    marker: str | None = None

    def after_batch(self, done_samples: int) -> None:
        if done_samples < self.samples:
            return
        if self.marker is not None:
            if os.path.exists(self.marker):
                return  # killed once already: this one runs through
            open(self.marker, "w").close()
        _die()


@dataclass(frozen=True)
class SlowSamples(WorkerHooks):
    seconds: float

    def after_batch(self, done_samples: int) -> None:
        time.sleep(self.seconds)


@dataclass(frozen=True)
class TrainKill(TrainHooks):
    at_step: int | None = None
    after_checkpoint_of: int | None = None  # the epoch count whose checkpoint is the last thing written

    def after_step(self, step: int) -> None:
        if step == self.at_step:
            _die()

    def after_checkpoint(self, epoch: int) -> None:
        if epoch == self.after_checkpoint_of:
            _die()


def parse(fault: str) -> WorkerHooks | TrainHooks:
    """The hooks that FAULT (module docstring) names."""
    name, _, value = fault.partition("=")
    if name == "kill-after":
        return KillAfter(int(value))
    if name == "kill-once-after":
        n, marker = value.split(":", 1)
        return KillAfter(int(n), marker)
    if name == "slow-samples":
        return SlowSamples(float(value))
    if name == "train-kill-at-step":
        return TrainKill(at_step=int(value))
    if name == "train-kill-after-checkpoint":
        return TrainKill(after_checkpoint_of=int(value))
    raise ValueError(f"unknown fault {fault!r}")


def install(hooks: WorkerHooks | TrainHooks, setattr=setattr) -> None:
    """Every run this process starts from now on carries ``hooks``: each WorkerSpec built here (by any
    distributor) unless it names its own, or each ``train`` call that the command makes. ``setattr``: pytest's
    ``monkeypatch.setattr`` in a test (undone after it)."""
    if isinstance(hooks, WorkerHooks):
        init = WorkerSpec.__init__

        def with_hooks(self, **fields):
            init(self, **{**fields, "hooks": fields.get("hooks") or hooks})

        setattr(WorkerSpec, "__init__", with_hooks)
    else:
        from himr_pipe.train import trainer

        setattr(trainer, "train", functools.partial(trainer.train, hooks=hooks))


def command(fault: str, *args) -> list[str]:
    """The argv of ``himr-pipe ARGS`` run in a new process under FAULT."""
    return [sys.executable, str(Path(__file__).with_name("run_with_faults.py")), fault, "--", *map(str, args)]
