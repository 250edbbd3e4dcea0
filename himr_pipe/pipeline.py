"""encrypt-shards: source -> decode + resize -> encrypt -> encode -> shard sink, by role.

* :mod:`.plan`: what defines the output and the records of the plan;
* :mod:`.job`: the plan of shards, the checks before any work, the resume scan;
* :mod:`.worker`: one shard, start to end, built from a :class:`~.worker.WorkerSpec`;
* :mod:`.distributor`: who runs the shards (this process, local processes, Ray), under one failure policy;
* this module: the orchestration, one function a job: :func:`prepared` (the checks, OUT's lock held for the
  ``with``), :func:`_plan` (plan and resume scan), :func:`_distribute`, :func:`_finish` (the manifest,
  assembled from the per-shard stats, complete or not, then the quick audit). The CLI gets a typed
  :class:`~.job.RunResult`.

The shard is the unit of work (as in img2dataset). A rerun finds complete shards and redoes the rest;
because order and permutations derive from the job key, shard by shard, the result is byte-identical to
an uninterrupted run.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

from .distributor import distributor_named
from .errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL
from .job import JobConfig, RunOptions, RunResult, plan_shards, prepare, resume_scan
from .lock import LeaseLost
from .manifest import MANIFEST, TIMM_INFO, build_manifest, build_timm_info
from .state import OwnerState, ShardStats, StateError
from .storage import Location, StoreUnavailable
from .worker import WorkerSpec


def encrypt_shards(src: str, out: str, cfg: JobConfig, seed: int | None = None,
                   opts: RunOptions | None = None, log=print) -> RunResult:
    """Encrypt SRC into OUT: prepare (checks, OUT's lock, the owner's state), plan and scan, distribute the
    shards to do, assemble the manifest from every shard's stats, then the quick audit."""
    opts = opts or RunOptions()
    t0 = time.time()
    with prepared(src, out, cfg, seed, opts) as job:
        plan = _plan(job, cfg)
        if not plan.todo:
            finished = _finished_manifest(job.out)
            if finished is not None:  # a rerun of a finished job: said so, nothing redone (the audit neither)
                return RunResult(finished, EXIT_OK, time.time() - t0, 0, job.state, already_complete=True)
        failure = _distribute(plan, job, cfg, opts)
        return _finish(plan, job, cfg, opts, failure, t0)


@dataclass(frozen=True)
class Prepared:
    """A job that passed every check, with OUT's lock held."""

    where: str          # OUT as the user named it (a path or a URL)
    out: Location
    source: object      # sources.Source (or the COCO source)
    state: str          # the owner's state folder
    key: str            # the job key (never in OUT)
    lock: object        # OUT's lock or lease


@contextmanager
def prepared(src: str, out: str, cfg: JobConfig, seed: int | None, opts: RunOptions):
    """:func:`~.job.prepare`'s checks, with OUT's lock held for the whole ``with`` (released however it ends)."""
    source, state, key, lock = prepare(src, out, cfg, seed, opts,
                                      distributor_named(opts.distributor).in_this_process(opts))
    try:
        yield Prepared(out, Location(out), source, str(state), key, lock)
    finally:
        lock.__exit__(None, None, None)


@dataclass
class Plan:
    """The job's shards, split by the resume scan; ``done`` gains every shard that finishes."""

    shards: list
    todo: list          # the ShardTasks still to write
    done: dict          # shard index -> its stats
    image_id: object
    remaining: int      # samples still to write


def _plan(job: Prepared, cfg: JobConfig) -> Plan:
    shards = plan_shards(job.source, job.key, cfg)
    image_id = cfg.task_def.image_ids(job.source, job.key, cfg)
    done, todo = resume_scan(shards, cfg, job.out, job.state, image_id)
    return Plan(shards, todo, done, image_id, sum(len(t.items) for t in todo))


def _finished_manifest(out: Location) -> dict | None:
    """OUT's manifest when it says the job is complete (its job was checked against this one by prepare)."""
    try:
        m = out.read_json(MANIFEST)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("status") == "complete" else None


def _distribute(plan: Plan, job: Prepared, cfg: JobConfig, opts: RunOptions) -> str | None:
    """Run the shards to do; each finished shard's stats go into the owner's state (only the driver writes it)
    and into ``plan.done``. Returns None, or why the run stopped."""
    engine = distributor_named(opts.distributor)
    threads = opts.threads or engine.threads(opts, len(plan.todo))
    spec = WorkerSpec(job=cfg.public(), key_hex=job.key, out=job.out.root, threads=threads,
                      batch_size=opts.batch_size, device=opts.device, kernels=opts.kernels)
    dist = engine.for_run(spec, opts)
    ostate = OwnerState(job.state)

    def record(st: ShardStats) -> None:
        try:
            ostate.write_shard(st)
        except OSError as e:  # the state's disk, not the shard: say so (the shard is complete and is redone)
            raise StateError(f"the owner state at {job.state} cannot be written ({e.strerror or e}); shard "
                             f"{st.name} is complete in OUT but not recorded there. Free space on that disk (or "
                             "pass another --state-dir for a new OUT) and rerun the same command to resume") from None
        plan.done[st.index] = st

    show = sys.stderr.isatty() if opts.progress is None else opts.progress
    from tqdm import tqdm

    bar = tqdm(total=plan.remaining, unit="img", disable=not show, dynamic_ncols=True, smoothing=0.1,
               desc=f"encrypt-shards {cfg.scheme.name}")
    try:
        return dist.run(plan.todo, record, bar.update)
    finally:
        bar.close()


def _finish(plan: Plan, job: Prepared, cfg: JobConfig, opts: RunOptions, failure: str | None,
            t0: float) -> RunResult:
    """:func:`_write_manifest`, or, when the object store holding OUT is gone, why the run stopped (exit 1; the
    owner's state has every finished shard, so the rerun resumes from them)."""
    try:
        return _write_manifest(plan, job, cfg, opts, failure, t0)
    except StoreUnavailable as e:
        why = failure or str(e)
        return RunResult(None, EXIT_FAILED, time.time() - t0, plan.remaining, job.state,
                         [f"run stopped: {why}. OUT's manifest could not be updated; complete shards are kept; "
                          f"rerun the same command to resume once the store answers."])


def _write_manifest(plan: Plan, job: Prepared, cfg: JobConfig, opts: RunOptions, failure: str | None,
                    t0: float) -> RunResult:
    """The manifest, assembled from the per-shard stats (complete or not), written last; then the quick audit."""
    outl, source, ostate, done = job.out, job.source, OwnerState(job.state), plan.done
    total_inputs = len(source.inputs)
    shard_recs, skipped, upscaled, inputs_written = [], {}, 0, set()
    for x in source.inputs:
        if x.skip is not None:
            skipped[x.index] = (x.index, x.ref, x.skip)
    for i in sorted(done):
        st = done[i]
        for x in st.skipped:  # with --views an input is planned once per view: count it once
            skipped[x[0]] = tuple(x)
        inputs_written.update(st.inputs_written)
        upscaled += st.upscaled
        if st.samples:
            shard_recs.append({"name": st.name, "samples": st.samples, "bytes": st.bytes, "sha256": st.sha256})
    skipped = sorted(skipped.values())
    skip_recs = [({"input": i, "reason": r, "path": ref} if cfg.include_paths else {"input": i, "reason": r})
                 for i, ref, r in skipped]
    complete = failure is None and len(done) == len(plan.shards)
    task_record = cfg.task_def.finish(cfg, source, outl, ostate, done, inputs_written, plan.image_id) \
        if complete else None  # detection: the ground truth, written once every shard is done
    try:
        job.lock.check()  # on an object store: is this run still OUT's owner? (the manifest is the last word)
    except LeaseLost as e:  # no manifest: the run that owns OUT now writes it
        return RunResult(None, EXIT_FAILED, time.time() - t0, plan.remaining, job.state, [f"run stopped: {e}"])
    manifest = build_manifest(cfg.public(), source.classes, source.empty_classes, shard_recs, total_inputs,
                              skip_recs, upscaled, "complete" if complete else "incomplete", len(inputs_written))
    manifest["model"] = model = cfg.task_def.model_record(cfg.scheme)  # the timm family that fits the shards
    if not source.labelled:  # samples without .cls (absent: every sample of a classification has one)
        manifest["labelled"] = False
    if task_record is not None:
        manifest[cfg.task] = task_record
    if complete:
        t = manifest["totals"]
        assert t["inputs_written"] + t["skipped"] == total_inputs, t
        assert t["written"] == t["inputs_written"] * cfg.views, t
        outl.write_json(TIMM_INFO, build_timm_info(cfg.split, shard_recs, model), "OUT's split file for timm")
        # the owner's copy of what was skipped, by name
        ostate.write_skipped([{"input": i, "path": ref, "reason": r} for i, ref, r in skipped])
    outl.write_json(MANIFEST, manifest, "OUT's manifest")  # last: after every shard and the split file
    secs = time.time() - t0  # the run's own time; the quick audit's is recorded with its figures
    msgs: list[str] = []
    audit_seconds = None
    if complete and opts.audit_samples > 0 and cfg.scheme.definition.encrypts and manifest["totals"]["written"]:
        # after the complete manifest is on disk: an interrupted audit never leaves OUT unfinished
        t = time.perf_counter()
        manifest["audit"] = quick_audit(job.where, job.state, opts.audit_samples, source, msgs, opts.progress)
        audit_seconds = time.perf_counter() - t
        outl.write_json(MANIFEST, manifest, "OUT's manifest (with the quick audit's figures)")
    if failure:
        msgs.append(f"run stopped: {failure}. Complete shards are kept; rerun the same command to resume.")
        code = EXIT_FAILED
    else:
        code = EXIT_PARTIAL if skipped else EXIT_OK
    return RunResult(manifest, code, secs, plan.remaining, job.state, msgs, audit_seconds)


def quick_audit(out: str, state: str, samples: int, source, msgs: list, progress: bool | None = False) -> dict:
    """Attack a few samples of the finished OUT; the figures (numbers only) go into the manifest.

    The same sampler and attack as ``himr-pipe audit OUT --samples N --seed 0``, so that command
    reproduces these figures. A setting over the leak budget adds one plain warning line. ``progress``: as
    the run's (a bar on a terminal, else a short line per image; False: silent), for it takes seconds an image.
    """
    from .audit.attack import warning_line
    from .audit.report import audit_out, manifest_figures
    from .scheme import Scheme

    try:
        report, _ = audit_out(out, samples, state, seed=0, source=source, progress=progress,
                              desc="himr-pipe: quick audit")
    except Exception as e:  # the audit must never cost the user a finished run
        msgs.append(f"the quick audit failed ({type(e).__name__}: {e}); run himr-pipe audit OUT to measure the leak")
        return {"error": f"{type(e).__name__}: {e}"}
    fig = manifest_figures(report)
    warn = warning_line(Scheme.from_dict(report["scheme"]), report["mean"])
    if warn:
        msgs.append(warn)
    return fig
