"""train, timm-train and predict: the commands that train on OUT and run what they trained."""

from __future__ import annotations

import os
import sys

import click

from ..train.config import TrainConfig
from .base import Where, fail_usage, main

T = TrainConfig  # train's option defaults, in himr_pipe.train.config


@main.command("train")
@click.argument("shards", type=Where(exists=True))
@click.option("--val", type=Where(exists=True), default=T.val,
              help="Validation shards (same scheme); top-1 (detection: COCO AP) after every epoch, and the best "
                   "epoch's checkpoint kept as OUT/checkpoint-best.pt.")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Folder for checkpoint-last.pt, checkpoint-best.pt (with --val) and log.jsonl.")
@click.option("--model", type=click.Choice(["tiny", "small", "base"]), default=T.model, show_default=True,
              help="DeiT size: PEViT for rs, MI-ViT for mi, ViT for none (chosen from the shard manifest).")
@click.option("--embed-dim", type=int, default=T.embed_dim, help="Override the width (small experiments).")
@click.option("--depth", type=int, default=T.depth, help="Override the number of blocks.")
@click.option("--heads", "num_heads", type=int, default=T.num_heads, help="Override the number of attention heads.")
@click.option("--rpe/--no-rpe", default=T.rpe, show_default=True,
              help="The reference-based positional encoding of the order-invariant models (rs, mi-shuffle).")
@click.option("--epochs", type=int, default=T.epochs, show_default=True)
@click.option("--batch-size", type=int, default=T.batch_size, show_default=True,
              help="Per process; cut to an epoch's samples per process when larger (with a warning).")
@click.option("--lr", type=float, default=T.lr,
              help="Default: 5e-4 x global batch / 512 (DeiT); detection: 5e-4 (from scratch).")
@click.option("--weight-decay", type=float, default=T.weight_decay,
              help="Default: 0.05 (DeiT); detection: 1e-4 (YOLOS).")
@click.option("--clip-grad", type=float, default=T.clip_grad, help="Gradient norm clip. Default: none; detection: 0.1.")
@click.option("--det-tokens", type=int, default=T.det_tokens, show_default=True,
              help="Detection: YOLOS's detection tokens.")
@click.option("--aux-loss/--no-aux-loss", default=T.aux_loss, show_default=True,
              help="Detection: DETR's auxiliary set losses on every block's detection tokens (shared heads).")
@click.option("--dense-aux/--no-dense-aux", default=T.dense_aux, show_default=True,
              help="Detection: a one-to-many loss on the patch tokens (each predicts the object over it, shared "
                   "heads; training only). What makes a from-scratch PEYOLOS learn to localise at small budgets.")
@click.option("--pos-init", type=click.Choice(["sincos", "learn"]), default=T.pos_init, show_default=True,
              help="Detection: start the patch position embedding at 2D sine-cosine values (still learned), or "
                   "at timm's random ones.")
@click.option("--warmup-epochs", type=float, default=T.warmup_epochs, show_default=True)
@click.option("--label-smoothing", type=float, default=T.label_smoothing, show_default=True)
@click.option("--drop-path", type=float, default=T.drop_path, show_default=True)
@click.option("--aug/--no-aug", "augment", default=T.augment, show_default=True,
              help="Augmentation in the encrypted domain.")
@click.option("--workers", type=int, default=T.workers,
              help="Loader processes per training process. Default: 4, or the usable CPUs when fewer; never more "
                   "than the shards (or the batches of an epoch) each process reads. 0: load in the training process.")
@click.option("--seed", type=int, default=T.seed, show_default=True)
@click.option("--device", default=T.device, show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--amp/--no-amp", default=T.amp, show_default=True, help="bf16 autocast on a GPU.")
@click.option("--log-interval", type=int, default=T.log_interval, show_default=True)
@click.option("--samples-per-epoch", type=int, default=T.samples_per_epoch, help="Default: the samples in the shards.")
@click.option("--verify-shards/--no-verify-shards", default=T.verify_shards, show_default=True,
              help="Hold each shard read whole to the manifest's sha256 (hashed as it streams, no second read); a "
                   "shard that differs stops the run before its epoch's checkpoint (exit 1).")
@click.option("--resume", is_flag=True, default=T.resume, help="Continue from OUT/checkpoint-last.pt.")
@click.option("--init", "init", type=click.Path(exists=True, dir_okay=False), default=T.init,
              help="Start from this checkpoint: a plain timm ViT / DeiT (state dict, .pth or .safetensors), adapted "
                   "to the shards' scheme, or one of ours (checkpoint-*.pt: a classifier for a new head or for "
                   "PEYOLOS). Prints what was loaded, adapted and newly initialised.")
@click.option("--decode", type=click.Choice(["auto", "workers", "device"]), default=T.decode, show_default=True,
              help="Where JPEG shards are decoded: in the loader workers (CPU) or in one batched call on the device "
                   "(nvJPEG on a GPU). auto: device on a GPU.")
@click.option("--eval-every", type=int, default=T.eval_every, show_default=True,
              help="Evaluate on --val every N epochs (and after the last).")
@click.option("--stop-after", type=int, default=T.stop_after,
              help="End this run after N epochs (for time-boxed jobs); --resume continues it exactly.")
def train_cmd(**options):
    """Train on encrypted SHARDS (an OUT folder of encrypt-shards), streaming: a classifier, or PEYOLOS when the
    shards are detection shards (COCO AP on --val).

    Multi-GPU or multi-process: torchrun --nproc_per_node N -m himr_pipe.cli train ...
    """
    from himr_pipe.train.loader import DataError, ShardFault, error_message
    from himr_pipe.train.trainer import train

    cfg = TrainConfig(**options)  # the options are TrainConfig's fields, by name
    ckpt = os.path.join(cfg.out, "checkpoint-last.pt")

    def where(then: str) -> str:  # never a checkpoint that is not there (a run stopped in its first epoch)
        return (f"the last checkpoint is {ckpt}: {then}" if os.path.isfile(ckpt) else
                "no checkpoint was written (the run stopped in its first epoch)")

    try:
        res = train(cfg, log=lambda s: click.echo(f"himr-pipe train: {s}"))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the last checkpoint is whole (written atomically)
        click.echo(f"himr-pipe train: interrupted; {where('--resume continues from it')}", err=True)
        sys.exit(1)
    except ShardFault as e:  # met mid-run: a failure (exit 1), the last epoch's checkpoint intact; one line
        click.echo(f"himr-pipe train: error: {error_message(e)}; {where('fix the shards and --resume')}", err=True)
        sys.exit(1)
    except (DataError, ValueError) as e:
        fail_usage(error_message(e))
    from himr_pipe.train.tasks import ap_text

    last = res["history"][-1] if res["history"] else {}
    if "val_top1" in last:
        click.echo(f"himr-pipe train: done, val top-1 {last['val_top1']:.4f}")
    if "val_AP" in last:  # n/a: no object of that size in the validation set (COCOeval's -1, kept in log.jsonl)
        click.echo("himr-pipe train: done, val " + ", ".join(f"{k[4:]} {ap_text(last[k])}" for k in
                                                             ("val_AP", "val_AP50", "val_AP75", "val_AP_S", "val_AP_M",
                                                              "val_AP_L")))
    if res.get("checkpoint"):  # the last line: where the run's weights are
        best = res.get("best")
        click.echo(f"himr-pipe train: checkpoint {res['checkpoint']}" + (
            f"; best ({best['metric'].replace('_', ' ', 1).replace('top1', 'top-1')} {best['value']:.4f}, epoch "
            f"{best['epoch']}) {res['best_checkpoint']}" if best else ""))


@main.command("timm-train", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("train_py", type=click.Path(exists=True, dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def timm_train_cmd(train_py, args):
    """Run timm's own TRAIN_PY (pytorch-image-models' train.py) on encrypted shards: ARGS go to it as they are,
    and for a himr-pipe OUT given as --data-dir the flags OUT implies are added unless given (--dataset wds/himr,
    --train-split, --model and --model-kwargs shards=OUT, and --no-aug, which keeps the stored grid).
    See the README's "timm's train.py"."""
    from himr_pipe.train.timm_script import run_timm_train

    code = run_timm_train(train_py, list(args), warn=lambda s: click.echo(f"himr-pipe timm-train: {s}", err=True))
    sys.exit(code)


@main.command("predict")
@click.argument("run", metavar="RUN_OR_CHECKPOINT")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE_OR_FOLDER...")
@click.option("--top-k", type=int, default=None,
              help="Classes per image (classification, default 5); most detections per image (detection, "
                   "default 100).")
@click.option("--min-score", type=float, default=0.0, show_default=True,
              help="Detection: drop detections scoring at most this.")
@click.option("--json", "json_out", default=None, metavar="PATH_OR_-",
              help="Write the records as JSON to PATH ('-': stdout) instead of text lines: classification, a list "
                   "of {image, index, top_k}; detection, COCO results (image_id: the image's position among the "
                   "inputs, with its file_name).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N (the model's).")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per forward pass.")
def predict_cmd(run, images, top_k, min_score, json_out, device, batch_size):
    """Run a trained model on plain images: RUN_OR_CHECKPOINT is a `himr-pipe train` --out folder (its
    checkpoint-best.pt, else checkpoint-last.pt) or a checkpoint file; each image (a folder: its image files,
    sorted) is resized and encrypted as its shards were, without a key (the shuffled schemes' models are
    invariant to the order and orientation of the cells).

    Text: one line per image (classification: its top classes with probabilities) or per detection (class,
    score, x y w h in the image's own pixels). Inputs that can't be used are skipped with one line each.
    Exit 0: every input predicted; 3: done, some skipped; 2: an unusable checkpoint or arguments.
    """
    import json

    from himr_pipe.train.predict import Predictor

    if top_k is not None and top_k < 1:
        fail_usage("--top-k must be at least 1")
    if batch_size < 1:
        fail_usage("--batch-size must be at least 1")
    skipped = []

    def on_skip(path, reason):
        skipped.append(path)
        click.echo(f"himr-pipe predict: skipped {path}: {reason}", err=True)

    p = Predictor(run, device=device, batch_size=batch_size)
    for note in p.notes:
        click.echo(f"himr-pipe predict: note: {note}", err=True)
    records = p.predict(list(images), top_k, min_score, on_skip)
    if json_out is not None:
        text = json.dumps(records, indent=1)
        if json_out == "-":
            click.echo(text)
        else:
            try:
                with open(json_out, "w") as f:
                    f.write(text + "\n")
            except OSError as e:
                fail_usage(f"--json {json_out}: {e.strerror or e}")
    else:  # one line per image (classification) or per detection: the task's own (train/tasks.py)
        for r in records:
            click.echo(p.line(r))
    if json_out not in (None, "-"):
        click.echo(f"himr-pipe predict: {p.summary(records)}, {len(skipped)} skipped -> {json_out}")
    sys.exit(3 if skipped else 0)
