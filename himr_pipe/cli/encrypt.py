"""encrypt-shards and verify: the commands that write OUT and check it."""

from __future__ import annotations

import os
import sys

import click

from ..request import EncryptRequest
from ..schemes import SCHEMES
from ..tasks import TASKS
from .base import Registered, Where, main

R = EncryptRequest  # the option defaults, stated once in himr_pipe.request


@main.command("encrypt-shards")
@click.argument("src")
@click.argument("out", type=Where())
@click.option("--scheme", type=Registered("himr_pipe.schemes", "SCHEMES"), default=None,
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
                   "(seams stop matching; it costs accuracy where flip does not, docs/privacy.md). Default: 0.")
@click.option("--drop", type=float, default=R.drop, show_default=True,
              help="Defence of rs / mi-shuffle: blank this fraction of every image's cells.")
@click.option("--flip/--no-flip", default=None,
              help="Defence of rs / mi-shuffle: turn every stored cell by a keyed random flip, transpose or rotation "
                   "(one of 8), so a cell's edges no longer say which neighbour they met; keeps every pixel, and "
                   "the models are exactly invariant to it. Default: on for mi-shuffle (within the leak budget "
                   "under the audit, docs/privacy.md), off otherwise; --no-flip turns it off.")
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
              help="End with a quick audit of 4 samples (2-20 s each on CPU at 224 px, P=16; with the default "
                   "mi-shuffle and flip 30-80 s in all on 2 cores; with progress): the strongest attack we have, its "
                   "figures written into the manifest, and a warning when the setting is over the leak budget.")
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
    from ..errors import EXIT_PARTIAL
    from ..pipeline import encrypt_shards

    req = EncryptRequest(scheme=scheme, patch=patch, size=size, gap=gap, drop=drop, flip=flip, fmt=fmt,
                         quality=quality, resize=resize, task=task, annotations=annotations,
                         keep_image_ids=keep_image_ids, shard_size=shard_size, split=split, workers=workers,
                         threads=threads, batch_size=batch_size, seed=seed, shuffle=shuffle,
                         include_paths=include_paths, state_dir=state_dir, max_pixels=max_pixels,
                         max_bytes=max_bytes, progress=progress, device=device, decoder=decoder, encoder=encoder,
                         kernels=kernels, views=views, distributor=distributor, ray_address=ray_address, audit=audit)
    from ..storage import StoreUnavailable

    try:
        cfg, opts = req.build(src)
        res = encrypt_shards(src, out, cfg, seed, opts)
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
    if res.already_complete:
        click.echo(f"himr-pipe: OUT is already complete ({t['inputs']} inputs, {t['inputs_written']} written"
                   + (f" as {t['written']} samples" if t["written"] != t["inputs_written"] else "")
                   + f", {t['skipped']} skipped, {len(res.manifest['shards'])} shards); nothing to do -> "
                   + os.path.join(out, "manifest.json"))
        sys.exit(0)
    rate = res.processed / res.seconds if res.seconds > 0 else 0.0
    reasons = ", ".join(f"{k}: {v}" for k, v in res.manifest["skip_reasons"].items())
    line = (f"himr-pipe: {t['inputs']} inputs, {t['inputs_written']} written"
            + (f" as {t['written']} samples" if t["written"] != t["inputs_written"] else "")
            + f", {t['skipped']} skipped"
            + (f" ({reasons})" if reasons else "")
            + f", {len(res.manifest['shards'])} shards, "
            + (f"{res.seconds:.1f} s, {rate:.0f} img/s" if res.processed else "every shard written before")
            + " -> "
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
                   f"{a['mean']['neighbour_accuracy']:.3f} of the neighbours ("
                   f"{a['mean'].get('pose_free_neighbour', a['mean']['neighbour_accuracy']):.3f} pose-free), "
                   f"{a['mean']['direct_accuracy']:.3f} of the "
                   f"cells in place (lower bounds); "
                   + ("within the leak budget against this attack" if a["meets_budget"] else "OVER the leak budget")
                   + " (manifest.json 'audit'; himr-pipe audit OUT --report DIR for more)")
    if res.exit_code == EXIT_PARTIAL:
        from ..state import OwnerState

        click.echo(f"himr-pipe: skipped inputs by name: {OwnerState(res.state_dir).skipped_path}", err=True)
    sys.exit(res.exit_code)


@main.command("verify")
@click.argument("out", type=Where(exists=True))
@click.option("--decode", is_flag=True, help="Also decode every image and check its size.")
def verify_cmd(out, decode):
    """Check every shard of OUT against its manifest (counts, sizes, sha256, sample structure)."""
    from ..verify import verify_out

    problems, summary = verify_out(out, decode=decode)
    for p in problems:
        click.echo(f"PROBLEM {p}", err=True)
    if summary:
        click.echo(f"himr-pipe verify: {summary.get('shards', 0)} shards, {summary.get('samples', 0)} samples read, "
                   f"{len(problems)} problem(s)")
    sys.exit(1 if problems else 0)
