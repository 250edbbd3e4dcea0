"""Tasks as objects: what classification and detection each add to the one pipeline.

Every stage of a run is the same for every task: plan, read, decode, encrypt, encode, write, verify, audit and
train. Where they differ, the stage asks the job's :class:`Task` (``task_named(cfg.task)``) instead of testing
the task's name. A task says:

* what it is given and how a source lists its samples (:meth:`Task.claims`, :meth:`Task.open_source`) and
  the CLI's defaults for it (canvas size, scheme, resize);
* which settings it refuses (:meth:`Task.refusal`) and what the job's public record gains
  (:meth:`Task.job_record`);
* a sample's members (:meth:`Task.members`, :meth:`Task.member_writer`) and the counts a shard's stats carry;
* what the finished OUT gains beside the shards (:meth:`Task.finish`: detection's ground truth) and how
  verify checks it (:meth:`Task.check_sample`, :meth:`Task.check_out`);
* the CLI's line about it (:meth:`Task.summary`).

How a task trains (model, loss, evaluation) is the training side's: :mod:`himr_pipe.train.tasks`, keyed by the
same name, so the data side never imports torch models. A new task is a file here and a recipe there.
"""

from __future__ import annotations

from .base import Task
from .classification import Classification
from .detection import Detection

TASKS: dict[str, Task] = {t.name: t for t in (Classification(), Detection())}
# tried in this order by ``--task auto``: the first that claims SRC takes it (classification takes anything)
AUTO_ORDER = ("detection", "classification")


def task_named(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"task must be one of {tuple(TASKS)}, got {name!r}") from None


def job_task(job: dict) -> str:
    """The task's name in a manifest's ``job`` record (records of versions before tasks say none: classification)."""
    return job.get("task", "classification")


def task_of_job(job: dict) -> Task:
    """The task of a manifest's ``job`` record, as an object."""
    return task_named(job_task(job))


def task_for_source(src: str, annotations: str | None) -> Task:
    """``--task auto``: detection when annotations are given or found beside SRC, else classification."""
    return next(TASKS[n] for n in AUTO_ORDER if TASKS[n].claims(src, annotations))


def owns_file(name: str) -> bool:
    """Is this OUT entry (besides shards and the manifest) one some task writes?"""
    return any(t.owns_file(name) for t in TASKS.values())


__all__ = ["TASKS", "Task", "job_task", "owns_file", "task_for_source", "task_named", "task_of_job"]
