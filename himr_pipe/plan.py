"""The plan's records: what defines an output (:class:`JobConfig`) and the units the plan cuts it into
(:class:`ShardTask` of :class:`PlannedSample`).

Both the job (which makes the plan, :mod:`.job`) and the worker (which carries it out, :mod:`.worker`) import
them from here, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import __version__
from .decoders.common import DEFAULT_MAX_PIXELS, RESIZE_MODES
from .encode import ImageFormat
from .geometry import VIEW_TRANSFORM
from .scheme import Scheme
from .sources import DEFAULT_MAX_BYTES
from .tasks import TASKS, job_task, task_named
from .errors import Refused


class JobError(Refused):
    """A problem found before any work: the run does not start."""


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    """What defines the output. Two runs with equal configs write the same OUT."""

    scheme: Scheme
    fmt: ImageFormat
    resize: str = "crop"
    shard_size: int = 1000
    split: str = "train"
    shuffle: bool = True
    seeded: bool = False
    include_paths: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    decoder: str = "dali"      # decode stage: they resize alike but not pixel for pixel
    encoder: str = "cpu"       # encode stage (resolved, never "auto"): codecs differ in bytes
    views: int = 1             # >1: that many random-resized-crop + flip views per input, each a sample
    task: str = "classification"  # a name of tasks.TASKS: what the samples carry beside the image
    keep_image_ids: bool = False  # detection: the ground truth keeps the source's image ids (else opaque ids)

    def __post_init__(self):
        if self.task not in TASKS:
            raise JobError(f"task must be one of {tuple(TASKS)}")
        why = self.task_def.refusal(self)
        if why:
            raise JobError(why)
        if self.resize not in RESIZE_MODES:
            raise JobError(f"--resize must be one of {RESIZE_MODES}")
        if self.shard_size < 1:
            raise JobError("--shard-size must be at least 1")
        if self.views < 1:
            raise JobError("--views must be at least 1")
        if not self.split or any(c in self.split for c in "/\\{}. "):
            raise JobError(f"--split {self.split!r} must be a plain name (it prefixes the shard files)")

    @property
    def task_def(self):
        """The job's task as an object (:mod:`.tasks`): what classification or detection adds to each stage."""
        return task_named(self.task)

    def public(self) -> dict:
        """The job as written into the manifest: all parameters, never a seed."""
        return {
            "tool": f"himr-pipe {__version__}",
            "scheme": self.scheme.to_dict(),
            "format": self.fmt.to_dict(),
            "resize": self.resize,
            "shard_size": self.shard_size,
            "split": self.split,
            "shuffle": self.shuffle,
            "randomness": "seeded" if self.seeded else "cryptographic",
            "randomness_note": (
                "sample order and permutations are reproducible by whoever holds the seed; the seed is not stored here"
                if self.seeded else
                "sample order and permutations come from a key drawn from the OS's cryptographic source; "
                "it is kept only in the owner's state, never in this folder"),
            "include_paths": self.include_paths,
            "max_pixels": self.max_pixels,
            "max_bytes": self.max_bytes,
            "decoder": self.decoder,
            "encoder": self.encoder,
            "views": self.views,
            "view_transform": VIEW_TRANSFORM if self.views > 1 else None,
            "task": self.task,
            **self.task_def.job_record(self),
        }

    @classmethod
    def from_public(cls, d: dict) -> "JobConfig":
        from .encode import ImageFormat

        f = d["format"]
        fmt = ImageFormat(f["name"], f.get("quality", 90), f.get("subsampling", "444"), f.get("compress_level", 1))
        return cls(scheme=Scheme.from_dict(d["scheme"]), fmt=fmt, resize=d["resize"], shard_size=d["shard_size"],
                   split=d["split"], shuffle=d["shuffle"], seeded=d["randomness"] == "seeded",
                   include_paths=d["include_paths"], max_pixels=d["max_pixels"], max_bytes=d["max_bytes"],
                   decoder=d.get("decoder", "dali"), encoder=d.get("encoder", "cpu"), views=d.get("views", 1),
                   task=job_task(d), keep_image_ids=d.get("image_ids") == "source")


@dataclass(frozen=True, kw_only=True)
class PlannedSample:
    """One sample of a shard's plan: an input (or one of its views) at a position of the shard."""

    pos: int        # position in the shard's plan: the output key is {shard:06d}_{pos:06d}
    index: int      # the input's sample id (its position in the sorted source listing)
    ref: str        # owner-side name; never written to OUT unless --include-paths
    label: int
    loc: object     # where its bytes are (a sources location, read by sources.ShardReader)
    view: int = 0   # which of --views
    target: object = None  # detection: the input's annotations (coco.ImageTarget)
    image_id: int = 0      # detection: the image's id in OUT's ground truth (opaque unless --keep-image-ids)


@dataclass(frozen=True, kw_only=True)
class ShardTask:
    index: int
    name: str
    items: tuple  # of PlannedSample, in plan order


