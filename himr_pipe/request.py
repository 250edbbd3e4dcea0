"""An encryption request as a user states it, and its resolution into what the pipeline runs.

``himr-pipe encrypt-shards`` and every in-process caller (the trade-off study, the leak benchmark) say what
they want in the same words, :class:`EncryptRequest` (the CLI's options: names, ``None`` for "the task's
default", ``"auto"``), and :meth:`EncryptRequest.build` turns it into the two records the pipeline takes, a
:class:`~.plan.JobConfig` (what defines OUT) and a :class:`~.job.RunOptions` (how to run it). The defaults live
here once; the click options read them. Before this module the trade-off study ran the CLI in-process to get
the same resolution, and the CLI and the study imported each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .machine import DEVICE_HELP, device_unavailable, is_device

if TYPE_CHECKING:  # the job's modules import numpy; the CLI's help reads this module's defaults without them
    from .job import JobConfig, RunOptions

@dataclass(frozen=True)
class EncryptRequest:
    """What ``encrypt-shards`` is asked, option for option (``None``: the task's or the machine's default)."""

    scheme: str | None = None       # rs, mi, mi-shuffle, none; None: the task's default
    patch: int = 16
    size: str | None = None         # "N" or "HxW"; None: the task's default
    gap: int | None = None          # None: the scheme's default
    drop: float = 0.0
    flip: bool | None = None        # None: the scheme's default
    fmt: str = "jpeg"               # jpeg, png, raw
    quality: int = 90
    resize: str | None = None       # crop, stretch, letterbox; None: the task's default
    task: str = "auto"              # auto or a name of tasks.TASKS
    annotations: str | None = None  # detection: the COCO instances JSON
    keep_image_ids: bool = False
    shard_size: int = 1000
    split: str = "train"
    workers: int | None = None      # None: one per usable CPU on the CPU (distributor.default_workers)
    threads: int = 0
    batch_size: int = 64
    seed: int | None = None         # None: keys and order from a cryptographic source
    shuffle: bool = True
    include_paths: bool = False
    state_dir: str | None = None
    max_pixels: int | None = None   # None: decoders.DEFAULT_MAX_PIXELS
    max_bytes: int | None = None    # None: sources.DEFAULT_MAX_BYTES
    progress: bool | None = None
    device: str = "cpu"
    decoder: str = "auto"
    encoder: str = "auto"
    kernels: str = "auto"
    views: int = 1
    distributor: str = "local"      # a name of distributor.DISTRIBUTORS
    ray_address: str | None = None  # ray's own option (distributor.RayTasks.options)
    audit: bool = True

    def build(self, src: str) -> tuple[JobConfig, RunOptions]:
        """(config, options) for ``src``; :class:`JobError` (or SchemeError, FormatError) when the request
        cannot run, before any work. ``src`` is asked only where the task is ``auto`` (its layout says which)."""
        from .decoders import DEFAULT_MAX_PIXELS, resolve_decoder
        from .encode import choose_format, resolve_encoder
        from .job import AUDIT_SAMPLES, JobConfig, JobError, RunOptions
        from .scheme import Scheme, default_flip, default_gap, parse_size
        from .sources import DEFAULT_MAX_BYTES
        from .tasks import task_for_source, task_named

        for opt, v in (("--max-pixels", self.max_pixels), ("--max-bytes", self.max_bytes)):
            if v is not None and v < 1:  # not "no limit": a limit is what keeps a hostile header from the memory
                raise JobError(f"{opt} must be at least 1, got {v} (leave it out for the default limit)")
        kind = task_for_source(src, self.annotations) if self.task == "auto" else task_named(self.task)
        if self.annotations and not kind.takes_annotations:
            raise JobError(f"--annotations is for --task detection, not {kind.name}")
        if self.keep_image_ids and not kind.takes_annotations:
            raise JobError(f"--keep-image-ids is for --task detection, not {kind.name}")
        h, w = parse_size(self.size or kind.default_size)
        name = self.scheme or kind.default_scheme
        sch = Scheme.named(name, self.patch, h, w, default_gap(name) if self.gap is None else self.gap, self.drop,
                           default_flip(name) if self.flip is None else self.flip)
        if not is_device(self.device):
            raise JobError(f"--device must be {DEVICE_HELP}, got {self.device!r}")
        if device_unavailable(self.device):
            raise JobError(device_unavailable(self.device))
        if self.kernels == "cpu" and self.device != "cpu":
            raise JobError(f"--kernels cpu runs on the CPU; on --device {self.device} use auto (Triton) or torch")
        enc_name = resolve_encoder(self.encoder, self.fmt, self.device)
        tv = enc_name == "torchvision"  # nvJPEG writes 4:4:4 only; torchvision's CPU encoder 4:2:0 only
        ifmt = choose_format(self.fmt, sch, self.quality, allow_420=not tv or self.device == "cpu",
                             only="420" if tv and self.device == "cpu" else None)
        cfg = JobConfig(scheme=sch, fmt=ifmt, resize=self.resize or kind.default_resize, shard_size=self.shard_size,
                        split=self.split, shuffle=self.shuffle, seeded=self.seed is not None,
                        include_paths=self.include_paths, max_pixels=self.max_pixels or DEFAULT_MAX_PIXELS,
                        max_bytes=self.max_bytes or DEFAULT_MAX_BYTES, decoder=resolve_decoder(self.decoder),
                        encoder=enc_name, views=self.views, task=kind.name, keep_image_ids=self.keep_image_ids)
        if self.batch_size < 1:
            raise JobError("--batch-size must be at least 1")
        from .distributor import DISTRIBUTORS, distributor_named

        try:
            engine = distributor_named(self.distributor)
        except ValueError as e:
            raise JobError(str(e)) from None
        for other, cls in DISTRIBUTORS.items():  # another engine's own option (--ray-address without ray)
            for f in cls.options:
                if cls is not engine and getattr(self, f):
                    raise JobError(f"--{f.replace('_', '-')} needs --distributor {other}")
        why = engine.refusal(self)
        if why:
            raise JobError(why)
        workers = engine.workers(self)
        if workers < 0:
            raise JobError("--workers must be 0 or more")
        opts = RunOptions(workers=workers, threads=self.threads, batch_size=self.batch_size, state_dir=self.state_dir,
                          progress=self.progress, device=self.device, kernels=self.kernels,
                          audit_samples=AUDIT_SAMPLES if self.audit else 0, distributor=self.distributor,
                          distributor_options={f: getattr(self, f) for f in engine.options},
                          annotations=self.annotations)
        return cfg, opts
