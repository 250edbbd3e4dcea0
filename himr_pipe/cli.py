"""The himr-pipe command line.

Exit codes of encrypt-shards: 0 every input written; 3 finished, some inputs
skipped (each listed with its reason in the manifest); 1 the run failed or
was interrupted (rerun the same command to resume); 2 bad arguments or an
unusable SRC/OUT, found before any work.
"""

from __future__ import annotations

import os
import sys

import click

from . import __version__

# The tasks and their defaults (the default scheme: chosen by measured leak and accuracy cost, README "Privacy",
# benchmarks/bench_tradeoff.py); light to import, the help text names them
from .request import EncryptRequest, device_unavailable, is_device
from .schemes import SCHEMES
from .tasks import TASKS
from .train.config import TrainConfig


class SchemeChoice(click.Choice):
    """``--scheme``'s choices, read from the scheme registry when asked (a scheme registered after this module
    was imported, a plugin's or a test's, is one of them); ``encrypting``: only the schemes that encrypt."""

    def __init__(self, extra: tuple = (), encrypting: bool = False):
        self.extra, self.encrypting = tuple(extra), encrypting
        super().__init__(())

    @property
    def choices(self):
        return tuple(n for n, d in SCHEMES.items() if d.encrypts or not self.encrypting) + self.extra

    @choices.setter
    def choices(self, value):  # click's __init__ sets it; the registry is the source
        pass

R = EncryptRequest  # the option defaults, stated once in himr_pipe.request
T = TrainConfig     # train's, in himr_pipe.train.config


class Where(click.ParamType):
    """A folder given as a local path or an fsspec URL (s3://, gs://, memory://; see himr_pipe.storage).
    Local paths are checked as click.Path checks them; URLs when they are opened."""

    name = "path-or-url"

    def __init__(self, exists: bool = False):
        self.exists = exists

    def convert(self, value, param, ctx):
        from .storage import is_url

        if is_url(str(value)):
            return str(value)
        return click.Path(exists=self.exists, file_okay=False).convert(value, param, ctx)


class Registered(click.Choice):
    """A choice among the names of a registry (``DISTRIBUTORS``, ``DECODERS``, ``ENCODERS``, the kernels' ``IMPLS``),
    read when the option is first checked or shown, as ``--task`` reads ``TASKS``: the registries' modules load
    numpy (the kernels' torch), which the other commands and ``himr-pipe --help`` need not wait for."""

    def __init__(self, module: str, name: str):
        self._where = (module, name)
        super().__init__(())

    @property
    def choices(self) -> tuple:
        import importlib

        module, name = self._where
        return tuple(getattr(importlib.import_module(module), name))

    @choices.setter
    def choices(self, _names) -> None:  # click.Choice.__init__ sets it; the names are the registry's
        pass


def _fail_usage(msg: str):
    click.echo(f"himr-pipe: error: {msg}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="himr-pipe")
def main():
    """Encrypt image datasets into human-imperceptible, machine-recognizable WebDataset shards."""
    _term_as_interrupt()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _term_as_interrupt() -> None:
    """SIGTERM (a scheduler's stop, ``kill``, ``timeout``) is handled as Ctrl-C: the run stops the same way
    (workers cancelled, finished shards kept, the lock released, exit 1 with the line that says to rerun) instead
    of dying at once with 143 and no word. Only the main thread can take signals."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)


@main.command("encrypt-shards")
@click.argument("src")
@click.argument("out", type=Where())
@click.option("--scheme", type=SchemeChoice(), default=None,
              help=f"Default: {TASKS['classification'].default_scheme} (classification), "
                   f"{TASKS['detection'].default_scheme} (detection). "
                   + "; ".join(d.help for d in sorted(SCHEMES.values(),  # the default's first
                                                      key=lambda d: d.name != TASKS['classification'].default_scheme))
                   + ".")
@click.option("--patch", type=int, default=R.patch, show_default=True, help="Patch size P.")
@click.option("--size", default=None,
              help="Image (canvas) size before encryption: N or HxW. Default: 224 (classification), 512 (detection).")
@click.option("--gap", type=int, default=None,
              help="Defence of rs / mi-shuffle: blank a border of this many pixels inside every stored cell "
                   "(seams stop matching; it costs accuracy where flip does not, README 'Privacy'). Default: 0.")
@click.option("--drop", type=float, default=R.drop, show_default=True,
              help="Defence of rs / mi-shuffle: blank this fraction of every image's cells.")
@click.option("--flip/--no-flip", default=None,
              help="Defence of rs / mi-shuffle: turn every stored cell by a keyed random flip, transpose or rotation "
                   "(one of 8), so a cell's edges no longer say which neighbour they met; keeps every pixel, and "
                   "the models are exactly invariant to it. Default: on for mi-shuffle (within the leak budget "
                   "under the audit, README 'Privacy'), off otherwise; --no-flip turns it off.")
@click.option("--format", "fmt", type=click.Choice(["jpeg", "png", "raw"]), default=R.fmt, show_default=True,
              help="Image encoding in the shards (png/raw are lossless; raw is .npy uint8).")
@click.option("--quality", type=int, default=R.quality, show_default=True, help="JPEG quality.")
@click.option("--resize", type=click.Choice(["crop", "stretch", "letterbox"]), default=None,
              help="crop (the classification default): shorter side to size, centre crop; stretch: both sides to "
                   "size; letterbox (the detection default): the whole image fitted in, aspect kept, padded.")
@click.option("--task", type=click.Choice(["auto", *TASKS]), default=R.task,
              show_default=True,
              help="detection: SRC is a COCO images folder (boxes in every sample's .json, a sanitised ground "
                   "truth in OUT). auto: detection when --annotations is given or SRC has the usual COCO "
                   "layout (../annotations/instances_<folder>.json).")
@click.option("--annotations", default=None, help="Detection: the COCO instances JSON of SRC (path or URL).")
@click.option("--keep-image-ids", is_flag=True, default=R.keep_image_ids,
              help="Detection: keep the source's image ids in OUT's ground truth (default: opaque ids; the map "
                   "back stays in the owner's state).")
@click.option("--shard-size", type=int, default=R.shard_size, show_default=True, help="Samples per shard.")
@click.option("--split", default=R.split, show_default=True,
              help="Split name: shard prefix ({split}-000000.tar) and timm split in _info.json.")
@click.option("--workers", type=int, default=None,
              help="Worker processes (shards run in parallel); 0 runs in this process. Default: on the CPU one per "
                   "usable CPU (up to 16), on a GPU one per 8 CPUs.")
@click.option("--threads", type=int, default=R.threads,
              help="Decode/resize/encode threads per worker. Default: usable CPUs // workers.")
@click.option("--batch-size", type=int, default=R.batch_size, show_default=True, help="Images per decode/encrypt batch.")
@click.option("--seed", type=int, default=None,
              help="Make sample order and permutations reproducible. Without it they come from a cryptographic "
                   "source. The seed is never written into OUT.")
@click.option("--shuffle/--no-shuffle", default=R.shuffle, show_default=True, help="Shuffle sample order across shards.")
@click.option("--include-paths", is_flag=True, default=R.include_paths,
              help="Write source paths into OUT (off: OUT names no source file).")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="Owner's private state (keys, resume, source paths). Default: ~/.local/state/himr-pipe/<OUT>.")
@click.option("--max-pixels", type=int, default=None, help="Refuse images with more pixels (decompression bombs).")
@click.option("--max-bytes", type=int, default=None, help="Refuse input files larger than this.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@click.option("--device", default=R.device, show_default=True,
              help="cpu, or cuda / cuda:N: decode, encrypt (Triton) and encode on that GPU.")
@click.option("--decoder", type=Registered("himr_pipe.decoders.choose", "DECODERS"), default=R.decoder,
              show_default=True,
              help="Decode stage: NVIDIA DALI (auto, where installed), torchvision (nvJPEG on a GPU) or nvImageCodec "
                   "(the GPU's hardware JPEG decoder where it has one). Resizing is himr_pipe's own on the CPU "
                   "and for the last two; DALI's on a GPU.")
@click.option("--encoder", type=Registered("himr_pipe.encode", "ENCODERS"), default=R.encoder,
              show_default=True, help="Encode stage. auto: CPU threads on the CPU; nvimgcodec (else torchvision) "
                                      "on a GPU for JPEG.")
@click.option("--kernels", type=Registered("himr_pipe.kernels.api", "IMPLS"), default=R.kernels, show_default=True,
              help="Encryption kernels. auto: Triton on a GPU, on the CPU numpy per image (cpu), fused with encoding; torch: the batched reference.")
@click.option("--views", type=int, default=R.views, show_default=True,
              help="K > 1: bake K random-resized-crop + flip views of each input before encryption, each its own "
                   "sample (offline encryption freezes the image; this restores the usual train-time crops).")
@click.option("--distributor", type=Registered("himr_pipe.distributor", "DISTRIBUTORS"), default=R.distributor,
              show_default=True,
              help="Who runs the shards: local (this process with --workers 0, else local processes) or ray (each "
                   "shard a Ray task; a worker that dies is retried).")
@click.option("--ray-address", default=None,
              help="With --distributor ray: an existing Ray cluster ('auto', 'ray://host:10001'); default: a local one "
                   "with --workers CPUs (all CPUs when --workers is not given).")
@click.option("--audit/--no-audit", default=R.audit, show_default=True,
              help="End with a quick audit of a few samples (seconds): the strongest attack we have, its figures "
                   "written into the manifest, and a warning when the setting is over the leak budget.")
def encrypt_shards_cmd(src, out, scheme, patch, size, gap, drop, flip, fmt, quality, resize, task, annotations,
                       keep_image_ids, shard_size, split, workers, threads,
                       batch_size, seed, shuffle, include_paths, state_dir, max_pixels, max_bytes, progress,
                       device, decoder, encoder, kernels, views, distributor, ray_address, audit):
    """Encrypt the images of SRC into WebDataset shards in OUT.

    SRC is an ImageNet-style folder (one sub-folder per class), a WebDataset
    .tar, a folder of .tar files, or a brace pattern like
    'train-{000000..000009}.tar' (samples need a .cls label); a Hugging Face
    parquet split (a .parquet file, a folder of them, or a glob like
    'data/train-*.parquet'); a folder of images labelled by its labels.csv
    (path,label), or a folder of images with no sub-folder (unlabelled: no
    .cls); for detection, a COCO images folder with its instances JSON. SRC
    and OUT may be URLs (s3://, gs://, memory://).
    """
    from .encode import FormatError
    from .job import EXIT_PARTIAL, JobError
    from .pipeline import encrypt_shards
    from .scheme import SchemeError

    req = EncryptRequest(scheme=scheme, patch=patch, size=size, gap=gap, drop=drop, flip=flip, fmt=fmt,
                         quality=quality, resize=resize, task=task, annotations=annotations,
                         keep_image_ids=keep_image_ids, shard_size=shard_size, split=split, workers=workers,
                         threads=threads, batch_size=batch_size, seed=seed, shuffle=shuffle,
                         include_paths=include_paths, state_dir=state_dir, max_pixels=max_pixels,
                         max_bytes=max_bytes, progress=progress, device=device, decoder=decoder, encoder=encoder,
                         kernels=kernels, views=views, distributor=distributor, ray_address=ray_address, audit=audit)
    from .storage import StoreUnavailable

    try:
        cfg, opts = req.build(src)
        res = encrypt_shards(src, out, cfg, seed, opts)
    except (SchemeError, FormatError, JobError) as e:
        _fail_usage(str(e))
    except StoreUnavailable as e:  # before any shard (the checks, the lease, the resume scan): nothing changed
        click.echo(f"himr-pipe: run stopped: {e}. Nothing more was written; rerun the same command to resume "
                   f"once the store answers.", err=True)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside the shards' loop (which reports it itself)
        click.echo("himr-pipe: run stopped: interrupted. Finished shards are kept and OUT's lock is released; "
                   "rerun the same command to resume.", err=True)
        sys.exit(1)
    if res.manifest is None:  # stopped before the manifest (an object-store lease lost to another run)
        for m in res.messages:
            click.echo(f"himr-pipe: {m}", err=True)
        sys.exit(res.exit_code)
    t = res.manifest["totals"]
    rate = res.processed / res.seconds if res.seconds > 0 else 0.0
    reasons = ", ".join(f"{k}: {v}" for k, v in res.manifest["skip_reasons"].items())
    line = (f"himr-pipe: {t['inputs']} inputs, {t['inputs_written']} written"
            + (f" as {t['written']} samples" if t["written"] != t["inputs_written"] else "")
            + f", {t['skipped']} skipped"
            + (f" ({reasons})" if reasons else "")
            + f", {len(res.manifest['shards'])} shards, {res.seconds:.1f} s, {rate:.0f} img/s -> "
            + os.path.join(out, "manifest.json"))
    for m in res.messages:
        click.echo(f"himr-pipe: {m}", err=True)
    click.echo(line)
    task_line = cfg.task_def.summary(res.manifest)
    if task_line:
        click.echo(f"himr-pipe: {task_line}")
    a = res.manifest.get("audit")
    if a and "mean" in a:
        click.echo(f"himr-pipe: quick audit of {a['samples']} samples ({res.audit_seconds:.0f} s): the attack recovered "
                   f"{a['mean']['neighbour_accuracy']:.3f} of the neighbours, {a['mean']['direct_accuracy']:.3f} of the "
                   f"cells in place (lower bounds); "
                   + ("within the leak budget against this attack" if a["meets_budget"] else "OVER the leak budget")
                   + " (manifest.json 'audit'; himr-pipe audit OUT --report DIR for more)")
    if res.exit_code == EXIT_PARTIAL:
        from .state import OwnerState

        click.echo(f"himr-pipe: skipped inputs by name: {OwnerState(res.state_dir).skipped_path}", err=True)
    sys.exit(res.exit_code)


@main.command("verify")
@click.argument("out", type=Where(exists=True))
@click.option("--decode", is_flag=True, help="Also decode every image and check its size.")
def verify_cmd(out, decode):
    """Check every shard of OUT against its manifest (counts, sizes, sha256, sample structure)."""
    from .verify import verify_out

    problems, summary = verify_out(out, decode=decode)
    for p in problems:
        click.echo(f"PROBLEM {p}", err=True)
    if summary:
        click.echo(f"himr-pipe verify: {summary.get('shards', 0)} shards, {summary.get('samples', 0)} samples read, "
                   f"{len(problems)} problem(s)")
    sys.exit(1 if problems else 0)


@main.command("sample-data")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--task", type=click.Choice(["classification", "detection", "shapes"]), default="classification",
              show_default=True, help="classification: an ImageNet-style class-per-folder tree; detection: a "
                                      "COCO-format set (train2017/, val2017/, annotations/instances_*.json); shapes: "
                                      "the structured accuracy proxy (one large photo-textured shape per image, "
                                      "classes bar, disc, square, triangle), DEST/train and DEST/val as "
                                      "ImageNet-style folders.")
@click.option("--per-class", type=int, default=8, show_default=True,
              help="Images per class (classification; shapes: train images per class, and a quarter as many, "
                   "at least 2, for val).")
@click.option("--size", type=int, default=128, show_default=True, help="Image side in pixels (shapes).")
@click.option("--kind", type=click.Choice(["shapes", "rects"]), default="shapes", show_default=True,
              help="Detection: shapes (four kinds of shape drawn on the bundled photos, JPEG) or rects (red and "
                   "green rectangles on dark noise, PNG: the set a small detector learns to find within minutes "
                   "on a CPU; the README's detection path).")
@click.option("--train-images", type=int, default=24, show_default=True, help="Train images (detection).")
@click.option("--val-images", type=int, default=8, show_default=True, help="Val images (detection).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_context
def sample_data_cmd(ctx, dest, task, per_class, size, kind, train_images, val_images, seed):
    """Write a small sample dataset cut from scikit-image's bundled photos (no download): an ImageNet-style
    folder, with --task detection a COCO-format detection set of coloured shapes drawn on them, or with
    --task shapes the structured accuracy proxy (train/ and val/ folders)."""
    from click.core import ParameterSource

    from .sample_data import make_detection_sample, make_rect_detection, make_sample_folder, make_shapes_classification

    def given(name):
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)

    if task != "detection" and (given("train_images") or given("val_images") or given("kind")):
        _fail_usage("--kind/--train-images/--val-images are for --task detection")
    if task != "shapes" and given("size"):
        _fail_usage("--size is for --task shapes")
    if task == "shapes" and (per_class < 1 or size < 16):
        _fail_usage("--per-class must be at least 1 and --size at least 16")
    if task == "detection" and given("per_class"):
        _fail_usage("--per-class is for --task classification")
    if task == "detection" and (train_images < 1 or val_images < 0):
        _fail_usage("--train-images must be at least 1 and --val-images at least 0")
    if os.path.exists(dest) and os.listdir(dest):
        _fail_usage(f"{dest} exists and is not empty; choose a new folder")
    if task == "detection" and kind == "rects":
        # distinct draws for the two splits (as --task shapes)
        make_rect_detection(dest, train_images, [seed, 0], "train2017")
        make_rect_detection(dest, val_images, [seed, 1], "val2017")
        click.echo(f"himr-pipe: wrote {train_images + val_images} PNGs ({train_images} train, {val_images} val) "
                   f"of red and green rectangles (COCO detection) to {dest}")
        return
    if task == "detection":
        r = make_detection_sample(dest, train_images=train_images, val_images=val_images, seed=seed)
        click.echo(f"himr-pipe: wrote {r['images']} JPEGs ({r['train_images']} train, {r['val_images']} val) "
                   f"with {r['annotations']} boxes in {r['categories']} categories (COCO detection) to {dest}")
        return
    if task == "shapes":
        # distinct draws for the two splits: the train and val images never repeat each other
        tr = make_shapes_classification(os.path.join(dest, "train"), per_class=per_class, size=size, seed=[seed, 0])
        va = make_shapes_classification(os.path.join(dest, "val"), per_class=max(2, per_class // 4), size=size,
                                        seed=[seed, 1])
        click.echo(f"himr-pipe: wrote {tr['images']} train and {va['images']} val JPEGs ({size}x{size}) of "
                   f"{tr['classes']} shape classes to {dest}/train and {dest}/val")
        return
    r = make_sample_folder(dest, per_class=per_class, seed=seed)
    click.echo(f"himr-pipe: wrote {r['images']} JPEGs in {r['classes']} classes to {dest}")



@main.command("tradeoff")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.option("--samples", type=int, required=True,
              help="Images of SRC to measure on, drawn per class in proportion to the class sizes; a fifth of "
                   "them are held out for validation. Refused when too few to tell two settings apart: the 95% "
                   "half-width of a top-1 estimate on n_val validation images, about 0.98/sqrt(n_val), must be at "
                   "most 0.10 (n_val >= 97, so --samples >= about 485), and every class needs at least 10 training "
                   "and 2 validation images in the sample.")
@click.option("--size", default="224", show_default=True, help="Image size before encryption: N or HxW.")
@click.option("--patch", type=int, default=16, show_default=True, help="Patch size P (the 2P settings use 2P).")
@click.option("--epochs", type=int, default=None,
              help="Training epochs per setting (default: the recipe's, himr_pipe.tradeoff.RECIPE).")
@click.option("--format", "fmt", type=click.Choice(["jpeg", "png"]), default="jpeg", show_default=True,
              help="How the shards store images (jpeg: the product default).")
@click.option("--quality", type=int, default=90, show_default=True, help="JPEG quality.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Which images are sampled, the encryption seeds (train: seed, val: seed + 1) and the first "
                   "training seed.")
@click.option("--seeds", type=int, default=1, show_default=True,
              help="Training seeds per setting: the table shows their mean and standard deviation.")
@click.option("--close-seeds", type=int, default=None,
              help="Then train every setting whose mean top-1 is within 0.05 of another's up to this many seeds.")
@click.option("--settings", default=None,
              help="Comma list of setting labels (default: all): none, rs, rs gap 1, rs gap 2, mi-shuffle, "
                   "mi-shuffle gap 1, mi-shuffle 2P, mi-shuffle 2P gap 1, rs flip, rs gap 1 flip, mi-shuffle flip, "
                   "mi-shuffle gap 1 flip.")
@click.option("--classes", type=int, default=None,
              help="Measure on this many classes of SRC, drawn at random (for sets with many classes).")
@click.option("--audit-samples", type=int, default=16, show_default=True,
              help="Validation images attacked per setting.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Write report.json, report.md and grid.png (one stored sample per setting) here; not inside "
                   "SRC or the work folder.")
@click.option("--work", type=click.Path(file_okay=False), default=None,
              help="Keep the sample links, shards and owner states here (default: a temporary folder, removed "
                   "at the end); not inside SRC. A rerun into it reuses the shards and every finished training "
                   "and attack.")
@click.option("--device", default="auto", show_default=True, help="Training device: auto (a GPU where present), "
                                                                    "cpu, cuda or cuda:N.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
def tradeoff_cmd(src, samples, size, patch, epochs, fmt, quality, seed, seeds, close_seeds, settings, classes,
                 audit_samples, report_dir, work, device, progress):
    """Owner only: measure what each privacy setting leaks and costs on a labelled sample of SRC, and recommend one.

    SRC is an ImageNet-style folder of the owner's own images. For every candidate setting the sample is
    encrypted with encrypt-shards, attacked with the audit's attack (its figures are lower bounds on the
    leak), and a small model is trained at the same budget; the table gives the leak, whether the leak
    budget is met, held-out top-1 and its cost against none, and the setting that meets the budget at the
    smallest cost is recommended.
    """
    from dataclasses import replace

    from .scheme import SchemeError, parse_size
    from .tradeoff import RECIPE, TradeoffError, format_table, pick_settings, run_tradeoff

    try:
        hw = parse_size(size)
        chosen = pick_settings(settings)
        recipe = RECIPE if epochs is None else replace(RECIPE, epochs=epochs)
        if device != "auto" and not is_device(device):
            raise TradeoffError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
        if device != "auto" and device_unavailable(device):
            raise TradeoffError(device_unavailable(device))
        res = run_tradeoff(src, samples, hw, patch, recipe, fmt, quality, seed, seeds, close_seeds, chosen, work,
                           report_dir, audit_samples, classes=classes, device=device,
                           progress=sys.stderr.isatty() if progress is None else progress,
                           log=lambda s: click.echo(f"himr-pipe tradeoff: {s}"))
    except (TradeoffError, SchemeError) as e:
        _fail_usage(str(e))
    click.echo("")
    click.echo(format_table(res))
    if report_dir:
        click.echo(f"himr-pipe tradeoff: report -> {report_dir} (report.json, report.md, grid.png)")
    click.echo(f"himr-pipe tradeoff: {res['total_seconds']:.0f} s in all "
               f"(estimated {res['estimate_seconds']:.0f} s)")


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
    try:
        res = train(cfg, log=lambda s: click.echo(f"himr-pipe train: {s}"))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the last checkpoint is whole (written atomically)
        click.echo(f"himr-pipe train: interrupted; the last checkpoint is "
                   f"{os.path.join(cfg.out, 'checkpoint-last.pt')}: --resume continues from it", err=True)
        sys.exit(1)
    except ShardFault as e:  # met mid-run: a failure (exit 1), the last epoch's checkpoint intact
        click.echo(f"himr-pipe train: error: {error_message(e)}\nhimr-pipe train: the last checkpoint is "
                   f"{os.path.join(cfg.out, 'checkpoint-last.pt')}: fix the shards and --resume", err=True)
        sys.exit(1)
    except (DataError, ValueError) as e:
        _fail_usage(error_message(e))
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
    from himr_pipe.train.timm_script import TimmTrainError, run_timm_train

    try:
        code = run_timm_train(train_py, list(args), warn=lambda s: click.echo(f"himr-pipe timm-train: {s}", err=True))
    except TimmTrainError as e:
        _fail_usage(str(e))
    sys.exit(code)


@main.command("preview")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("out_png", type=click.Path(dir_okay=False))
@click.option("--scheme", type=SchemeChoice(("all",), encrypting=True), default="all", show_default=True)
@click.option("--patch", type=int, default=16, show_default=True)
@click.option("--size", default="224", show_default=True, help="N or HxW, as for encrypt-shards.")
@click.option("--resize", type=click.Choice(["crop", "stretch"]), default="crop", show_default=True)
@click.option("--seed", type=int, default=None, help="Reproducible permutation (default: a cryptographic one).")
@click.option("--gap", type=int, default=None,
              help="Defence of the shuffled schemes (see encrypt-shards; default: 0).")
@click.option("--drop", type=float, default=0.0, show_default=True, help="Defence of the shuffled schemes (see encrypt-shards).")
@click.option("--flip/--no-flip", default=None,
              help="Defence of the shuffled schemes (see encrypt-shards; default: on for mi-shuffle).")
def preview_cmd(image, out_png, scheme, patch, size, resize, seed, gap, drop, flip):
    """Write a picture of IMAGE and its encrypted forms (plain | RS | MI | MI-SHUFFLE) to OUT_PNG, to look before a run."""
    import numpy as np
    from PIL import Image

    from .decoders import DaliDecoder, inspect_header
    from .kernels import encrypt, make_permutations
    from . import keys
    from .scheme import Scheme, SchemeError, default_flip, default_gap, parse_size
    from .sources import InputError

    try:
        h, w = parse_size(size)
        kinds = [n for n, d in SCHEMES.items() if d.encrypts] if scheme == "all" else [scheme]
        # the defences are the shuffled schemes' (the others keep their cells in place)
        schemes = [Scheme.named(k, patch, h, w, *(((default_gap(k) if gap is None else gap), drop,
                                                   default_flip(k) if flip is None else flip) if SCHEMES[k].shuffled
                                                  else (0, 0.0, False))) for k in kinds]
        data = open(image, "rb").read()
        inspect_header(data)
    except (SchemeError, InputError) as e:
        _fail_usage(str(e.reason if isinstance(e, InputError) else e))
    (_, imgs, bad), = list(DaliDecoder((h, w), resize, 1, 1).run([[data]]))
    if bad:
        _fail_usage(f"{image}: {bad[0]}")
    x = imgs
    key = keys.key_from_seed(seed) if seed is not None else keys.new_key()
    panels = [imgs[0].numpy()]
    for s in schemes:
        perms = None
        if s.shuffled:
            perms = make_permutations(keys.permutation_keys(key, 0, 1, s.num_patches), orient=s.flip)
        y = encrypt(s, x, perms)[0].numpy()
        panels.append(s.definition.plain_geometry(s, y))  # at the plain image's size (mi: each value as a 2x2 block)
    gap = np.full((h, 8, 3), 255, np.uint8)
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    Image.fromarray(row).save(out_png)
    click.echo(f"himr-pipe: wrote {out_png}: plain | " + " | ".join(k.upper() for k in kinds)
               + f" (P={patch}, {h}x{w})")


@main.command("audit")
@click.argument("out", type=Where(exists=True))
@click.option("--report", "report_dir", type=click.Path(file_okay=False), required=True,
              help="Folder for report.json, report.md and grid.png (they show plain images: not inside OUT).")
@click.option("--plain", "plain", type=click.Path(exists=True), default=None,
              help="The plain SRC the shards were made from (default: where the owner state says it was).")
@click.option("--samples", type=int, default=16, show_default=True, help="Images to attack.")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="The owner state of the run (default: as encrypt-shards).")
@click.option("--seed", type=int, default=0, show_default=True, help="Which samples are drawn.")
def audit_cmd(out, report_dir, plain, samples, state_dir, seed):
    """Owner only: attack a sample of OUT's encrypted images and report what an attacker recovers."""
    from .audit.report import AuditError, run_audit

    if samples < 1:
        _fail_usage("--samples must be at least 1")
    try:
        rep = run_audit(out, plain, report_dir, samples, state_dir, seed)
    except AuditError as e:
        _fail_usage(str(e))
    figs = ", ".join(f"{k} {v:.3f}" for k, v in rep["mean"].items())
    verdict = "within the leak budget against this attack" if rep["meets_budget"] else "OVER the leak budget"
    click.echo(f"himr-pipe audit: {rep['samples']} images, {rep['setting']}: {figs} (lower bounds on the leak); "
               f"{verdict} -> {report_dir}")


@main.command("decrypt")
@click.argument("out", type=Where(exists=True))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="The owner state of the run (default: as encrypt-shards). It holds the job key.")
@click.option("--limit", type=int, default=None, help="Decrypt only the first N samples.")
def decrypt_cmd(out, dest, state_dir, limit):
    """Owner only: rebuild every sample of OUT at its plain geometry into DEST/{key}.png.

    RS and mi-shuffle are inverted exactly (up to the codec's loss); MI is shown at full size (its averaging
    has no inverse). Needs the owner's state (the job key); refuses without it.
    """
    from .decrypt import DecryptError, decrypt_out

    try:
        res = decrypt_out(out, dest, state_dir, limit)
    except DecryptError as e:
        _fail_usage(str(e))
    click.echo(f"himr-pipe decrypt: {res['images']} images ({res['scheme']}) -> {res['dest']}")


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

    from himr_pipe.train.predict import PredictError, Predictor

    if top_k is not None and top_k < 1:
        _fail_usage("--top-k must be at least 1")
    if batch_size < 1:
        _fail_usage("--batch-size must be at least 1")
    skipped = []

    def on_skip(path, reason):
        skipped.append(path)
        click.echo(f"himr-pipe predict: skipped {path}: {reason}", err=True)

    try:
        p = Predictor(run, device=device, batch_size=batch_size)
    except PredictError as e:
        _fail_usage(str(e))
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
                _fail_usage(f"--json {json_out}: {e.strerror or e}")
    else:  # one line per image (classification) or per detection: the task's own (train/tasks.py)
        for r in records:
            click.echo(p.line(r))
    if json_out not in (None, "-"):
        click.echo(f"himr-pipe predict: {p.summary(records)}, {len(skipped)} skipped -> {json_out}")
    sys.exit(3 if skipped else 0)


if __name__ == "__main__":
    main()
