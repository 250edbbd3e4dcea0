"""The study: every setting measured on one sample (resumable through the work folder), and the recommendation."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from ..scheme import Scheme
from .measure import encrypt, estimate, leak, train_one
from .report import duration, row_line, write_report
from .sample import check_sample, draw_sample, half_width, list_classes, write_sample
from .settings import CLOSE, VAL_SHARE, Recipe, TradeoffError, TradeoffRequest, pick_settings, refusal


def _inside(a: Path, b: Path) -> bool:
    """Is ``a`` the folder ``b`` or inside it (after resolving links)?"""
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def run_tradeoff(req: TradeoffRequest, *, log=print) -> dict:
    """Measure every setting of ``req`` on a sample of its SRC; return the whole result (see :func:`format_table`).

    ``req.seeds`` training seeds per setting (``seed``, ``seed + 1``, ...); ``req.close_seeds``: then give every
    setting whose mean top-1 is within :data:`CLOSE` of another's this many seeds in all (None: no extra
    seeds). ``req.work``: kept when given (a rerun into it reuses shards, trainings and attacks), else a
    temporary folder removed at the end. ``req.report``: a folder for report.json, report.md and grid.png.
    Raises :class:`TradeoffError` (or :class:`SchemeError` for the size) before any work when the request
    cannot give a meaningful table.
    """
    from tqdm import tqdm

    from ..request import device_unavailable, is_device
    from ..scheme import parse_size

    size, settings, recipe = parse_size(req.size), pick_settings(req.settings), req.trained()
    if req.device != "auto" and not is_device(req.device):
        raise TradeoffError(f"--device must be auto, cpu, cuda or cuda:N, got {req.device!r}")
    if req.device != "auto" and device_unavailable(req.device):
        raise TradeoffError(device_unavailable(req.device))
    src, samples, patch, fmt, quality, seed = Path(req.src), req.samples, req.patch, req.fmt, req.quality, req.seed
    seeds, close_seeds, classes, audit_samples = req.seeds, req.close_seeds, req.classes, req.audit_samples
    work, report, device, val_share = req.work, req.report, req.device, req.val_share
    progress = sys.stderr.isatty() if req.progress is None else req.progress
    src = Path(src)
    if not src.is_dir():
        raise TradeoffError(f"SRC {src} is not a folder")
    if seeds < 1 or (close_seeds is not None and close_seeds < seeds):
        raise TradeoffError("--seeds must be at least 1 (and close seeds at least --seeds)")
    if recipe.epochs < 1:
        raise TradeoffError("--epochs must be at least 1")
    if not 0 < val_share < 1:
        raise TradeoffError("the validation share must be between 0 and 1")
    if audit_samples < 1:
        raise TradeoffError("--audit-samples must be at least 1")
    if work is not None and _inside(Path(work), src):
        raise TradeoffError("--work must not be inside SRC (the sample, shards and keys go there)")
    if report is not None:
        if _inside(Path(report), src):
            raise TradeoffError("--report must not be inside SRC")
        if work is not None and (_inside(Path(report), Path(work)) or _inside(Path(work), Path(report))):
            raise TradeoffError("--report and --work must be apart (the work folder holds keys and is not a report)")
    if not settings:
        raise TradeoffError("no settings to measure")
    plan, rows = [], []
    for cand in settings:
        why = refusal(cand, size, patch, fmt, quality)
        row = {"label": cand.label, "candidate": asdict(cand)}
        if why:
            row.update(status="n/a", reason=why)
        else:
            s = cand.scheme_at(size, patch)
            row.update(status="pending", setting=s.describe(), scheme=s.to_dict(), runs=[])
            plan.append((cand, s))
        rows.append(row)
    cannot = _cannot_run(rows)
    at = f"at {size[0]}x{size[1]}, P={patch}, --format {fmt}"
    if cannot and (req.settings or not plan):  # asked for by name (or nothing left): refused, before any work
        raise TradeoffError(f"the product refuses {'every setting asked for' if not plan else 'setting(s)'} {at}: "
                            + "; ".join(f"{', '.join(labels)}: {why}" for why, labels in cannot.items())
                            + ("" if not plan else "; leave them out of --settings"))
    for why, labels in cannot.items():  # the default list: those that cannot run here are left out, one line each
        log(f"not measured {at}: {', '.join(labels)}: {why}")
    by_class = list_classes(src)
    split = draw_sample(by_class, samples, seed, val_share, classes)
    rule = check_sample(split, val_share, [len(by_class[c]) for c in split["train"]])

    tmp = work is None
    work = Path(tempfile.mkdtemp(prefix="himr-tradeoff-")) if tmp else Path(work)
    if tmp and _inside(work, src):
        shutil.rmtree(work, ignore_errors=True)
        raise TradeoffError("the temporary folder would be inside SRC; pass --work")
    t0 = time.perf_counter()
    try:
        work.mkdir(parents=True, exist_ok=True)
        sample_dir = work / (f"sample_s{seed}_n{samples}" + (f"_k{classes}" if classes else "")
                             + (f"_v{val_share:g}" if val_share != VAL_SHARE else ""))
        shutil.rmtree(sample_dir, ignore_errors=True)
        counts = write_sample(split, sample_dir)
        hw = half_width(counts["val"])
        log(f"sample: {counts['train']} train + {counts['val']} val images in {counts['classes']} classes "
            f"(top-1 95% half-width <= {hw:.3f}); work folder {work}")
        probe = work / "probe"
        shutil.rmtree(probe, ignore_errors=True)
        est, how = estimate(plan, sample_dir, probe, counts, recipe, seeds, audit_samples, fmt, quality, seed, device)
        shutil.rmtree(probe, ignore_errors=True)
        log(f"estimated time: {duration(est)} for {len(plan)} setting(s) ({how})")
        by_label = {r["label"]: r for r in rows}
        cache = _Cache(work)
        bar = tqdm(total=len(plan) * (2 + seeds), disable=not progress, desc="tradeoff", unit="step", file=sys.stderr)
        say = (lambda s: tqdm.write(s, file=sys.stderr)) if progress else log
        outs = {}
        try:
            for cand, s in plan:
                row = by_label[cand.label]
                tag = _tag(sample_dir.name, s, fmt, quality, seed)
                try:
                    bar.set_description(f"encrypt {cand.label}")
                    te = time.perf_counter()
                    for part, sd in (("train", seed), ("val", seed + 1)):
                        out = work / f"{tag}_{part}"
                        if not (out / "manifest.json").exists():
                            shutil.rmtree(out, ignore_errors=True)
                            shutil.rmtree(str(out) + ".state", ignore_errors=True)
                            m = encrypt(sample_dir / part, out, s, fmt, quality, sd)
                        else:
                            m = json.loads((out / "manifest.json").read_text())
                        row.setdefault("skipped", 0)
                        row["skipped"] += m["totals"]["skipped"]
                    outs[cand.label] = (work / f"{tag}_train", work / f"{tag}_val")
                    row["encrypt_seconds"] = time.perf_counter() - te
                    bar.update(1)
                    bar.set_description(f"attack {cand.label}")
                    row["leak"] = None
                    if s.definition.encrypts:
                        try:
                            key = f"leak:{tag}:{audit_samples}"
                            row["leak"] = cache.get(key) or leak(outs[cand.label][1], audit_samples)
                            cache.put(key, row["leak"])
                        except Exception as e:  # the accuracy is still worth having; the row is never recommended
                            row["leak"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
                            say(f"{cand.label}: the attack failed ({row['leak']['error']})")
                    bar.update(1)
                    row["status"] = "ok"
                    _train_seeds(row, outs[cand.label], work, tag, recipe, range(seed, seed + seeds), device, bar,
                                 cache)
                    say(row_line(row))
                except Exception as e:  # one broken setting must not lose the others
                    row.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
                    say(f"{cand.label}: ERROR {row['error']}")
            if close_seeds and close_seeds > seeds:
                todo = _close_rows(rows, close_seeds)
                while todo:
                    bar.total += sum(close_seeds - len(r["runs"]) for r in todo)
                    bar.refresh()
                    for row in todo:
                        cand = next(c for c, _ in plan if c.label == row["label"])
                        tag = _tag(sample_dir.name, cand.scheme_at(size, patch), fmt, quality, seed)
                        try:
                            _train_seeds(row, outs[row["label"]], work, tag, recipe,
                                         range(seed + len(row["runs"]), seed + close_seeds), device, bar, cache)
                            say(row_line(row))
                        except Exception as e:
                            row.update(status="error", error=f"{type(e).__name__}: {e}",
                                       traceback=traceback.format_exc())
                    todo = _close_rows(rows, close_seeds)
        finally:
            bar.close()
        _costs(rows)
        res = {"src": os.path.realpath(src), "samples": samples, "seed": seed, "seeds": seeds,
               "close_seeds": close_seeds, "close_within": CLOSE, "size": list(size), "patch": patch,
               "format": {"name": fmt, "quality": quality if fmt == "jpeg" else None},
               "counts": counts, "half_width": hw, "device": _device_name(device),
               "recipe": asdict(recipe), "recipe_text": recipe.describe(),
               "rule": {**rule, "audit_samples": audit_samples,
                        "budget": "the audit's leak budget (himr_pipe.audit.attack.BUDGET)"},
               "rows": rows, "estimate_seconds": est, "total_seconds": time.perf_counter() - t0}
        res["recommendation"] = recommend(res)
        if report is not None:
            write_report(res, Path(report), outs)
        return res
    finally:
        if tmp:
            shutil.rmtree(work, ignore_errors=True)


def _cannot_run(rows: list[dict]) -> dict[str, list[str]]:
    """{the product's reason: the labels it refuses} of the settings that cannot run, in order."""
    out: dict[str, list[str]] = {}
    for r in rows:
        if r["status"] == "n/a":
            out.setdefault(r["reason"], []).append(r["label"])
    return out


def _tag(sample: str, s: Scheme, fmt: str, quality: int, seed: int) -> str:
    """The name of a setting's shards in the work folder: the sample, the scheme, the format and the seed."""
    return (f"{sample}_{s.name}_p{s.patch}_g{s.gap}{'_flip' if s.flip else ''}_{s.height}x{s.width}_{fmt}"
            f"{quality if fmt == 'jpeg' else ''}_s{seed}")


class _Cache:
    """Finished trainings and attacks of a work folder (``results.json``), so that a rerun into the same
    ``--work`` (after a crash, or with more seeds) redoes only what is missing. Keyed by the shards' tag, the
    recipe and the seed (trainings) or the sample count (attacks); written after every item."""

    def __init__(self, work: Path):
        self.path = work / "results.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str):
        return self.data.get(key)

    def put(self, key: str, value) -> None:
        from ..atomic import atomic_write

        self.data[key] = value
        atomic_write(self.path, json.dumps(self.data).encode())


def _train_seeds(row: dict, outs: tuple[Path, Path], work: Path, tag: str, recipe: Recipe, seeds, device: str,
                 bar, cache: _Cache) -> None:
    for sd in seeds:
        bar.set_description(f"train {row['label']} seed {sd}")
        key = f"train:{tag}:{json.dumps(asdict(recipe), sort_keys=True)}:{sd}"
        r = cache.get(key)
        if r is None:
            run = work / f"run_{tag}_t{sd}"
            shutil.rmtree(run, ignore_errors=True)
            r = train_one(outs[0], outs[1], run, recipe, sd, device)
            shutil.rmtree(run, ignore_errors=True)  # checkpoints are not needed: the figure is the top-1
            cache.put(key, r)
        row["runs"].append(r)
        bar.update(1)
    _summarise(row)


def _summarise(row: dict) -> None:
    import numpy as np  # here, not at the top: the CLI imports this package for the request's defaults

    accs = [r["val_top1"] for r in row["runs"]]
    row["top1_mean"] = float(np.mean(accs))
    row["top1_std"] = float(np.std(accs, ddof=1)) if len(accs) > 1 else None
    row["top1_min"], row["top1_max"] = float(min(accs)), float(max(accs))


def _close_rows(rows: list[dict], want: int) -> list[dict]:
    """The measured rows with fewer than ``want`` seeds whose mean top-1 is within CLOSE of another row's."""
    ok = [r for r in rows if r["status"] == "ok" and r.get("runs")]
    return [r for r in ok if len(r["runs"]) < want
            and any(o is not r and abs(o["top1_mean"] - r["top1_mean"]) < CLOSE for o in ok)]


def _costs(rows: list[dict]) -> None:
    # the baseline is the measured setting whose scheme does not encrypt (its leak is None: never attacked)
    base = next((r for r in rows if r["status"] == "ok" and r["leak"] is None), None)
    for r in rows:
        if r["status"] == "ok" and base is not None:
            r["cost_vs_none"] = base["top1_mean"] - r["top1_mean"]


def _device_name(device: str) -> str:
    import torch

    if device == "auto":
        return f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return device


def recommend(res: dict) -> dict:
    """The setting within the leak budget at the smallest cost (highest mean top-1); never ``none``.

    Returns {"label", "why"} or {"label": None, "why"}. Settings within the noise of the pick (mean top-1
    within 1.4 half-widths, where two estimates of this size can no longer be told apart) are named too.
    """
    ok = [r for r in res["rows"] if r["status"] == "ok" and r.get("leak") and r["leak"].get("meets_budget")]
    if not ok:
        measured = [r for r in res["rows"] if r["status"] == "ok" and r.get("leak")]
        why = ("no setting measured here meets the leak budget" if measured else "no encrypted setting was measured")
        cannot = _cannot_run(res["rows"])
        if cannot:  # the advice fits the cause: settings the product refuses here were never measured
            return {"label": None, "why": why + "; none is recommended. Not measured, for the product refuses them "
                    "here: " + "; ".join(f"{', '.join(labels)} ({r})" for r, labels in cannot.items())}
        return {"label": None, "why": why + "; none is recommended (try a larger gap, a larger patch, or drop)"}
    best = max(ok, key=lambda r: r["top1_mean"])
    near = [r["label"] for r in ok if r is not best and best["top1_mean"] - r["top1_mean"] < 1.4 * res["half_width"]]
    why = (f"{best['label']} meets the leak budget at the smallest cost"
           + (f" ({best['cost_vs_none']:+.3f} top-1 against none)" if "cost_vs_none" in best else ""))
    if near:
        why += (f"; within the noise of this sample (1.4 x half-width {res['half_width']:.3f}): "
                + ", ".join(near))
    return {"label": best["label"], "setting": best["setting"], "why": why, "indistinguishable": near}


