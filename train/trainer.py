"""The trainer behind ``himr-pipe train``: streaming from encrypted shards into PEViT / MI-ViT / ViT, or into
PEYOLOS when the shards are detection shards (the manifest's ``job.task``). One loop for every task; what a
task adds (classes, model, optimiser defaults, augmentation, loss, validation metric) is its
:class:`~himr_pipe.train.tasks.Training`.

* The model comes from the shard manifest (scheme, patch, input size) through
  ``models.build_model``; ``check_model_matches`` refuses a model that does
  not fit the data, and validation shards must use the same scheme.
* AdamW (timm's ``create_optimizer_v2``), per-step warm-up + cosine
  (timm's ``CosineLRScheduler``), label smoothing on the (mixed) soft
  targets, drop-path, bf16 autocast on a GPU.
* Augmentation in the encrypted domain (``augment.build_augment``), on the
  device, from a generator seeded by (seed, epoch, rank).
* DDP under ``torchrun`` (NCCL on GPUs, gloo on CPUs); every rank streams its
  own part of each epoch; evaluation sums correct/total over ranks.
* A checkpoint after every epoch (model, optimizer, scheduler, step, RNG
  states). ``--resume`` continues from it; since each epoch's data stream and
  augmentation draw only on (seed, epoch, rank), the resumed run computes what
  the uninterrupted run would have. With ``--val``, the best epoch's
  checkpoint is kept beside it as ``checkpoint-best.pt`` (by val top-1, or
  val AP for detection; the best so far is stored in the last checkpoint, so
  a resumed run keeps tracking it).
* An epoch is ``(samples // world) // batch`` steps, never zero: a batch larger
  than an epoch's samples is cut to them (with a warning; the lr default
  follows the batch used), an OUT without samples is refused before any work,
  and the loader deals every epoch in whole batches to at most as many workers
  as each rank has shards.
* A log line every ``log_interval`` steps with loss, lr, the loader's rate
  (images per second of waiting for data) and the step's rate (images per
  second of compute), and the share of time spent waiting: a starving loader
  shows as a high wait share. Each epoch ends with one line of its mean loss
  (and the validation figures).

The DeiT recipe (docs/method.md) is the default for ImageNet-scale runs: lr
5e-4 x batch/512, weight decay 0.05, 5 warm-up epochs, drop-path 0.1, label
smoothing 0.1.

Detection (PEYOLOS, ``peyolos.build_detector``) shares all of the above
(loaders, DDP, bf16, warm-up + cosine, checkpoints, exact resume, the log
line) and differs where YOLOS does: DETR's set loss (``detection.SetCriterion``:
Hungarian matching, class 1, L1 5, GIoU 2, no-object weight 0.1) plus the
dense one-to-many loss on the patch tokens (``dense_aux``, on by default),
AdamW at lr 5e-4 (from scratch; YOLOS's 1e-4 fine-tunes a pretrained DeiT)
and weight decay 1e-4, gradient clipping at 0.1, augmentation that is
exact for MI with the boxes moved along (``det_augment.DetectionAugment``:
flips and whole-cell shifts, colour jitter), and COCO AP on the validation
OUT's sanitised ground truth (predictions mapped back to each image's own
frame, gathered over ranks). Every group of parameters trains at the one lr,
from scratch or from ``--init``.

``--init PATH`` starts a new run from a checkpoint (a plain timm ViT / DeiT, or one of ours: another class set,
or a classifier's backbone for PEYOLOS), adapted by :mod:`.pretrained` through timm's own pretrained loading;
the log's first line says what was loaded, adapted and newly initialised. A resumed run takes its weights from
its own checkpoint instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from himr_pipe.atomic import atomic_write
from himr_pipe.errors import WriteFailed

from .config import TrainConfig, TrainHooks
from .loader import (MEAN, STD, DataError, decode_on_device, default_workers, loader_workers,
                     manifest_scheme, read_manifest, train_loader)
from .pretrained import CheckpointUnreadable, PretrainedAdapted, describe_report, read_checkpoint


# The options that define a run: a --resume with any of them changed would not continue it (another model
# cannot load the weights; another batch size, epoch count or lr runs off the stored schedule). The rest (workers,
# device, logging, --stop-after, --eval-every, --val, where JPEGs are decoded) may change between invocations.
RUN_DEFINING = ("model", "embed_dim", "depth", "num_heads", "rpe", "epochs", "batch_size", "lr", "min_lr",
                "weight_decay", "clip_grad", "det_tokens", "aux_loss", "dense_aux", "pos_init", "warmup_epochs",
                "label_smoothing", "drop_path", "augment", "aug_config", "seed", "samples_per_epoch")


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def train(cfg: TrainConfig, log=print, hooks: TrainHooks | None = None) -> dict:
    """The run ``cfg`` asks for (module docstring); ``log`` takes its lines; ``hooks`` (None in every real run) is
    called after each step and after each checkpoint. One run at a time per ``--out``: the main process holds
    its lock (:func:`himr_pipe.lock.lock_for`, OUT's own) from before it looks at the checkpoint until the run
    ends, so a second run into the same ``--out`` is refused (exit 2) naming the holder, however close they start."""
    with contextlib.ExitStack() as held:
        return _train(cfg, log, hooks, held)


def _hold(out: Path):
    """The lock of the training ``--out`` (:class:`~himr_pipe.lock.OutLocked`, naming the holder, if another
    run holds it)."""
    from himr_pipe.lock import OutLocked, live_holder, lock_for
    from himr_pipe.storage import Location

    loc = Location(str(out))
    try:
        return lock_for(loc).__enter__()
    except OutLocked as e:
        who = live_holder(loc)
        if who is None:  # it ended in between: its own words
            raise
        raise OutLocked(f"--out {out} is in use by another himr-pipe train run ({who}): wait for it to finish, or "
                        "train into another --out") from e
    except OSError as e:  # a read-only --out (a finished run kept read-only): one line, as every refusal
        raise DataError(f"--out {out}: can't write in it ({e.strerror or e}): a run writes its checkpoints and "
                        "log there; train into another --out") from None


def _train(cfg: TrainConfig, log, hooks: TrainHooks | None, held: contextlib.ExitStack) -> dict:
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    from .tasks import checkpoint_record, training_for

    rank, world, local = _dist_env()
    _check_options(cfg)
    asked_workers = cfg.workers
    if cfg.workers is None:
        cfg = replace(cfg, workers=default_workers())
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    main_rank = rank == 0

    m = read_manifest(cfg.shards)
    if not m["shards"] or m["totals"]["written"] < 1:
        raise DataError(f"{cfg.shards} holds no sample (its manifest lists {len(m['shards'])} shard(s), "
                        f"{m['totals']['written']} samples written): an epoch would train zero steps")
    scheme = manifest_scheme(m)
    task = training_for(m, cfg.shards)  # what the task adds: model, loss, augmentation, validation metric
    num_classes = task.num_classes
    # an epoch is (samples // world) // batch steps: never zero, and never silently fewer than asked
    samples = cfg.samples_per_epoch or m["totals"]["written"]
    per_rank = samples // world
    if per_rank < 1:
        raise DataError(f"an epoch of {samples} samples split over {world} training processes gives each none: it "
                        "would train zero steps. Give every process at least one sample (--samples-per-epoch, or "
                        "fewer processes)")
    batch = min(cfg.batch_size, per_rank)  # a batch never waits for more samples than an epoch has
    if batch < cfg.batch_size and main_rank:
        log(f"warning: --batch-size {cfg.batch_size} is more than the {per_rank} samples of an epoch"
            f"{' per process' if world > 1 else ''}: training with batches of {batch} (one step an epoch)")
    steps_per_epoch = per_rank // batch
    workers = loader_workers(cfg.workers, len(m["shards"]), world, steps_per_epoch)
    if asked_workers is not None and workers < asked_workers and main_rank:
        limit = max(1, len(m["shards"]) // world)
        log(f"--workers {asked_workers} is more than the "
            + (f"{limit} shard(s) each training process reads" if limit <= steps_per_epoch
               else f"{steps_per_epoch} batch(es) of an epoch") + f": loading with {workers}")
    if cfg.val:
        mv = read_manifest(cfg.val)
        if manifest_scheme(mv) != scheme:
            raise DataError(f"--val shards use scheme {mv['job']['scheme']}, training shards {m['job']['scheme']}: "
                            "a model can only be evaluated on data encrypted the same way")
        task.check_val(mv)
    _seed_all(cfg.seed)
    overrides = {k: v for k, v in (("embed_dim", cfg.embed_dim), ("depth", cfg.depth),
                                   ("num_heads", cfg.num_heads)) if v is not None}
    # --init starts a new run; a run resumed from its checkpoint takes its weights from there instead
    resuming = cfg.resume and (Path(cfg.out) / "checkpoint-last.pt").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PretrainedAdapted)  # said once, in the log, below
        model = task.build_model(scheme, replace(cfg, init=None) if resuming else cfg, overrides).to(device)
    if main_rank and getattr(model, "himr_init", None):
        log("init: " + describe_report(model.himr_init))
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)

    global_batch = batch * world  # the lr default scales with the batch actually used
    dflt = task.defaults(global_batch)
    lr = cfg.lr if cfg.lr is not None else dflt["lr"]
    weight_decay = cfg.weight_decay if cfg.weight_decay is not None else dflt["weight_decay"]
    clip_grad = cfg.clip_grad if cfg.clip_grad is not None else dflt["clip_grad"]
    total_steps = steps_per_epoch * cfg.epochs
    opt = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay)
    sched = CosineLRScheduler(opt, t_initial=total_steps, lr_min=cfg.min_lr,
                              warmup_t=int(cfg.warmup_epochs * steps_per_epoch), warmup_lr_init=lr * 1e-3,
                              t_in_epochs=False)
    task.setup(scheme, cfg)  # the augmentation and the loss
    amp = cfg.amp and device.type == "cuda"
    if cfg.decode not in ("auto", "workers", "device"):
        raise ValueError("decode must be auto, workers or device")
    jpeg = m["job"]["format"]["ext"] == "jpg"
    raw = jpeg and (cfg.decode == "device" or (cfg.decode == "auto" and device.type == "cuda"))
    if cfg.decode == "device" and not jpeg:
        raise DataError("decoding on the device needs JPEG shards; these hold " + m["job"]["format"]["name"])
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

    out = Path(cfg.out)
    ckpt_path = out / "checkpoint-last.pt"
    best_path = out / "checkpoint-best.pt"
    # what defines the run, as it runs: the options with their defaults resolved (a --resume is compared on these)
    terms = {**{k: getattr(cfg, k) for k in RUN_DEFINING},
             "batch_size": batch, "lr": lr, "weight_decay": weight_decay, "clip_grad": clip_grad}
    best = None  # the best validation figure so far: {"metric", "value", "epoch", "val"}
    start_epoch, step = 0, 0
    logged: list[dict] = []  # log.jsonl's records: rewritten whole after each checkpoint, from the checkpoint's
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        lock = _hold(out)  # before the checkpoint is looked at: two runs can't both find none
        held.callback(lock.__exit__, None, None, None)
    if not cfg.resume and ckpt_path.exists():
        try:  # a damaged one says so: neither --resume nor a new run could use this --out as it is
            read_checkpoint(ckpt_path, "it can't be resumed, and a new run won't overwrite it: remove it (the run "
                            "then starts over) or train into a new --out", mmap=True)
        except CheckpointUnreadable as e:
            raise DataError(str(e)) from None
        raise DataError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out (a new "
                        "run would overwrite it)")
    if cfg.resume and not ckpt_path.exists() and main_rank:
        log(f"--resume: no checkpoint at {ckpt_path}; starting from scratch")
    if cfg.resume and ckpt_path.exists():
        ck = read_checkpoint(ckpt_path, "remove it (--resume then starts over from scratch) or train into a new --out")
        if ck["scheme"] != scheme.to_dict():
            raise DataError(f"the checkpoint was trained on scheme {ck['scheme']}, the shards are {scheme.to_dict()}")
        # a checkpoint from before the terms were stored: its options as given (None: the default)
        old, new = (ck["terms"], terms) if "terms" in ck else (ck.get("config", {}), asdict(cfg))
        changed = [f"{k} {_shown(old[k])} -> {_shown(new.get(k))}" for k in RUN_DEFINING
                   if k in old and old[k] != new.get(k)]
        if changed:
            raise DataError(f"--resume continues the run in {ckpt_path} exactly, but these options differ from "
                            f"it: {'; '.join(changed)}. Rerun with its options, or train into another --out")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start_epoch, step = ck["epoch"], ck["step"]
        logged = list(ck.get("log", []))
        best = ck.get("best")
        if best is not None and best.get("val") != cfg.val:
            if main_rank:
                log(f"the best checkpoint so far was scored on --val {best.get('val')}; {best_path} now tracks "
                    f"the best on {cfg.val}")
            best = None
        _set_rng_state(ck["rng"])
        if main_rank:
            log(f"resumed from {ckpt_path} at epoch {start_epoch}, step {step}")

    history = []
    last_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start_epoch + cfg.stop_after)
    if start_epoch >= cfg.epochs and main_rank:
        log(f"the run in {out} is complete ({start_epoch} of {cfg.epochs} epochs): nothing to train")
    for epoch in range(start_epoch, last_epoch):
        net.train()
        gen = torch.Generator(device=device)
        gen.manual_seed(hash((cfg.seed, epoch, rank)) % 2**63)
        loader = train_loader(cfg.shards, batch, epoch, cfg.seed, cfg.samples_per_epoch, workers,
                              rank, world, raw=raw, verify=cfg.verify_shards)
        t_wait = t_step = 0.0
        n_img = 0
        loss_sum, loss_n = 0.0, 0
        t0 = time.perf_counter()
        for imgs, labels in loader:
            t1 = time.perf_counter()
            t_wait += t1 - t0
            imgs = decode_on_device(imgs, device) if raw else imgs.to(device, non_blocking=True)
            loss = task.loss(net, imgs, labels, device, gen, amp, mean, std, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            opt.step()
            step += 1
            if hooks is not None:
                hooks.after_step(step)
            sched.step_update(step)
            loss_sum += loss.item()
            loss_n += 1
            n_img += len(imgs)
            t0 = time.perf_counter()
            t_step += t0 - t1
            if main_rank and cfg.log_interval and step % cfg.log_interval == 0 and loss_n < steps_per_epoch:
                log(_line(epoch, step, total_steps, loss_sum / loss_n, opt, n_img, t_wait, t_step, world))
        if loss_n == 0:
            raise DataError(f"epoch {epoch} trained zero steps: its loader gave no batch of {batch} (expected "
                            f"{steps_per_epoch})")
        if loss_n != steps_per_epoch and main_rank:
            log(f"warning: epoch {epoch} trained {loss_n} steps, not the {steps_per_epoch} of its schedule")
        rec = {"epoch": epoch, "step": step, "train_loss": loss_sum / max(1, loss_n),
               "skipped_samples": loader.dataset.faults,  # faulty samples skipped (loader.checked_samples)
               "loader_img_s": n_img * world / max(t_wait, 1e-9), "step_img_s": n_img * world / max(t_step, 1e-9),
               "wait_share": t_wait / max(t_wait + t_step, 1e-9)}
        if cfg.val and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            rec.update(task.evaluate(net, cfg, device, mean, std, rank, world, amp, raw))
        history.append(rec)
        if main_rank:
            log(_line(epoch, step, total_steps, rec["train_loss"], opt, n_img, t_wait, t_step, world, done=True)
                + task.describe(rec))
            value = rec.get(task.metric)
            improved = value is not None and value >= 0 and (best is None or value > best["value"])  # AP -1: undefined
            if improved:
                best = {"metric": task.metric, "value": value, "epoch": epoch, "val": cfg.val}
            logged.append(rec)
            ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                  "epoch": epoch + 1, "step": step, "rng": _rng_state(), "scheme": scheme.to_dict(),
                  "config": asdict(cfg), "num_classes": num_classes, "log": logged, "terms": terms, "best": best,
                  # what himr-pipe predict needs of the manifest: task, class names / categories, resize, codec
                  **checkpoint_record(m)}
            # the checkpoint first, then the log it holds: a kill between them or inside either leaves a
            # checkpoint and a log that agree once --resume rewrites the log (no lost or doubled epoch). A new
            # best before the last: a kill between them leaves a last checkpoint that names an older best, and
            # the resumed run recomputes this epoch exactly, so it writes the same best again
            if improved:
                _write(best_path, lambda f: torch.save(ck, f), "the best checkpoint")
            _write(ckpt_path, lambda f: torch.save(ck, f), "the checkpoint")
            if hooks is not None:
                hooks.after_checkpoint(epoch + 1)
            _write(out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in logged).encode(), "the training log")
        if world > 1:
            dist.barrier()
    return {"history": history, "model": model, "steps": step,
            "checkpoint": str(ckpt_path) if main_rank and ckpt_path.exists() else None,
            "best": best, "best_checkpoint": str(best_path) if main_rank and best is not None else None}


def _write(path, data, what: str) -> None:
    """One of the run's files, written atomically; a disk that refuses it (full, quota, read-only, failing) is one
    line naming the file (errors.WriteFailed, exit 1): the last whole checkpoint stays, and --resume continues."""
    try:
        atomic_write(path, data)
    except OSError as e:
        raise WriteFailed.of(e, path, what) from None


def _check_options(cfg: TrainConfig) -> None:
    """Options that cannot run, refused before any work (ValueError: the CLI's exit 2)."""
    from himr_pipe.machine import DEVICE_HELP, device_unavailable, is_device

    if cfg.device != "auto":
        if not is_device(cfg.device):
            raise ValueError(f"--device must be auto, {DEVICE_HELP}, got {cfg.device!r}")
        why = device_unavailable(cfg.device)
        if why:
            raise ValueError(why)
    for name, v in (("--epochs", cfg.epochs), ("--batch-size", cfg.batch_size), ("--stop-after", cfg.stop_after)):
        if v is not None and v < 1:
            raise ValueError(f"{name} must be at least 1, got {v}")
    if cfg.workers is not None and cfg.workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {cfg.workers}")


def _shown(v) -> str:
    """A run-defining value in a message: None is an option left at its default."""
    return "default" if v is None else repr(v)


def _line(epoch, step, total, loss, opt, n_img, t_wait, t_step, world, done: bool = False) -> str:
    """The log line: every log_interval steps (``loss``: the epoch's mean so far), and once at the end of each
    epoch (``done``: the epoch's mean loss and rates)."""
    lr = opt.param_groups[0]["lr"]
    wait = t_wait / max(t_wait + t_step, 1e-9)
    head = f"epoch {epoch} done, step {step}/{total}: mean loss" if done else f"epoch {epoch} step {step}/{total} loss"
    return (f"{head} {loss:.4f} lr {lr:.2e} | loader {n_img * world / max(t_wait, 1e-9):.0f}"
            f" img/s, step {n_img * world / max(t_step, 1e-9):.0f} img/s, waiting {100 * wait:.0f}% of the time")
