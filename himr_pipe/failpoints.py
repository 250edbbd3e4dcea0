"""Failure injection for the tests: the one place that reads ``$HIMR_PIPE_FAILPOINT``.

* ``kill-after=N``: the worker process SIGKILLs itself once it has written N samples (a crash mid-shard, as by
  kill -9);
* ``kill-once-after=N:MARKER``: the same, only if the file MARKER does not exist yet, which it creates first
  (so a retried task then runs through: the Ray retry tests).

* ``slow-samples=SECONDS``: the worker sleeps that long after every batch it writes (a run that stays alive
  long enough to be signalled or killed from outside: the driver-death and SIGTERM tests).

* ``train-kill-at-step=N``: the trainer SIGKILLs itself once step N is done (a run killed mid-epoch);
* ``train-kill-after-checkpoint=E``: the trainer SIGKILLs itself right after epoch E's checkpoint is on disk,
  before the log is (a kill between the two writes).

Unset, nothing happens and nothing is read again. The product never sets it; the tests do, in the
environment of the processes they start (distributors pass it on to their workers: :func:`child_env`).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

ENV = "HIMR_PIPE_FAILPOINT"


@dataclass(frozen=True)
class KillAfter:
    samples: int
    marker: str | None = None

    def reached(self, done: int) -> None:
        """SIGKILL this process when ``done`` samples are written (creating the marker first)."""
        if done >= self.samples:
            if self.marker:
                open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class SlowSamples:
    seconds: float

    def reached(self, done: int) -> None:
        import time

        time.sleep(self.seconds)


def from_env() -> KillAfter | SlowSamples | None:
    """The failpoint the environment asks for, or None."""
    fp = os.environ.get(ENV, "")
    if fp.startswith("slow-samples="):
        return SlowSamples(float(fp.split("=", 1)[1]))
    if fp.startswith("kill-after="):
        return KillAfter(int(fp.split("=", 1)[1]))
    if fp.startswith("kill-once-after="):
        n, marker = fp.split("=", 1)[1].split(":", 1)
        return None if os.path.exists(marker) else KillAfter(int(n), marker)
    return None


def child_env() -> dict[str, str]:
    """The failpoint's variable for a worker started elsewhere (a Ray task), or nothing."""
    return {ENV: os.environ[ENV]} if ENV in os.environ else {}


def _train_point(name: str) -> int | None:
    fp = os.environ.get(ENV, "")
    return int(fp.split("=", 1)[1]) if fp.startswith(name + "=") else None


def train_step(step: int) -> None:
    """The trainer's step ``step`` is done (``train-kill-at-step``)."""
    if _train_point("train-kill-at-step") == step:
        os.kill(os.getpid(), signal.SIGKILL)


def after_checkpoint(epoch: int) -> None:
    """The checkpoint after ``epoch`` epochs is on disk, its log not yet (``train-kill-after-checkpoint``)."""
    if _train_point("train-kill-after-checkpoint") == epoch:
        os.kill(os.getpid(), signal.SIGKILL)
