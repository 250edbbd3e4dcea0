"""``himr-pipe audit``: attack a sample of encrypted shards and report what leaks.

Runs on the owner's side: it needs the owner's state (the job key, which
gives the true permutation of every sample, and the map from samples to
source files), never in OUT. For each sampled image it rebuilds the exact
plain image that was encrypted (same decoder, same resize, same view), runs
the attack of :mod:`.attack` on the stored bytes and scores it.

:func:`audit_out` is the one sampler and scorer. ``encrypt-shards`` ends with
it (a few samples, figures into the manifest) and ``himr-pipe audit`` runs it
with more samples and writes ``report.json`` (every figure), ``report.md``
(the summary table) and ``grid.png`` (original | stored | attacker's
picture, one row per image). The same OUT, sample count and seed give the
same figures from both.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..decrypt import DecryptError, open_owner, true_permutations
from ..shards import iter_shard
from .attack import BOUND, BUDGET, PSNR_CAP, attack_name, attack_sample, meets_budget, summarise
from ..errors import Refused


class AuditError(Refused, ValueError):
    pass


def _plain_images(view, picks, source=None, plain_root: str | None = None) -> tuple[dict, str | None]:
    """Rebuild the plain images of the picked samples: {key: HxWx3}, or ({}, why not)."""
    from ..decoders import DecodeBatch, inspect_header, make_decoder
    from ..keys import view_draws
    from ..geometry import decode_geometry
    from ..sources import InputError, SourceError, read_input
    from ..tasks import task_of_job

    job = view.manifest["job"]
    if source is None:
        root = plain_root or view.source_root
        if not root:
            return {}, "the owner state does not say where SRC was; pass --plain"
        try:  # detection: its annotations as the run had them (found beside --plain otherwise)
            source = task_of_job(job).open_source(root, view.source_annotations if root == view.source_root else None)
        except SourceError as e:
            return {}, f"SRC is not readable ({e}); pass --plain"
    views = job.get("views", 1)
    letterbox = job["resize"] == "letterbox"
    dec = make_decoder(job.get("decoder", "dali"), view.scheme.size, job["resize"], 1, 1, "cpu", views=views > 1)
    out = {}
    for shard, key, idx, ref in picks:
        if idx >= len(source.inputs) or source.inputs[idx].ref != ref:
            return {}, "SRC changed since the run (its inputs no longer match the owner state)"
        try:
            data = read_input(source.inputs[idx].loc)
            batch = DecodeBatch([data])
            u = None
            if views > 1:
                st = view.shards[shard]
                pos = int(key.rsplit("_", 1)[1])
                u = view_draws(view.key_hex, st.index, st.planned)[pos]
            if views > 1 or letterbox:  # the worker's own geometry, from the same function
                hdr = inspect_header(data)
                row, _ = decode_geometry(job["resize"], view.scheme.size, hdr.width, hdr.height, u)
                batch = DecodeBatch([data], np.array([row], np.float32))
        except InputError as e:
            return {}, f"a plain source can't be read ({e.reason})"
        (_, imgs, bad), = list(dec.run([batch]))
        if bad:
            return {}, f"a plain source no longer decodes ({bad[0]})"
        out[key] = np.asarray(imgs[0])
    return out, None


class Steps:
    """Progress of an audit, one step per attacked image (each takes seconds: :data:`SECONDS_PER_IMAGE`).

    ``show``: True, a bar on stderr; None, the bar on a terminal and otherwise one short line per image
    through ``echo``; False, nothing."""

    def __init__(self, total: int, desc: str, show: bool | None = None, echo=None):
        import sys

        from tqdm import tqdm

        self.total, self.desc, self.done, self.t0 = total, desc, 0, time.perf_counter()
        bar = show if show is not None else sys.stderr.isatty()
        self.echo = None if bar or show is False else (echo or (lambda s: print(s, file=sys.stderr, flush=True)))
        self.bar = tqdm(total=total, desc=desc, unit="img", disable=not bar, dynamic_ncols=True, file=sys.stderr)

    def __call__(self, key: str) -> None:
        self.done += 1
        self.bar.update(1)
        if self.echo is not None:
            self.echo(f"{self.desc}: {self.done}/{self.total} images attacked ({key}), "
                      f"{time.perf_counter() - self.t0:.0f} s")

    def close(self) -> None:
        self.bar.close()


# What one image of the audit costs (the jigsaw solver, on CPU; measured on the 48-photo sample of
# `himr-pipe sample-data` at 224 px, P=16, JPEG, on a busy 2-core machine: rs 2 s, mi-shuffle --no-flip 9 s,
# mi-shuffle with its default flip 12-20 s; the quick audit's 4 images of the default 47-77 s): the help
# texts and docs/privacy.md state it.
SECONDS_PER_IMAGE = "2-20 s"


def audit_out(out: str, samples: int = 16, state_dir: str | None = None, seed: int = 0, source=None,
              plain_root: str | None = None, progress: bool | None = False, echo=None,
              desc: str = "audit") -> tuple[dict, list]:
    """Attack ``samples`` samples of OUT (drawn with ``seed``); returns (report, grid rows).

    ``progress``: as :class:`Steps` (False: silent; None: a bar on a terminal, else a line per image via
    ``echo``)."""
    try:
        view = open_owner(out, state_dir)
    except DecryptError as e:
        raise AuditError(str(e)) from None
    scheme = view.scheme
    if not scheme.definition.encrypts:
        raise AuditError("OUT holds unencrypted images (scheme none): there is nothing to attack")
    written = [(st.name, k, idx, ref) for _, st in sorted(view.shards.items()) for k, idx, ref in st.written]
    if not written:
        raise AuditError("no written samples in the owner state")
    picks = sorted(random.Random(seed).sample(written, min(samples, len(written))))
    step = Steps(len(picks), desc, progress, echo)  # from here: rebuilding the plain images takes seconds too
    if step.echo is not None:
        step.echo(f"{desc}: attacking {len(picks)} images of {scheme.describe()} ({SECONDS_PER_IMAGE} each on CPU)")
    try:
        plain, why_no_plain = _plain_images(view, picks, source, plain_root)
        blobs, perms = {}, {}
        for shard in sorted({p[0] for p in picks}):
            keys = {p[1] for p in picks if p[0] == shard}
            for k, mem in iter_shard(out, shard):
                if k in keys:
                    blobs[k] = mem[view.ext]
            if scheme.shuffled:
                perms.update(true_permutations(view, shard, sorted(keys)))
        rows, grid = [], []
        for _, key, _, _ in picks:
            row, pictures = attack_sample(scheme, blobs[key], view.ext, perms.get(key), plain.get(key))
            rows.append({"key": key, **row})
            grid.append(([plain[key]] if key in plain else []) + pictures)
            step(key)
    finally:
        step.close()
    mean = summarise([{k: v for k, v in r.items() if k != "key"} for r in rows])
    ok, why = meets_budget(scheme, mean)
    report = {"scheme": scheme.to_dict(), "setting": scheme.describe(), "format": view.manifest["job"]["format"],
              "attack": attack_name(scheme), "samples": len(rows), "seed": seed, "mean": mean,
              "bound": BOUND, "budget": BUDGET, "meets_budget": ok, "over_budget": why,
              "plain": "rebuilt from SRC" if plain else f"unavailable: {why_no_plain}", "images": rows}
    return report, grid


def manifest_figures(report: dict) -> dict:
    """What the manifest carries of an audit: numbers only, never pictures, keys or paths; and no timings,
    so that a rerun of the same job writes the same manifest."""
    fig = {k: report[k] for k in ("attack", "bound", "samples", "seed", "mean", "budget", "meets_budget",
                                  "over_budget")}
    fig["mean"] = {k: v for k, v in fig["mean"].items() if k != "attack_seconds"}
    return fig


def run_audit(out: str, plain_root: str | None, report_dir: str, samples: int = 16, state_dir: str | None = None,
              seed: int = 0, progress: bool | None = False, echo=None) -> dict:
    from ..storage import Location

    rd = Path(report_dir).resolve()
    if Location(out).contains(Location(str(rd))):
        raise AuditError("the report shows plain images: it must not be written inside OUT")
    report, grid = audit_out(out, samples, state_dir, seed, plain_root=plain_root, progress=progress, echo=echo,
                             desc="himr-pipe audit")
    report["out"] = Location(out).identity
    rd.mkdir(parents=True, exist_ok=True)
    (rd / "report.json").write_text(json.dumps(report, indent=1))
    (rd / "report.md").write_text(markdown(report))
    _grid(grid, rd / "grid.png")
    return report


def markdown(report: dict) -> str:
    s = report["scheme"]
    lines = [f"# Privacy audit: {report['setting']} {s['height']}x{s['width']}, {report['format']['name']}, "
             f"{report['samples']} images", "",
             f"Attack: {report['attack']}.", "",
             f"Every figure below is {report['bound']}.", "",
             f"Plain images: {report['plain']}.", "",
             f"PSNR in dB, capped at {PSNR_CAP:.0f} for exact reconstructions.", "", "| figure | mean |", "|---|---|"]
    for k, v in report["mean"].items():
        lines.append(f"| {k} | {v:.4f} |")
    if "proximity" in report["mean"]:
        lines += ["", "neighbour_accuracy / direct_accuracy: true adjacencies rebuilt / cells put back, in the "
                  "best-aligned frame; pose_free_neighbour: true adjacencies rebuilt in any common pose of the pair "
                  "(fragments found turned count); proximity: true neighbours put side by side in any pose, on any "
                  "side (proximity_chance: that figure for a random layout)."]
    verdict = ("within the leak budget" if report["meets_budget"]
               else "OVER the leak budget: " + "; ".join(report["over_budget"]))
    lines += ["", f"Budget: direct <= {BUDGET['direct_accuracy']}, neighbour <= {BUDGET['neighbour_accuracy']} (in the "
              f"frame) and <= {BUDGET['pose_free_neighbour']} (pose-free), "
              f"an MI-like picture below the same-information baseline's SSIM. This setting is {verdict}.", "",
              "Columns of grid.png: original | stored (MI drawn at full size) | the attacker's picture", ""]
    return "\n".join(lines)


def _grid(rows: list[list[np.ndarray]], path: Path, cap: int = 8) -> None:
    gap = 4
    h = max(p.shape[0] for r in rows for p in r)
    lines = []
    for panels in rows[:cap]:
        parts = []
        for p in panels:
            p = np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255)
            parts += [p, np.full((h, gap, 3), 255, np.uint8)]
        lines.append(np.concatenate(parts[:-1], axis=1))
    w = max(x.shape[1] for x in lines)
    lines = [np.pad(x, ((0, gap), (0, w - x.shape[1]), (0, 0)), constant_values=255) for x in lines]
    Image.fromarray(np.concatenate(lines, axis=0)[:-gap]).save(path)
