"""What a caller gives :func:`~.trainer.train`: the run's options (:class:`TrainConfig`) and the hooks it calls
(:class:`TrainHooks`). Light to import: the CLI's help reads the options' defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class TrainConfig:
    """What ``himr-pipe train`` is asked, option for option, and what :func:`~.trainer.train` takes: the defaults
    live here once (the click options read them, as encrypt-shards reads :class:`~himr_pipe.request.EncryptRequest`).
    ``None``: a default resolved when the run starts (from the task, the batch or the machine)."""

    shards: str
    out: str
    val: str | None = None
    model: str = "tiny"                # tiny | small | base (DeiT sizes)
    embed_dim: int | None = None       # overrides for small experiments
    depth: int | None = None
    num_heads: int | None = None
    rpe: bool = True                   # the reference-based positional encoding (rs, mi-shuffle)
    epochs: int = 300
    batch_size: int = 128
    lr: float | None = None            # default 5e-4 * global batch / 512 (detection: 5e-4)
    min_lr: float = 1e-5               # the cosine schedule's floor; no option, callers only
    weight_decay: float | None = None  # default 0.05 (detection: 1e-4, YOLOS)
    clip_grad: float | None = None     # gradient norm clip; default none (detection: 0.1, YOLOS)
    det_tokens: int = 100              # detection: YOLOS's detection tokens
    aux_loss: bool = False             # detection: DETR's auxiliary losses on every block's detection tokens
    dense_aux: bool = True             # detection: one-to-many loss on the patch tokens (Co-DETR's point)
    pos_init: str = "sincos"           # detection: the patch position embedding's start (sincos | learn)
    warmup_epochs: float = 5
    label_smoothing: float = 0.1
    drop_path: float = 0.1
    augment: bool = True
    aug_config: dict | None = None     # the augmentation's settings (augment.build_augment); no option, callers only
    workers: int | None = None         # loader processes; None: min(4, usable CPUs) (loader.default_workers)
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    log_interval: int = 50
    decode: str = "auto"               # where JPEGs are decoded: "workers" (CPU), "device", or "auto" (device on a GPU)
    samples_per_epoch: int | None = None
    verify_shards: bool = True         # hold each shard read whole to the manifest's sha256 (hashed as it streams)
    resume: bool = False
    init: str | None = None            # start from this checkpoint (a plain timm ViT / DeiT, or one of ours)
    stop_after: int | None = None      # end this invocation after N epochs (time-boxed or preemptible jobs)
    eval_every: int = 1


class TrainHooks:
    """Calls :func:`~.trainer.train` makes at fixed points of a run, for its caller (the tests: a kill at an exact
    step, or between a checkpoint and its log). Subclass and override; these defaults do nothing."""

    def after_step(self, step: int) -> None:
        """Optimiser step ``step`` (counted from the run's start, over epochs) is done."""

    def after_checkpoint(self, epoch: int) -> None:
        """The checkpoint after ``epoch`` epochs is on disk, the log that goes with it not yet."""
