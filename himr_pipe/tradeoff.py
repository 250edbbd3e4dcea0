"""``himr-pipe tradeoff``: what each privacy setting leaks and costs, measured on the owner's own data.

The leak of a setting and its cost in accuracy both depend on the data: on
digits every bit of information sits in 1-pixel seams (a gap destroys it),
on photos the patches carry texture and edges of their own. So the owner
measures both on a labelled sample of their own images, with the product's
own code paths, before encrypting the whole set:

1. **Sample**: ``samples`` images of SRC (an ImageNet-style folder), drawn
   per class in proportion to the class sizes (stratified), deterministic
   for ``seed``, split into train and validation (``val_share``). The sample
   is a folder of links in the work directory, never inside SRC.
2. **Encrypt** each candidate setting with ``himr-pipe encrypt-shards``
   itself (``--seed``, ``--no-audit``, the user's ``--format``; train with
   ``seed``, validation with ``seed + 1``).
3. **Attack** the stored validation shards with the product's audit
   (:func:`himr_pipe.audit.report.audit_out`): neighbour and direct accuracy
   of the strongest attack we have, and whether the leak budget is met.
   These are *lower bounds* on the leak: a stronger attack may recover more.
4. **Train** the same small model with the same budget on every setting
   (:data:`RECIPE`, through :func:`himr_pipe.train.trainer.train`, on a GPU
   where there is one), ``seeds`` training seeds each, and report held-out
   top-1, its spread over seeds and the cost against ``none``.
5. **Recommend** the setting that meets the leak budget at the smallest
   cost. ``none`` is never recommended; if no setting meets the budget, say so.

The sample must be large enough for the table to mean something, and the
command refuses (a usage error) before any work when it is not:

* the 95% half-width of a top-1 estimate on ``n_val`` validation images is
  at most ``1.96 * sqrt(p (1 - p) / n_val) <= 0.98 / sqrt(n_val)`` (worst
  case p = 0.5). It must be at most :data:`MAX_HALF_WIDTH` (0.10, so
  ``n_val >= 97``); even then two settings closer than about 1.4 times the
  half-width cannot be told apart, which the table says;
* every class needs :data:`MIN_TRAIN_PER_CLASS` training and
  :data:`MIN_VAL_PER_CLASS` validation images in the sample (a class with
  fewer is not learnt, or not measured, by a small model).

With ``--work DIR`` everything is kept, and a rerun into the same folder (after a crash, or with more
``--seeds``) reuses the shards and every finished training and attack (``DIR/results.json``).

The same code runs the benchmark (``benchmarks/bench_tradeoff.py``) on the
shapes proxy (:func:`himr_pipe.sample_data.make_shapes_classification`) and
on digits.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .scheme import Scheme, SchemeError

# The refusal rule (module docstring).
HALF_WIDTH_Z = 0.98      # 1.96 * sqrt(0.5 * 0.5): the 95% half-width of a proportion at its widest, times sqrt(n)
MAX_HALF_WIDTH = 0.10    # -> n_val >= (0.98 / 0.10)^2 = 96.04, so at least 97 validation images
MIN_TRAIN_PER_CLASS = 10
MIN_VAL_PER_CLASS = 2
VAL_SHARE = 0.2
AUDIT_SAMPLES = 16       # validation images attacked per setting
CLOSE = 0.05             # settings whose mean top-1 are within this get ``close_seeds`` training seeds


class TradeoffError(ValueError):
    """The request cannot give a meaningful table (refused before any work)."""


@dataclass(frozen=True)
class Candidate:
    """One setting the owner may choose: a scheme, a gap, a patch size as a multiple of the user's P, and the
    flip defence."""

    label: str
    scheme: str
    gap: int = 0
    patch_factor: int = 1
    flip: bool = False

    def scheme_at(self, size: tuple[int, int], patch: int) -> Scheme:
        """The :class:`Scheme` at the user's size and patch (raises :class:`SchemeError` where it does not fit)."""
        return Scheme.named(self.scheme, patch * self.patch_factor, size[0], size[1], self.gap, flip=self.flip)


# The one list of candidate settings (the product default, mi-shuffle at P, is among them).
CANDIDATES: list[Candidate] = [
    Candidate("none", "none"),
    Candidate("rs", "rs"),
    Candidate("rs gap 1", "rs", 1),
    Candidate("rs gap 2", "rs", 2),
    Candidate("mi-shuffle", "mi-shuffle"),
    Candidate("mi-shuffle gap 1", "mi-shuffle", 1),
    Candidate("mi-shuffle 2P", "mi-shuffle", 0, 2),
    Candidate("mi-shuffle 2P gap 1", "mi-shuffle", 1, 2),
    Candidate("rs flip", "rs", flip=True),
    Candidate("rs gap 1 flip", "rs", 1, flip=True),
    Candidate("mi-shuffle flip", "mi-shuffle", flip=True),
    Candidate("mi-shuffle gap 1 flip", "mi-shuffle", 1, flip=True),
]


@dataclass(frozen=True)
class Recipe:
    """The small model and its budget, the same for every setting.

    A tiny ViT (PEViT + RPE for rs, MI-ViT + RPE for mi-shuffle, ViT for none: what ``himr-pipe train`` builds)
    trained from scratch, sized to run in a few minutes per setting on one CPU core for a few thousand
    images at 128 px. DeiT's default lr (5e-4 x batch / 512 = 6e-5 at batch 64) leaves such a model at chance
    on a few thousand images; so does 2e-3 (bench_digits' lr) on the shapes proxy in a first trial, while
    1e-3 with a 2-epoch warm-up and no drop-path learns it steadily (``none`` about 0.9 after 12 epochs).
    No augmentation: at this budget it cost every scheme accuracy on digits (bench_digits).
    """

    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    warmup_epochs: float = 2
    weight_decay: float = 0.05
    drop_path: float = 0.0
    label_smoothing: float = 0.1
    augment: bool = False
    epochs: int = 15

    def describe(self) -> str:
        return (f"ViT width {self.embed_dim}, depth {self.depth}, {self.num_heads} heads (RPE for the shuffled "
                f"schemes); batch {self.batch_size}, lr {self.lr:g}, warm-up {self.warmup_epochs:g}, weight decay "
                f"{self.weight_decay:g}, drop-path {self.drop_path:g}, label smoothing {self.label_smoothing:g}, "
                f"augmentation {'on' if self.augment else 'off'}, {self.epochs} epochs")


RECIPE = Recipe()


def _norm(label: str) -> str:
    return re.sub(r"[\s+\-_]", "", label.lower())


def pick_settings(text: str | list[str] | None) -> list[Candidate]:
    """The candidates named by label (a comma list or a list; spaces, '+', '-' ignored), in CANDIDATES order."""
    if not text:
        return list(CANDIDATES)
    names = text.split(",") if isinstance(text, str) else list(text)
    by = {_norm(c.label): c for c in CANDIDATES}
    want = [_norm(t) for t in names if t.strip()]
    bad = [t for t, w in zip([n for n in names if n.strip()], want) if w not in by]
    if bad:
        raise TradeoffError(f"unknown setting(s) {bad}; choose from: " + ", ".join(repr(c.label) for c in CANDIDATES))
    return [c for c in CANDIDATES if _norm(c.label) in want]


def half_width(n_val: int) -> float:
    """The widest 95% half-width of a top-1 estimate on ``n_val`` images: 0.98 / sqrt(n_val)."""
    return HALF_WIDTH_Z / math.sqrt(n_val) if n_val > 0 else float("inf")


# -- the sample ---------------------------------------------------------------------------------------

def list_classes(src: str | os.PathLike) -> dict[str, list[Path]]:
    """{class: sorted image files} of an ImageNet-style folder, read by the source reader encrypt-shards uses
    (:func:`himr_pipe.sources.open_source`), so the sample holds exactly the inputs a run would take
    (files it would skip, such as non-image extensions, are left out)."""
    from .sources import File, SourceError, open_source

    try:
        source = open_source(str(src))
    except SourceError as e:
        raise TradeoffError(str(e)) from None
    if source.kind != "folder" or any(i.loc is not None and not isinstance(i.loc, File) for i in source.inputs):
        raise TradeoffError(f"SRC must be a local ImageNet-style folder (class sub-folders), got a "
                            f"{'remote ' if source.kind == 'folder' else ''}{source.kind} source")
    out: dict[str, list[Path]] = {c: [] for c in source.classes}
    for inp in source.inputs:
        if inp.skip is None and inp.label >= 0:
            out[source.classes[inp.label]].append(Path(inp.loc.path))
    return out


def draw_sample(by_class: dict[str, list[Path]], samples: int, seed: int = 0, val_share: float = VAL_SHARE,
                classes: int | None = None) -> dict[str, dict[str, list[Path]]]:
    """``samples`` files stratified by class, split into {"train": {cls: files}, "val": {cls: files}}.

    Each class gets its share of ``samples`` in proportion to its size (largest remainders), its files
    drawn at random and a ``val_share`` of them held out. ``classes``: keep only that many classes, drawn
    at random (for sets with many classes). Deterministic for ``seed``.
    """
    rng = np.random.default_rng(seed)
    names = sorted(c for c, f in by_class.items() if f)
    if classes is not None:
        if not 1 <= classes <= len(names):
            raise TradeoffError(f"--classes must be between 1 and the {len(names)} non-empty classes of SRC")
        names = sorted(rng.choice(names, size=classes, replace=False).tolist())
    sizes = np.array([len(by_class[c]) for c in names])
    total = int(sizes.sum())
    if samples < 1 or samples > total:
        raise TradeoffError(f"--samples must be between 1 and the {total} images of the classes sampled, got {samples}")
    quota = samples * sizes / total
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: samples - int(take.sum())]:
        take[i] += 1
    out: dict[str, dict[str, list[Path]]] = {"train": {}, "val": {}}
    for c, k in zip(names, take):
        files = by_class[c]
        picked = [files[i] for i in sorted(rng.choice(len(files), size=int(k), replace=False))]
        order = rng.permutation(len(picked))
        n_val = int(round(k * val_share))
        out["val"][c] = sorted(picked[i] for i in order[:n_val])
        out["train"][c] = sorted(picked[i] for i in order[n_val:])
    return out


def check_sample(split: dict, max_half_width: float = MAX_HALF_WIDTH, val_share: float = VAL_SHARE,
                 min_train: int = MIN_TRAIN_PER_CLASS, min_val: int = MIN_VAL_PER_CLASS) -> None:
    """Refuse (:class:`TradeoffError`) a sample too small to tell two settings apart (module docstring)."""
    n_val = sum(len(v) for v in split["val"].values())
    hw = half_width(n_val)
    if hw > max_half_width:
        need = math.ceil((HALF_WIDTH_Z / max_half_width) ** 2)
        raise TradeoffError(
            f"the sample is too small to tell two settings apart: {n_val} validation images give a top-1 "
            f"estimate a 95% half-width of up to 0.98/sqrt({n_val}) = {hw:.3f}, above {max_half_width:g}; "
            f"it needs at least {need} validation images (--samples about {math.ceil(need / val_share)} "
            f"at a validation share of {val_share:g})")
    small = [c for c in split["train"] if len(split["train"][c]) < min_train or len(split["val"][c]) < min_val]
    if small:
        c = small[0]
        raise TradeoffError(
            f"{len(small)} class(es) have too few images in the sample to be learnt and measured (every class needs "
            f"at least {min_train} training and {min_val} validation images), e.g. {c!r}: "
            f"{len(split['train'][c])} train, {len(split['val'][c])} val; give more --samples, or fewer classes "
            f"with --classes")


def write_sample(split: dict, dest: Path) -> dict:
    """The sample as ImageNet-style folders ``dest/train`` and ``dest/val`` of links to the source files
    (copies where links are not possible). Returns counts."""
    counts = {}
    for part, by_class in split.items():
        n = 0
        for c, files in by_class.items():
            d = dest / part / c
            d.mkdir(parents=True, exist_ok=True)
            for i, f in enumerate(files):
                link = d / f"{i:06d}_{f.name}"
                try:
                    os.symlink(os.path.realpath(f), link)
                except OSError:
                    shutil.copyfile(f, link)
                n += 1
        counts[part] = n
    counts["classes"] = len(split["train"])
    return counts


# -- one setting ----------------------------------------------------------------------------------

def encrypt(src: Path, out: Path, scheme: Scheme, fmt: str, quality: int, seed: int) -> dict:
    """Encrypt ``src`` into ``out`` as ``himr-pipe encrypt-shards`` does (the same request, resolved by
    :class:`~.request.EncryptRequest`, in this process); its manifest.

    The owner state goes next to ``out`` (``out.state``). Exit 3 (some inputs skipped, each with its reason
    in the manifest) is accepted: the table is then measured on the inputs that were written.
    """
    from .pipeline import encrypt_shards
    from .request import EncryptRequest

    req = EncryptRequest(scheme=scheme.name, patch=scheme.patch, size=f"{scheme.height}x{scheme.width}",
                         gap=scheme.gap, drop=scheme.drop, flip=scheme.flip, fmt=fmt, quality=quality, seed=seed,
                         workers=0, progress=False, audit=False, state_dir=str(out) + ".state")
    cfg, opts = req.build(str(src))
    res = encrypt_shards(str(src), str(out), cfg, seed, opts)
    if res.exit_code not in (0, 3) or res.manifest is None:
        raise RuntimeError(f"encrypt-shards exited {res.exit_code}: " + "; ".join(res.messages))
    return res.manifest


def leak(out: Path, samples: int) -> dict:
    """The audit's figures on the stored shards of ``out`` (lower bounds on the leak)."""
    from .audit.report import audit_out

    t = time.perf_counter()
    report, _ = audit_out(str(out), samples, str(out) + ".state", seed=0)
    return {"attack": report["attack"], "samples": report["samples"], "mean": report["mean"],
            "meets_budget": report["meets_budget"], "over_budget": report["over_budget"],
            "seconds": time.perf_counter() - t}


def train_one(train_out: Path, val_out: Path, run: Path, recipe: Recipe, seed: int, device: str = "auto",
              init: str | None = None) -> dict:
    """Train the recipe's model on ``train_out``; held-out top-1 on ``val_out`` after the last epoch. ``init``:
    a checkpoint to start from (``himr-pipe train --init``)."""
    from .train.trainer import TrainConfig, train

    cfg = TrainConfig(shards=str(train_out), val=str(val_out), out=str(run), embed_dim=recipe.embed_dim,
                      depth=recipe.depth, num_heads=recipe.num_heads, rpe=True, epochs=recipe.epochs,
                      batch_size=recipe.batch_size, lr=recipe.lr, warmup_epochs=recipe.warmup_epochs,
                      weight_decay=recipe.weight_decay, drop_path=recipe.drop_path,
                      label_smoothing=recipe.label_smoothing, augment=recipe.augment, workers=0, seed=seed,
                      device=device, log_interval=0, eval_every=recipe.epochs, init=init)
    t = time.perf_counter()
    res = train(cfg, log=lambda s: None)
    h = res["history"]
    return {"seed": seed, "val_top1": h[-1]["val_top1"], "train_loss": h[-1]["train_loss"],
            "seconds": time.perf_counter() - t}


def refusal(cand: Candidate, size: tuple[int, int], patch: int, fmt: str, quality: int) -> str | None:
    """Why the product refuses this setting at this geometry and format, or None."""
    from .encode import FormatError, choose_format

    try:
        choose_format(fmt, cand.scheme_at(size, patch), quality)
    except (SchemeError, FormatError) as e:
        return str(e)
    return None


# -- the time estimate --------------------------------------------------------------------------------

def _time_steps(scheme: Scheme, num_classes: int, recipe: Recipe, device: str, steps: int = 3) -> float:
    """Seconds per training step of the recipe's model for ``scheme`` (forward, backward, AdamW) on a
    random batch, after one warm-up step."""
    import torch

    from .train.models import build_model

    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    model = build_model(scheme, num_classes, size="tiny", rpe=True, drop_path_rate=recipe.drop_path,
                        embed_dim=recipe.embed_dim, depth=recipe.depth, num_heads=recipe.num_heads).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr)
    h, w = scheme.out_size
    x = torch.randn(recipe.batch_size, 3, h, w, device=dev)
    y = torch.randint(0, num_classes, (recipe.batch_size,), device=dev)
    t = 0.0
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:
            t += time.perf_counter() - t0
    return t / steps


def estimate(plan: list[tuple[Candidate, Scheme]], sample_dir: Path, probe_dir: Path, counts: dict, recipe: Recipe,
             seeds: int, audit_samples: int, fmt: str, quality: int, seed: int, device: str) -> tuple[float, str]:
    """(seconds, how): the whole run's time, from a probe.

    The probe encrypts up to 64 training images with the first encrypted setting (twice, timing the second:
    the first pays for imports), attacks 2 of them, and times 3 training steps of each setting's model; the
    rest is scaled by image, sample and step counts (the loader's decode is not in it).
    """
    enc = [s for _, s in plan if s.definition.encrypts]
    probe_scheme = enc[0] if enc else plan[0][1]
    src = probe_dir / "src"
    n = 0
    for cdir in sorted((sample_dir / "train").iterdir()):
        if n >= 64:
            break
        (src / cdir.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cdir.iterdir())[: max(1, 64 // counts["classes"])]:
            os.symlink(os.path.realpath(f), src / cdir.name / f.name)
            n += 1
    encrypt(src, probe_dir / "out", probe_scheme, fmt, quality, seed)  # the first run also pays for imports
    t = time.perf_counter()
    encrypt(src, probe_dir / "out2", probe_scheme, fmt, quality, seed)
    t_probe = time.perf_counter() - t
    per_image = t_probe / n
    per_audit = 0.0
    if enc:
        per_audit = leak(probe_dir / "out", 2)["seconds"] / 2
    steps_per_epoch = max(1, counts["train"] // recipe.batch_size)
    step_time: dict = {}
    total = 0.0
    for _, s in plan:
        geo = (s.name, s.patch)  # the model (family and grid) a step times
        if geo not in step_time:
            step_time[geo] = _time_steps(s, counts["classes"], recipe, device)
        train_s = step_time[geo] * steps_per_epoch * recipe.epochs
        eval_s = step_time[geo] / 3 * counts["val"] / recipe.batch_size
        # a run's fixed cost (start-up, manifest) is in the probe's time: no split is encrypted faster than it
        enc_s = max(t_probe, per_image * counts["train"]) + max(t_probe, per_image * counts["val"])
        total += enc_s + seeds * (train_s + eval_s)
        if s.definition.encrypts:
            total += per_audit * audit_samples
    how = (f"probe: encrypt {per_image * 1000:.1f} ms/image, attack {per_audit:.1f} s/image "
           f"({probe_scheme.describe()}), training step {min(step_time.values()):.3f}-{max(step_time.values()):.3f} s "
           f"x {steps_per_epoch} steps x {recipe.epochs} epochs x {seeds} seed(s)")
    return total, how


# -- the run ------------------------------------------------------------------------------------------

def _inside(a: Path, b: Path) -> bool:
    """Is ``a`` the folder ``b`` or inside it (after resolving links)?"""
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def run_tradeoff(src: str | os.PathLike, samples: int, size: tuple[int, int] = (224, 224), patch: int = 16,
                 recipe: Recipe = RECIPE, fmt: str = "jpeg", quality: int = 90, seed: int = 0, seeds: int = 1,
                 close_seeds: int | None = None, settings: list[Candidate] | None = None,
                 work: str | os.PathLike | None = None, report: str | os.PathLike | None = None,
                 audit_samples: int = AUDIT_SAMPLES, val_share: float = VAL_SHARE, classes: int | None = None,
                 device: str = "auto", progress: bool = True,
                 log=print) -> dict:
    """Measure every setting on a sample of ``src``; return the whole result (see :func:`format_table`).

    ``seeds`` training seeds per setting (``seed``, ``seed + 1``, ...); ``close_seeds``: then give every
    setting whose mean top-1 is within :data:`CLOSE` of another's this many seeds in all (None: no extra
    seeds). ``work``: kept when given (a rerun into it reuses shards, trainings and attacks), else a temporary
    folder removed at the end. ``report``: a folder
    for report.json, report.md and grid.png. Raises :class:`TradeoffError` before any work when the
    request cannot give a meaningful table.
    """
    from tqdm import tqdm

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
    settings = list(CANDIDATES) if settings is None else list(settings)
    if not settings:
        raise TradeoffError("no settings to measure")
    split = draw_sample(list_classes(src), samples, seed, val_share, classes)
    max_half_width = MAX_HALF_WIDTH  # the module's rule, read at each call (not bound as a default at import)
    check_sample(split, max_half_width, val_share)
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
    if not plan:
        raise TradeoffError("the product refuses every setting asked for at this size, patch and format: "
                            + "; ".join(f"{r['label']}: {r['reason']}" for r in rows))

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
        log(f"estimated time: {_duration(est)} for {len(plan)} setting(s) ({how})")
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
                    say(_row_line(row))
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
                            say(_row_line(row))
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
               "rule": {"max_half_width": max_half_width, "half_width": "0.98 / sqrt(n_val)",
                        "min_train_per_class": MIN_TRAIN_PER_CLASS, "min_val_per_class": MIN_VAL_PER_CLASS,
                        "val_share": val_share, "audit_samples": audit_samples,
                        "budget": "the audit's leak budget (himr_pipe.audit.attack.BUDGET)"},
               "rows": rows, "estimate_seconds": est, "total_seconds": time.perf_counter() - t0}
        res["recommendation"] = recommend(res)
        if report is not None:
            write_report(res, Path(report), outs)
        return res
    finally:
        if tmp:
            shutil.rmtree(work, ignore_errors=True)


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
        from .atomic import atomic_write

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
    base = next((r for r in rows if r["label"] == "none" and r["status"] == "ok"), None)
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
        return {"label": None, "why": why + "; none is recommended (try a larger gap, a larger patch, or drop)"}
    best = max(ok, key=lambda r: r["top1_mean"])
    near = [r["label"] for r in ok if r is not best and best["top1_mean"] - r["top1_mean"] < 1.4 * res["half_width"]]
    why = (f"{best['label']} meets the leak budget at the smallest cost"
           + (f" ({best['cost_vs_none']:+.3f} top-1 against none)" if "cost_vs_none" in best else ""))
    if near:
        why += (f"; within the noise of this sample (1.4 x half-width {res['half_width']:.3f}): "
                + ", ".join(near))
    return {"label": best["label"], "setting": best["setting"], "why": why, "indistinguishable": near}


# -- output ---------------------------------------------------------------------------------------------

def default_setting() -> str:
    """The label of the candidate encrypt-shards uses when the user names no scheme and no defence."""
    from .scheme import DEFAULT_SCHEME
    from .scheme import default_flip, default_gap

    gap, flip = default_gap(DEFAULT_SCHEME), default_flip(DEFAULT_SCHEME)
    return next((c.label for c in CANDIDATES if c.scheme == DEFAULT_SCHEME and c.gap == gap and c.flip == flip
                 and c.patch_factor == 1), f"{DEFAULT_SCHEME}{f' gap {gap}' if gap else ''}{' flip' if flip else ''}")


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min"


def _row_line(row: dict) -> str:
    accs = ", ".join(f"{r['val_top1']:.3f}" for r in row["runs"])
    lk = row.get("leak")
    leak_s = ("not encrypted" if lk is None else "not measured (the attack failed)" if "error" in lk else
              f"neighbour {lk['mean']['neighbour_accuracy']:.3f}, direct {lk['mean']['direct_accuracy']:.3f}")
    return f"{row['label']}: top-1 {accs} (mean {row['top1_mean']:.3f}); leak {leak_s}"


def _leak_cell(r: dict) -> str:
    if r["status"] != "ok":
        return "-"
    if r.get("leak") is None:
        return "plain (not encrypted)"
    if "error" in r["leak"]:
        return "attack failed"
    m = r["leak"]["mean"]
    return f"{m['neighbour_accuracy']:.3f} / {m['direct_accuracy']:.3f}"


def _top1_cell(r: dict) -> str:
    if r["status"] == "n/a":
        return "n/a"
    if r["status"] != "ok":
        return "error"
    s = f"{r['top1_mean']:.3f}"
    if r["top1_std"] is not None:
        s += f" ± {r['top1_std']:.3f} ({len(r['runs'])} seeds)"
    return s


def table_rows(res: dict) -> list[list[str]]:
    head = ["setting", "leak neighbour / direct", "meets budget", "top-1", "cost vs none"]
    lines = [head]
    for r in res["rows"]:
        lk = r.get("leak")
        budget = ("-" if r["status"] != "ok" else "no (plain)" if lk is None else "unknown" if "error" in lk
                  else "yes" if lk["meets_budget"] else "no")
        cost = f"{r['cost_vs_none']:+.3f}" if "cost_vs_none" in r and r["label"] != "none" else "-"
        lines.append([r["label"] + (f" ({r['setting']})" if r.get("setting") else ""), _leak_cell(r), budget,
                      _top1_cell(r), cost])
    return lines


def notes(res: dict) -> list[str]:
    attacks: dict[str, list[str]] = {}
    for r in res["rows"]:
        if r["status"] == "ok" and r.get("leak") and "attack" in r["leak"]:
            attacks.setdefault(r["leak"]["attack"], []).append(r["label"])
    out = [f"{res['counts']['train']} train / {res['counts']['val']} val images, {res['counts']['classes']} classes, "
           f"{res['size'][0]}x{res['size'][1]}, {res['format']['name']}"
           + (f" q{res['format']['quality']}" if res["format"]["quality"] else "") + f", on {res['device']}; "
           f"top-1 95% half-width on this sample <= {res['half_width']:.3f} (differences below about "
           f"{1.4 * res['half_width']:.3f} are noise); spread: standard deviation over training seeds",
           f"model: {res['recipe_text']}",
           f"leak: the audit's attack on {res['rule']['audit_samples']} validation images of each setting; "
           "lower bounds: a stronger attack may recover more"]
    out += [f"attack on {', '.join(labels)}: {name}" for name, labels in attacks.items()]
    out.append(f"the product's default (encrypt-shards without --scheme / --gap / --flip): {default_setting()}")
    for r in res["rows"]:
        if r["status"] == "n/a":
            out.append(f"n/a: {r['label']}: {r['reason']}")
        elif r["status"] == "error":
            out.append(f"error: {r['label']}: {r['error']}")
        elif r.get("leak") and "error" in r["leak"]:
            out.append(f"attack failed: {r['label']}: {r['leak']['error']} (so it is not recommended)")
        elif r.get("leak") and not r["leak"]["meets_budget"]:
            out.append(f"over budget: {r['label']}: " + "; ".join(r["leak"]["over_budget"]))
    return out


def format_table(res: dict) -> str:
    """The table as aligned text, with its notes and the recommendation."""
    lines = table_rows(res)
    w = [max(len(l[i]) for l in lines) for i in range(len(lines[0]))]
    fmt = lambda l: " | ".join(c.ljust(w[i]) for i, c in enumerate(l))  # noqa: E731
    rec = res["recommendation"]
    return "\n".join([fmt(lines[0]), "-+-".join("-" * x for x in w)] + [fmt(l) for l in lines[1:]] + [""]
                     + notes(res) + ["", "recommendation: " + rec["why"]])


def markdown(res: dict) -> str:
    lines = table_rows(res)
    out = [f"# Privacy/accuracy trade-off on a sample of {res['src']}", "",
           "| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
    out += ["| " + " | ".join(l) + " |" for l in lines[1:]]
    out += [""] + [f"- {n}" for n in notes(res)]
    out += ["", f"**Recommendation:** {res['recommendation']['why']}.", "",
            "grid.png: one validation sample per setting, as stored (MI images are half size).", ""]
    return "\n".join(out)


def write_report(res: dict, dest: Path, outs: dict) -> None:
    """report.json (every figure), report.md (the table) and grid.png (one stored sample per setting)."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "report.json").write_text(json.dumps(res, indent=1))
    (dest / "report.md").write_text(markdown(res))
    _grid(res, outs, dest / "grid.png")


def _grid(res: dict, outs: dict, path: Path) -> None:
    from PIL import Image, ImageDraw

    from .shards import decode_image, iter_shard

    panels = []
    for r in res["rows"]:
        if r["label"] not in outs:
            continue
        val = outs[r["label"]][1]
        m = json.loads((val / "manifest.json").read_text())
        ext = m["job"]["format"]["ext"]
        _, mem = next(iter(iter_shard(str(val), m["shards"][0]["name"])))
        panels.append((r["label"], Image.fromarray(decode_image(mem[ext], ext))))
    if not panels:
        return
    label_w, pad = 150, 4
    h = max(p.height for _, p in panels)
    w = max(p.width for _, p in panels)
    canvas = Image.new("RGB", (label_w + w, len(panels) * (h + pad) - pad), "white")
    d = ImageDraw.Draw(canvas)
    for i, (label, p) in enumerate(panels):
        y = i * (h + pad)
        d.text((4, y + 4), label, fill="black")
        canvas.paste(p, (label_w, y))
    canvas.save(path)
