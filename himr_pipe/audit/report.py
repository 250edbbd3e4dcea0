"""``himr-pipe audit``: attack a sample of encrypted shards and report what leaks.

Runs on the owner's side: it needs the plain sources and the owner's state
(which maps every output key to its source file), neither of which is in OUT.
For each sampled image it rebuilds the exact image that was encrypted (same
decoder, same resize), attacks the encrypted one, and scores the result:

* RS: the jigsaw solver (:mod:`.jigsaw`) on the stored (possibly JPEG)
  patches; direct and neighbour accuracy against the true layout (found by
  matching stored patches to plain ones), PSNR/SSIM of the reconstruction;
* MI: the naive and the regularised least-squares inverse
  (:mod:`.mi_inverse`), PSNR/SSIM, next to a same-information baseline (the
  plain image 2x down and up).

The report folder gets ``report.json`` (every figure), ``report.md`` (the
summary table, generated from the same numbers) and ``grid.png`` (original |
encrypted | each reconstruction, one row per image).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image

from ..manifest import MANIFEST, default_state_dir, read_json
from ..scheme import Scheme
from ..shards import decode_image, iter_samples
from .jigsaw import assemble, cut, solve
from .mi_inverse import downsampled_baseline, ls_inverse, naive_inverse
from .scores import direct_accuracy, image_quality, neighbour_accuracy


PSNR_CAP = 100.0


class AuditError(ValueError):
    pass


def true_layout(stored: np.ndarray, plain: np.ndarray, patch: int) -> np.ndarray:
    """Which stored patch belongs at each plain position (nearest match; exact for lossless output)."""
    a = cut(stored, patch).reshape(-1, patch * patch * 3).astype(np.float32)
    b = cut(plain, patch).reshape(-1, patch * patch * 3).astype(np.float32)
    d = (b * b).sum(1)[:, None] - 2 * b @ a.T + (a * a).sum(1)[None, :]
    gh, gw = plain.shape[0] // patch, plain.shape[1] // patch
    return d.argmin(axis=1).reshape(gh, gw)


def run_audit(out: str, plain_root: str, report_dir: str, samples: int = 16, state_dir: str | None = None,
              seed: int = 0) -> dict:
    rd, od = Path(report_dir).resolve(), Path(out).resolve()
    if rd == od or od in rd.parents:
        raise AuditError("the report shows plain images: it must not be written inside OUT")
    m = read_json(os.path.join(out, MANIFEST))
    job = m["job"]
    scheme = Scheme.from_dict(job["scheme"])
    if scheme.kind == "none":
        raise AuditError("OUT holds unencrypted images (scheme none): there is nothing to attack")
    state = Path(state_dir) if state_dir else default_state_dir(out)
    if not (state / "shards").is_dir():
        raise AuditError(f"the owner state of this OUT is not at {state}: pass --state-dir (the audit needs the "
                         "map from samples to source files, which OUT never holds)")
    written = []
    for p in sorted((state / "shards").glob("*.json")):
        st = read_json(p)
        written += [(st["name"], k, ref) for k, _, ref in st["written"]]
    if not written:
        raise AuditError("no written samples in the owner state")
    pick = sorted(random.Random(seed).sample(written, min(samples, len(written))))
    from ..decode import make_decoder

    dec = make_decoder(job.get("decoder", "dali"), scheme.size, job["resize"], 1, 1, "cpu")
    ext = job["format"]["ext"]
    rows, grid = [], []
    by_shard: dict[str, set] = {}
    for shard, key, _ in pick:
        by_shard.setdefault(shard, set()).add(key)
    stored = {}
    for shard, keys in by_shard.items():
        for k, mem in iter_samples(os.path.join(out, shard)):
            if k in keys:
                stored[k] = decode_image(mem[ext], ext)
    for shard, key, ref in pick:
        src = os.path.join(plain_root, ref)
        if not os.path.isfile(src):
            raise AuditError(f"the plain source of a sample is missing under --plain: {ref}")
        (imgs, bad), = list(dec.run([[open(src, "rb").read()]]))
        if bad:
            raise AuditError(f"{ref}: {bad[0]}")
        plain = np.asarray(imgs[0])
        enc = stored[key]
        row = {"key": key}
        panels = [plain, enc if scheme.kind == "rs" else np.repeat(np.repeat(enc, 2, 0), 2, 1)]
        if scheme.kind == "rs":
            truth = true_layout(enc, plain, scheme.patch)
            layout = solve(cut(enc, scheme.patch), scheme.grid)
            recon = assemble(cut(enc, scheme.patch), layout)
            row.update(direct_accuracy=direct_accuracy(layout, truth),
                       neighbour_accuracy=neighbour_accuracy(layout, truth), **image_quality(recon, plain))
            panels.append(recon)
        else:
            naive, ls = naive_inverse(enc, scheme.patch), ls_inverse(enc, scheme.patch)
            base = downsampled_baseline(plain)
            for name, img in (("naive", naive), ("ls", ls), ("baseline_2x_down_up", base)):
                q = image_quality(img, plain)
                row[f"{name}_psnr"], row[f"{name}_ssim"] = q["psnr"], q["ssim"]
            panels += [naive, ls]
        rows.append(row)
        grid.append(panels)
    metrics = [k for k in rows[0] if k != "key"]
    # a perfect reconstruction has infinite PSNR: the mean caps it at 100 dB, and says how many there were
    mean = {k: float(np.mean([min(r[k], PSNR_CAP) if k.endswith("psnr") else r[k] for r in rows])) for k in metrics}
    if scheme.kind == "rs":
        mean["exact_reconstructions"] = float(np.mean([r["psnr"] == float("inf") for r in rows]))
    report = {"out": os.path.abspath(out), "scheme": scheme.to_dict(), "format": job["format"],
              "samples": len(rows), "mean": mean, "images": rows,
              "attacks": (["jigsaw (MGC compatibility + greedy placement)"] if scheme.kind == "rs"
                          else ["naive inverse", "regularised least squares"])}
    rd = Path(report_dir)
    rd.mkdir(parents=True, exist_ok=True)
    (rd / "report.json").write_text(json.dumps(report, indent=1))
    (rd / "report.md").write_text(markdown(report))
    _grid(grid, rd / "grid.png")
    return report


def markdown(report: dict) -> str:
    s = report["scheme"]
    lines = [f"# Privacy audit: {s['kind']} P={s['patch']} {s['height']}x{s['width']}, "
             f"{report['format']['name']}, {report['samples']} images", "",
             "Attacks: " + "; ".join(report["attacks"]) + ".", "",
             f"PSNR in dB, capped at {PSNR_CAP:.0f} for exact reconstructions.", "", "| figure | mean |", "|---|---|"]
    for k, v in report["mean"].items():
        lines.append(f"| {k} | {v:.4f} |")
    lines += ["", "Columns of grid.png: original | encrypted | "
              + ("jigsaw reconstruction" if s["kind"] == "rs" else "naive inverse | least-squares inverse"), ""]
    return "\n".join(lines)


def _grid(rows: list[list[np.ndarray]], path: Path, cap: int = 8) -> None:
    gap = 4
    lines = []
    for panels in rows[:cap]:
        h = panels[0].shape[0]
        parts = []
        for p in panels:
            parts += [p[:h], np.full((h, gap, 3), 255, np.uint8)]
        lines += [np.concatenate(parts[:-1], axis=1), np.full((gap, sum(x.shape[1] for x in parts[:-1]), 3), 255,
                                                             np.uint8)]
    Image.fromarray(np.concatenate(lines[:-1], axis=0)).save(path)
