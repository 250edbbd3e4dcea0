"""The job: the plan of shards, and the checks before any work.

* :class:`~.plan.JobConfig` (in :mod:`.plan`, re-exported here) is everything that defines OUT: two runs with
  equal configs write the same OUT. :class:`RunOptions` is how to run it, which never changes the output.
* :func:`plan_shards` orders the accepted inputs (x their views) with the job key's order stream and
  cuts them into shards: the shard is the unit of work, of resume and of distribution.
* :func:`prepare` runs every check that must pass before any work, takes OUT's lock and starts or
  resumes the owner's state; :func:`resume_scan` splits the plan into shards already done (their
  stats in the state, their file complete) and shards to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import keys
from .lock import LOCK_NAME, OutLocked, lock_for
from .manifest import MANIFEST, TIMM_INFO, Manifest, ManifestError, build_manifest, job_diff
from .shards import shard_name
from .sources import Input, Source
from .state import OwnerState, ShardStats
from .storage import Location, StorageError, StoreUnavailable, in_process_only, is_url
from .tasks import owns_file
from .plan import JobConfig, JobError, PlannedSample, ShardTask  # noqa: F401 (JobConfig, JobError: re-exported)

AUDIT_SAMPLES = 4  # the quick audit that ends a run (its time: the --audit help), figures into the manifest


@dataclass
class RunOptions:
    """How to run; does not change the output."""

    workers: int = 1           # worker processes; 0 runs in this process
    threads: int = 0           # decode/resize/encode threads per worker; 0 = usable CPUs // workers
    batch_size: int = 64
    state_dir: str | None = None
    progress: bool | None = None   # None: on when stderr is a terminal
    device: str = "cpu"            # "cpu" or "cuda[:N]": where decode, encryption and encode run
    kernels: str = "auto"          # "auto" (Triton on CUDA, on the CPU "cpu": numpy, fused with encoding), "cpu", "torch", "triton"
    audit_samples: int = AUDIT_SAMPLES  # quick audit of this many samples at the end (0: none)
    distributor: str = "local"     # a name of distributor.DISTRIBUTORS
    annotations: str | None = None  # detection: the COCO instances JSON (None: the usual layout beside SRC)
    # the engine's own options by request field (ray: {"ray_address": an existing cluster, or None: a local one})
    distributor_options: dict = field(default_factory=dict)


@dataclass
class RunResult:
    """What a run reports: its manifest (None when it stopped before writing one: an object-store lease lost
    to another run), exit code, seconds (the quick audit's apart), samples processed, the owner's state,
    warnings and failures to print, and how long the quick audit took (None: none ran)."""

    manifest: dict | None
    exit_code: int
    seconds: float
    processed: int = 0
    state_dir: str = ""
    messages: list[str] = field(default_factory=list)
    audit_seconds: float | None = None
    already_complete: bool = False  # a rerun of a finished OUT: nothing was done (no audit either)


# -- the plan -----------------------------------------------------------------------
def plan_shards(source: Source, key_hex: str, cfg: JobConfig) -> list[list[tuple[Input, int]]]:
    """Cut the accepted inputs (x their views) into shards, in an order drawn from the job key."""
    ok = [(i, v) for i in source.inputs if i.skip is None for v in range(cfg.views)]
    if cfg.shuffle:
        ok = [ok[j] for j in keys.sample_order(key_hex, len(ok))]
    return [ok[s:s + cfg.shard_size] for s in range(0, len(ok), cfg.shard_size)]



def resume_scan(shards: list, cfg: JobConfig, out: Location, state,
                image_id=lambda x: 0) -> tuple[dict[int, ShardStats], list[ShardTask]]:
    """(done, todo): shards whose stats are in the state and whose file is complete, and the rest as tasks.

    OUT is listed once (one request on an object store), not asked about shard by shard."""
    names = [shard_name(cfg.split, i) for i in range(len(shards))]
    sizes = out.sizes()
    for e in sizes:
        if e.startswith(f".{cfg.split}-") and e.endswith(".tar.tmp"):
            out.remove(e)  # leftovers of an interrupted run (OUT's lock makes this safe)
    done: dict[int, ShardStats] = {}
    todo: list[ShardTask] = []
    for i, items in enumerate(shards):
        st = OwnerState(state).read_shard(i)
        if st is not None and st.planned == len(items) and (st.samples == 0 or sizes.get(names[i]) == st.bytes):
            done[i] = st
            continue
        todo.append(ShardTask(index=i, name=names[i], items=tuple(
            PlannedSample(pos=pos, index=x.index, ref=x.ref, label=x.label, loc=x.loc, view=v, target=x.target,
                          image_id=image_id(x))
            for pos, (x, v) in enumerate(items))))
    return done, todo



def _own_files(out: Location) -> bool:
    """True when every entry of OUT is something this tool writes."""
    for e in out.listdir():
        if e in (MANIFEST, TIMM_INFO, MANIFEST + ".tmp", TIMM_INFO + ".tmp", LOCK_NAME):
            continue
        if e.endswith(".tar") or e.endswith(".tar.tmp") or owns_file(e):
            continue
        return False
    return True


def _first_shard_mismatch(outl: Location, ostate: OwnerState) -> list[str]:
    """For a state recorded for another OUT path (a moved OUT, or another OUT's state): the digest of the first
    shard on disk that the state has a record of, against that record (one shard read; a shard's bytes depend
    on the key, so one is enough to tell)."""
    sizes = outl.sizes()
    for name, st in sorted(ostate.shards().items()):
        if st.sha256 and name in sizes:
            digest, _ = outl.sha256(name)  # verify's reader (retried whole on an object store)
            return [] if digest == st.sha256 else [f"{name}: written with another key (other bytes)"]
    return []


def _check_manifest_against_shards(outl: Location, ostate: OwnerState, written: list[dict]) -> None:
    """Where OUT's manifest and the owner state disagree on a shard's sha256, the shard itself says which was
    changed: it matches the state (the manifest was edited), the manifest (the state is another key's: left to
    :meth:`~.state.OwnerState.mismatches`), or neither (the shard was changed). One shard read, at the first
    disagreement only."""
    recs = ostate.shards()
    for e in written:
        st = recs.get(e["name"])
        if st is None or st.sha256 == e.get("sha256"):
            continue
        name = e["name"]
        if outl.size(name) is None:
            return  # nothing to tell by: mismatches says what the state lacks
        digest = outl.sha256(name)[0]
        if digest == e.get("sha256"):
            return  # the shard is the manifest's: the state is another key's (mismatches says so)
        if digest == st.sha256:
            raise JobError(f"OUT's manifest does not match shard {name} (its sha256 there differs from the "
                           "shard's, which the owner state records): the manifest was changed after the run. "
                           "Restore it, or remove manifest.json and rerun the same command to write it again "
                           "from the owner state; himr-pipe verify OUT lists every difference")
        raise JobError(f"shard {name} matches neither OUT's manifest nor the owner state's record (it was "
                       "changed after the run): remove it and rerun the same command to write it again; himr-pipe verify OUT lists every "
                       "difference")


def _abs(p: str) -> str:
    return p if is_url(p) else os.path.abspath(p)


def prepare(src: str, out: str, cfg: JobConfig, seed: int | None, opts: RunOptions, in_this_process: bool = True):
    """All checks that must pass before any work; returns (source, state_dir, key, lock).

    From the moment OUT exists this run holds its lock (:mod:`.lock`): a second run on the same OUT is
    refused here, before it reads or writes anything. The caller releases the lock when the run ends.
    ``in_this_process``: the engine runs every shard in this process (the distributor's answer, asked by the
    pipeline): an in-process SRC or OUT (memory://) is refused otherwise."""
    if (seed is not None) != cfg.seeded:
        raise ValueError("cfg.seeded must match whether a seed is given")
    from .sources import SourceError

    try:
        outl = Location(out)
        source = cfg.task_def.open_source(src, opts.annotations)
    except (SourceError, StorageError) as e:
        raise JobError(str(e)) from None
    if (source.in_process or in_process_only(out)) and not in_this_process:
        raise JobError("memory:// lives in one process, where worker processes cannot see it; "
                       "run with --workers 0 (or use a local folder or an object store)")
    if outl.is_file_root():
        raise JobError(f"OUT {out!r} exists and is not a folder")
    if not any(c in src for c in "{}") and not Location(src).is_file_root() and Location(src).contains(outl):
        raise JobError("OUT must not be inside SRC")  # before OUT exists: a refusal must not add a class to SRC
    created = _missing_dirs(outl)
    try:
        outl.makedirs()
    except OSError as e:  # a read-only or full parent, no permission: nothing was done yet
        _remove_empty(created)
        raise JobError(f"cannot create OUT {out!r} ({e.strerror or e}{f': {e.filename}' if e.filename else ''}); "
                       "choose a folder this user can write, or create OUT first") from None
    lock = lock_for(outl)
    try:
        lock.__enter__()
    except OutLocked as e:
        _remove_empty(created)
        raise JobError(str(e)) from None
    except StoreUnavailable:  # no answer at all: not the user's arguments (exit 1, not 2)
        raise
    except OSError as e:  # an object store refused the lease: no bucket, no credentials, no permission
        raise JobError(f"cannot write to OUT {out!r} ({type(e).__name__}: {e})") from None
    try:
        return (*_prepare_locked(src, outl, cfg, seed, opts, source), lock)
    except BaseException:
        lock.__exit__(None, None, None)
        _remove_empty(created)  # a refused run leaves no trace: the folders it made for OUT go again
        raise


def _missing_dirs(outl: Location) -> list[str]:
    """The local folders that making OUT would create, deepest first (none on an object store)."""
    if outl.remote:
        return []
    out, p = [], os.path.abspath(outl.root)
    while not os.path.exists(p):
        out.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return out


def _remove_empty(dirs: list[str]) -> None:
    for d in dirs:  # deepest first; one that something else filled meanwhile stays
        try:
            os.rmdir(d)
        except OSError:
            return


def _prepare_locked(src: str, outl: Location, cfg: JobConfig, seed: int | None, opts: RunOptions, source):
    out = outl.root
    try:
        ostate = OwnerState.for_out(out, opts.state_dir)
    except ValueError as e:
        raise JobError(str(e)) from None
    state = ostate.path
    if outl.contains(Location(str(state))):
        raise JobError("the state folder holds the owner's secrets and must not be inside OUT")
    job = cfg.public()
    manifest = None
    if outl.exists(MANIFEST):
        try:
            manifest = Manifest.load(out).data
        except ManifestError as e:
            raise JobError(f"{e}; use an empty OUT") from None
        diff = job_diff(manifest.get("job", {}), job)
        if diff:
            raise JobError("OUT holds the manifest of a different job (" + "; ".join(diff[:5]) +
                           "). Rerun with the same options to resume it, or use an empty OUT.")
    elif not _own_files(outl):
        raise JobError(f"OUT {out!r} is not empty and holds no himr-pipe manifest; use an empty or new folder")

    jstate = ostate.read_job()
    fresh = manifest is None and not any(e.endswith(".tar") for e in outl.listdir())
    if fresh:
        jstate = None  # a new OUT is a new job: a fresh key, whatever an earlier job left in this state folder
    written = [e for e in (manifest or {}).get("shards", []) if e.get("samples")]
    if jstate is None:
        if not fresh and written:
            # OUT's shards were written with a key this state does not hold: going on would re-encrypt every
            # shard with a new one, and the old state would then decrypt OUT to noise (issue 22)
            raise JobError(f"OUT holds {len(written)} shard(s) written with a key that the owner state at {state} "
                           "does not hold (no job record there): a run here would re-encrypt every shard with a "
                           "new key. Pass the --state-dir of the run that wrote OUT (it is keyed by OUT's path "
                           "when not given, so a moved OUT needs it), or use an empty OUT")
        if not fresh and not (manifest is not None and manifest.get("status") == "complete"):
            raise JobError(f"OUT holds a partial run but the owner state for it is missing ({state}); "
                           "pass the --state-dir of that run, or start again in an empty OUT")
        key = keys.key_from_seed(seed) if seed is not None else keys.new_key()
        jstate = {"job": job, "key": key, "seed_check": keys.seed_digest(seed, key) if seed is not None else None,
                  "source": {"kind": source.kind, "root": _abs(src), "fingerprint": source.fingerprint,
                             "inputs": len(source.inputs),
                             **cfg.task_def.source_record(source)},
                  "out": _abs(out)}
        ostate.start(jstate)
    else:
        diff = job_diff(jstate["job"], job)
        if diff:
            raise JobError(f"the owner state at {state} belongs to a different job ({'; '.join(diff[:5])})")
        if seed is not None and jstate.get("seed_check") != keys.seed_digest(seed, jstate["key"]):
            raise JobError("--seed differs from the seed of the interrupted run; rerun with the same seed")
        if jstate["source"]["fingerprint"] != source.fingerprint and (manifest or {}).get("status") == "complete":
            raise JobError("OUT is complete, written from SRC as it was; SRC has changed since (files added, removed "
                           "or modified). OUT is left as it is; to encrypt SRC as it is now, use an empty OUT")
        if jstate["source"]["fingerprint"] != source.fingerprint:
            raise JobError("SRC changed since the interrupted run (files added, removed or modified); "
                           "rerun on the same SRC or start again in an empty OUT")
        _check_manifest_against_shards(outl, ostate, written)
        bad = ostate.mismatches(written)
        if not bad and not written and jstate.get("out") != _abs(out):
            bad = _first_shard_mismatch(outl, ostate)  # a partial OUT (no shards in its manifest yet)
        if bad:
            raise JobError(f"the owner state at {state} is not the one that wrote OUT ({'; '.join(bad[:3])}"
                           f"{'; ...' if len(bad) > 3 else ''}): going on would mix shards of two keys. Pass the "
                           "--state-dir of the run that wrote OUT, or use an empty OUT")
    if manifest is None or manifest.get("status") != "complete":
        outl.write_json(MANIFEST, build_manifest(job, source.classes, source.empty_classes, [],
                                                 len(source.inputs), [], 0, "incomplete"), "OUT's manifest")
    return source, state, jstate["key"]
