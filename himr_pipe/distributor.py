"""Distributors: who runs the shards of a job, under one failure policy.

A distributor takes the shards to do and a callback for each finished one,
and returns None when every shard finished, else the reason the run stopped.
Every distributor follows the same policy (:func:`failure_reason`):

* a shard that raises (an I/O error such as a full disk, or a bug) stops the
  run: the other shards are cancelled, the finished ones are kept;
* a worker process that dies (killed, crashed) stops the run the same way;
* Ctrl-C stops the run the same way.

Nothing is retried inside a run: a failed shard left nothing under its final
name (the shard's atomic commit), so rerunning the same command redoes
exactly the unfinished shards and writes the same bytes.

* :class:`Serial`: in this process (``--workers 0``);
* :class:`LocalProcesses`: a pool of spawned processes on this machine;
* :class:`RayTasks`: each shard a Ray task, on a local Ray or an existing cluster (``--distributor ray``).
  Ray retries a task whose worker process died (up to ``max_retries``): safe, because a shard is
  committed atomically and redone byte for byte. An exception raised by a shard is not retried (it
  would fail the same way); it stops the run as above.

Each engine is a class of the :class:`Distributor` protocol, registered by name in :data:`DISTRIBUTORS`: it checks
the request's options (its own, such as Ray's ``--ray-address``, and ``--workers``), says whether its shards run in
this process and how many threads each worker takes, and builds itself for a run. The CLI's ``--distributor``
choices, the request's checks, the job's and the pipeline's choice all ask the registry, so a new engine is one
class here and one line in :data:`DISTRIBUTORS` (plus a CLI option and a request field for each option of its own).
"""

from __future__ import annotations

import os

from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, ClassVar, Protocol

from .machine import usable_cpus
from .state import StateError
from .storage import StoreUnavailable
from .storefail import gave_up, share_give_up
from .worker import ShardTask, WorkerSpec, init_process_worker, run_in_process_worker


def failure_reason(task: ShardTask | None, exc: BaseException) -> str:
    """The one wording of why a run stopped."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, BrokenProcessPool):
        return "a worker process died (killed or crashed)"
    if isinstance(exc, StateError):  # the owner state's disk: not the shard's fault
        return str(exc)
    if isinstance(exc, StoreUnavailable):  # it names the request; add the shard where it does not
        name = task.name if task else "?"
        return str(exc) if name in str(exc) else f"{exc} (shard {name})"
    return f"shard {task.name if task else '?'} failed: {type(exc).__name__}: {exc}"




# On the CPU a worker process per CPU (up to this many) beat fewer processes with more threads each: with
# 2 CPUs, 2 processes of 1 thread ran rs 7% faster than 1 of 2 (their Python stages, the header check and
# the sink, do not share one GIL); past 16 the processes' memory (about 0.45 GiB each) outweighs that.
MAX_CPU_WORKERS = 16
# On a GPU the decode, kernels and encode run on the device: one process per 8 CPUs feeds it.
CPUS_PER_GPU_WORKER = 8


def default_workers(device: str) -> int:
    """--workers when not given: see MAX_CPU_WORKERS and CPUS_PER_GPU_WORKER."""
    n = usable_cpus()
    return min(n, MAX_CPU_WORKERS) if device == "cpu" else max(1, n // CPUS_PER_GPU_WORKER)


class Distributor(Protocol):
    """An engine: who runs the shards of a job. The class methods answer before any work, from the request
    (:class:`~.request.EncryptRequest`) or the run's options (:class:`~.job.RunOptions`); :meth:`run` runs."""

    # the request's fields only this engine reads (ray: ray_address): given with another engine, they are refused
    options: ClassVar[tuple[str, ...]]

    @classmethod
    def refusal(cls, req) -> str | None:
        """Why this engine cannot run ``req`` (a missing package, a bad option), or None."""

    @classmethod
    def workers(cls, req) -> int:
        """--workers as this engine reads it (``req.workers`` None: its default)."""

    @classmethod
    def in_this_process(cls, opts) -> bool:
        """Does every shard run in this process (so memory:// SRC and OUT, visible here only, can be used)?"""

    @classmethod
    def threads(cls, opts, shards: int) -> int:
        """Threads per worker when --threads is not given, for ``shards`` shards to do."""

    @classmethod
    def for_run(cls, spec: WorkerSpec, opts) -> "Distributor":
        """The engine that runs this job's shards, built from the one worker spec."""

    def run(self, todo: list[ShardTask], on_done: Callable[[dict], None],
            progress: Callable[[int], None]) -> str | None:
        """Run ``todo``: None when every shard finished, else why the run stopped (:func:`failure_reason`)."""


class Local:
    """``--distributor local``: this process with --workers 0 (:class:`Serial`), else local processes."""

    options: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def refusal(cls, req) -> str | None:
        return None

    @classmethod
    def workers(cls, req) -> int:
        return default_workers(req.device) if req.workers is None else req.workers

    @classmethod
    def in_this_process(cls, opts) -> bool:
        return opts.workers == 0

    @classmethod
    def threads(cls, opts, shards: int) -> int:
        # a share of this machine (the processes that will run: no more than the shards to do, so a small
        # job's few processes get the CPUs)
        return max(1, usable_cpus() // max(1, min(opts.workers, shards)))

    @classmethod
    def for_run(cls, spec: WorkerSpec, opts) -> "Distributor":
        return Serial(spec) if opts.workers == 0 else LocalProcesses(opts.workers, spec)


class Serial(Local):
    """Every shard in this process, one after another."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec

    def run(self, todo: list[ShardTask], on_done: Callable[[dict], None], progress: Callable[[int], None]) -> str | None:
        if not todo:
            return None
        worker = self.spec.build(progress)
        share_give_up()  # this run's: a request that gives up on a store stops the run (storage.retrying)
        for t in todo:
            try:
                on_done(worker.run(t))
            except (Exception, KeyboardInterrupt) as e:
                return failure_reason(t, e)
        return None


class LocalProcesses(Local):
    """Shards on ``workers`` spawned processes of this machine (DALI and torch threads do not survive fork)."""

    def __init__(self, workers: int, spec: WorkerSpec):
        self.workers = workers
        self.spec = spec

    def run(self, todo: list[ShardTask], on_done: Callable[[dict], None], progress: Callable[[int], None]) -> str | None:
        import multiprocessing as mp

        if not todo:
            return None
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        stop = share_give_up(ctx.Event())  # set by the first request that gives up on a store, in any process
        failure = held = None
        with ProcessPoolExecutor(max_workers=min(self.workers, len(todo)), mp_context=ctx,
                                 initializer=_init_process, initargs=(self.spec, queue, os.getpid(), stop)) as ex:
            futs = {ex.submit(_run_unless_gave_up, t): t for t in todo}
            pending = set(futs)
            try:
                while pending and failure is None:
                    fin, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(queue, progress)
                    for f in fin:
                        try:
                            on_done(f.result())
                        except ShardNotStarted as e:  # the shard that gave up says why: its reason comes first
                            held = held or failure_reason(futs[f], e)
                        except Exception as e:
                            failure = failure or failure_reason(futs[f], e)
            except KeyboardInterrupt as e:
                failure = failure_reason(None, e)
            ex.shutdown(wait=False, cancel_futures=True)  # the shards not started never start
            _drain(queue, progress)
        return failure or held


class ShardNotStarted(StoreUnavailable):
    """A shard held back because a request of this run gave up on a store (:func:`_run_unless_gave_up`)."""


def _init_process(spec: WorkerSpec, queue, parent: int, stop) -> None:
    share_give_up(stop)
    init_process_worker(spec, queue, parent)


def _run_unless_gave_up(task: ShardTask):
    """A shard in a worker process, unless a request of this run has given up on a store: then it does not
    start (a queued shard would wait its own patience again), and its running peers stop at their next retry."""
    if gave_up():
        raise ShardNotStarted(f"shard {task.name} not started: a request of this run gave up on the object store")
    return run_in_process_worker(task)


def _drain(queue, progress) -> None:
    import queue as q

    while True:
        try:
            progress(queue.get_nowait())
        except q.Empty:
            return
        except (OSError, ValueError, EOFError):
            return


class RayTasks:
    """Each shard a Ray task (one CPU each). Uses the Ray already initialised in this process, or starts one
    (``address``: an existing cluster; None: a local one) and shuts it down after the run."""

    options: ClassVar[tuple[str, ...]] = ("ray_address",)

    @classmethod
    def refusal(cls, req) -> str | None:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            return "--distributor ray needs Ray: pip install 'himr-pipe[ray]'"
        return None

    @classmethod
    def workers(cls, req) -> int:
        return req.workers or 0  # the local cluster's CPUs (0: all of them)

    @classmethod
    def in_this_process(cls, opts) -> bool:
        return False

    @classmethod
    def threads(cls, opts, shards: int) -> int:
        return 1  # a Ray task takes one CPU

    @classmethod
    def for_run(cls, spec: WorkerSpec, opts) -> "Distributor":
        # Ray's workers are not this process's children: each checks, before it publishes a shard, that this
        # run still holds OUT (local processes die with their parent instead: worker.die_with)
        import dataclasses
        import socket

        spec = dataclasses.replace(spec, driver=(socket.gethostname(), os.getpid()))
        return cls(opts.distributor_options.get("ray_address"), spec, num_cpus=opts.workers or None)

    def __init__(self, address: str | None, spec: WorkerSpec, max_retries: int = 3, num_cpus: int | None = None):
        self.address = address
        self.spec = spec
        self.max_retries = max_retries
        self.num_cpus = num_cpus

    def run(self, todo: list[ShardTask], on_done: Callable[[dict], None], progress: Callable[[int], None]) -> str | None:
        import ray

        if not todo:
            return None
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, num_cpus=None if self.address else self.num_cpus,
                     include_dashboard=False, log_to_driver=False)
        task_fn = ray.remote(**ray_task_options(self.spec.device, self.max_retries))(_ray_shard)
        args = ray.put(self.spec)
        refs = {task_fn.remote(args, t): t for t in todo}
        failure = None
        try:
            while refs and failure is None:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
                for r in ready:
                    t = refs.pop(r)
                    try:
                        st = ray.get(r)
                    except Exception as e:  # RayTaskError wraps the shard's own exception
                        failure = failure_reason(t, getattr(e, "cause", None) or e)
                        break
                    progress(len(t.items))
                    on_done(st)
        except KeyboardInterrupt as e:
            failure = failure_reason(None, e)
        finally:
            for r in refs:
                ray.cancel(r, force=True)
            if started:
                ray.shutdown()
        return failure


def ray_task_options(device: str, max_retries: int) -> dict:
    """The resources of one shard task: one CPU; on ``--device cuda`` also one whole GPU, which Ray makes the
    task's only visible device (so the worker runs on ``cuda``, i.e. that GPU). Ray keeps a worker process
    per GPU alive between tasks, and the ShardWorker (decoder, encoder, CUDA context) lives on in it."""
    opts = {"num_cpus": 1, "max_retries": max_retries, "retry_exceptions": False}
    if device != "cpu":
        opts["num_gpus"] = 1
    return opts


_RAY_WORKERS: dict = {}


def _ray_shard(spec: WorkerSpec, task: ShardTask) -> dict:
    """One shard in a Ray worker process; the worker (decoder, encoder pool) is kept per process and spec."""
    import json
    from dataclasses import asdict, replace

    # the hooks (the tests' fault injection) need not be JSON: keyed by their repr
    tag = json.dumps(asdict(replace(spec, hooks=None)), sort_keys=True) + repr(spec.hooks)
    w = _RAY_WORKERS.get(tag)
    if w is None:
        # the one GPU Ray gave this task (CUDA_VISIBLE_DEVICES)
        w = replace(spec, device="cpu" if spec.device == "cpu" else "cuda").build()
        _RAY_WORKERS.clear()
        _RAY_WORKERS[tag] = w
    return w.run(task)


# --distributor NAME -> its engine; the CLI's choices are these names, in this order
DISTRIBUTORS: dict[str, type] = {"local": Local, "ray": RayTasks}


def distributor_named(name: str) -> type:
    try:
        return DISTRIBUTORS[name]
    except KeyError:
        raise ValueError(f"--distributor must be one of {tuple(DISTRIBUTORS)}, got {name!r}") from None
