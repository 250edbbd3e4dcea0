"""The owner's tools: preview, audit, decrypt and the trade-off study (they read plain images or the key)."""

from __future__ import annotations

import click

from ..schemes import SCHEMES
from ..tradeoff.settings import TradeoffRequest
from .base import Registered, Where, fail_usage, main

S = TradeoffRequest  # tradeoff's option defaults, stated once in himr_pipe.tradeoff.settings


@main.command("preview")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("out_png", type=click.Path(dir_okay=False))
@click.option("--scheme", type=Registered("himr_pipe.schemes", "SCHEMES", keep=lambda d: d.encrypts, extra=("all",)), default="all", show_default=True)
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

    from ..decoders import DaliDecoder, inspect_header
    from ..kernels import encrypt, make_permutations
    from .. import keys
    from ..scheme import Scheme, SchemeError, default_flip, default_gap, parse_size
    from ..sources import InputError

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
        fail_usage(str(e.reason if isinstance(e, InputError) else e))
    (_, imgs, bad), = list(DaliDecoder((h, w), resize, 1, 1).run([[data]]))
    if bad:
        fail_usage(f"{image}: {bad[0]}")
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
@click.option("--progress/--no-progress", default=None,
              help="Progress bar (default: on a terminal; otherwise a short line per image on stderr).")
def audit_cmd(out, report_dir, plain, samples, state_dir, seed, progress):
    """Owner only: attack a sample of OUT's encrypted images and report what an attacker recovers.

    Each image takes seconds on CPU (the jigsaw solver; at 224 px, P=16 on 2 cores: about 2 s for rs, 9 s for
    mi-shuffle --no-flip, 12-20 s for mi-shuffle with flip, the default; more at larger sizes): the default 16
    images take up to about 5 minutes, with a progress bar (a line per image when stderr is not a terminal).
    """
    from ..audit.report import run_audit

    if samples < 1:
        fail_usage("--samples must be at least 1")
    rep = run_audit(out, plain, report_dir, samples, state_dir, seed, progress=progress,
                    echo=lambda s: click.echo(s, err=True))
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
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
def decrypt_cmd(out, dest, state_dir, limit, progress):
    """Owner only: rebuild every sample of OUT at its plain geometry into DEST/{key}.png.

    RS and mi-shuffle are inverted exactly (up to the codec's loss); MI is shown at full size (its averaging
    has no inverse). Needs the owner's state (the job key); refuses without it. A sample that cannot be read
    or decoded is skipped with a warning naming its key (exit 3, the rest decrypted).
    """
    import sys

    from ..decrypt import decrypt_out
    from ..errors import EXIT_PARTIAL

    res = decrypt_out(out, dest, state_dir, limit, warn=lambda s: click.echo(f"himr-pipe decrypt: {s}", err=True),
                      progress=sys.stderr.isatty() if progress is None else progress)
    skipped = f", {res['skipped']} skipped" if res["skipped"] else ""
    click.echo(f"himr-pipe decrypt: {res['images']} images{skipped} ({res['scheme']}) -> {res['dest']}")
    sys.exit(EXIT_PARTIAL if res["skipped"] else 0)


@main.command("tradeoff")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.option("--samples", type=int, required=True,
              help="Images of SRC to measure on, drawn per class in proportion to the class sizes; a fifth of "
                   "them are held out for validation. Refused when too few to tell two settings apart: the 95% "
                   "half-width of a top-1 estimate on n_val validation images, about 0.98/sqrt(n_val), must be at "
                   "most 0.10, so n_val >= 97, and every class needs at least 10 training and 2 validation images "
                   "(12 drawn). n_val is each class's fifth of its draw rounded per class, so the smallest "
                   "--samples depends on SRC's class sizes, near 485 but not always it (489 for 4 equal classes, "
                   "477 for 10; never under 12 a class); a refusal names it for SRC.")
@click.option("--size", default=S.size, show_default=True, help="Image size before encryption: N or HxW.")
@click.option("--patch", type=int, default=S.patch, show_default=True, help="Patch size P (the 2P settings use 2P).")
@click.option("--epochs", type=int, default=S.epochs,
              help="Training epochs per setting (default: the recipe's, himr_pipe.tradeoff.RECIPE).")
@click.option("--format", "fmt", type=click.Choice(["jpeg", "png"]), default=S.fmt, show_default=True,
              help="How the shards store images (jpeg: the product default).")
@click.option("--quality", type=int, default=S.quality, show_default=True, help="JPEG quality.")
@click.option("--seed", type=int, default=S.seed, show_default=True,
              help="Which images are sampled, the encryption seeds (train: seed, val: seed + 1) and the first "
                   "training seed.")
@click.option("--seeds", type=int, default=S.seeds, show_default=True,
              help="Training seeds per setting: the table shows their mean and standard deviation.")
@click.option("--close-seeds", type=int, default=S.close_seeds,
              help="Then train every setting whose mean top-1 is within 0.05 of another's up to this many seeds.")
@click.option("--settings", default=S.settings,
              help="Comma list of setting labels (default: all): none, rs, rs gap 1, rs gap 2, mi-shuffle, "
                   "mi-shuffle gap 1, mi-shuffle 2P, mi-shuffle 2P gap 1, rs flip, rs gap 1 flip, mi-shuffle flip, "
                   "mi-shuffle gap 1 flip.")
@click.option("--classes", type=int, default=S.classes,
              help="Measure on this many classes of SRC, drawn at random (for sets with many classes).")
@click.option("--audit-samples", type=int, default=S.audit_samples, show_default=True,
              help="Validation images attacked per setting.")
@click.option("--report", type=click.Path(file_okay=False), default=S.report,
              help="Write report.json, report.md and grid.png (one stored sample per setting) here; not inside "
                   "SRC or the work folder.")
@click.option("--work", type=click.Path(file_okay=False), default=S.work,
              help="Keep the sample links, shards and owner states here (default: a temporary folder, removed "
                   "at the end); not inside SRC. A rerun into it reuses the shards and every finished training "
                   "and attack.")
@click.option("--device", default=S.device, show_default=True, help="Training device: auto (a GPU where present), "
                                                                      "cpu, cuda or cuda:N.")
@click.option("--progress/--no-progress", default=S.progress, help="Progress bar (default: on a terminal).")
def tradeoff_cmd(**options):
    """Owner only: measure what each privacy setting leaks and costs on a labelled sample of SRC, and recommend one.

    SRC is an ImageNet-style folder of the owner's own images. For every candidate setting the sample is
    encrypted with encrypt-shards, attacked with the audit's attack (its figures are lower bounds on the
    leak), and a small model is trained at the same budget; the table gives the leak, whether the leak
    budget is met, held-out top-1 and its cost against none, and the setting that meets the budget at the
    smallest cost is recommended.
    """
    from ..tradeoff import format_table, run_tradeoff

    # option for option; the study checks the size, the settings and the device (TradeoffError, SchemeError:
    # refused, exit 2, by the group)
    req = TradeoffRequest(**options)
    res = run_tradeoff(req, log=lambda s: click.echo(f"himr-pipe tradeoff: {s}"))
    click.echo("")
    click.echo(format_table(res))
    if req.report:
        click.echo(f"himr-pipe tradeoff: report -> {req.report} (report.json, report.md, grid.png)")
    click.echo(f"himr-pipe tradeoff: {res['total_seconds']:.0f} s in all "
               f"(estimated {res['estimate_seconds']:.0f} s)")
