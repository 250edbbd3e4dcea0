"""The sample the study measures on: listed from SRC, drawn per class, refused when too small, written as links."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from .settings import VAL_SHARE, TradeoffError

# The refusal rule (the package docstring), read by check_sample at each call (tests raise it here).
HALF_WIDTH_Z = 0.98      # 1.96 * sqrt(0.5 * 0.5): the 95% half-width of a proportion at its widest, times sqrt(n)
MAX_HALF_WIDTH = 0.10    # -> n_val >= (0.98 / 0.10)^2 = 96.04, so at least 97 validation images
MIN_TRAIN_PER_CLASS = 10
MIN_VAL_PER_CLASS = 2


def half_width(n_val: int) -> float:
    """The widest 95% half-width of a top-1 estimate on ``n_val`` images: 0.98 / sqrt(n_val)."""
    return HALF_WIDTH_Z / math.sqrt(n_val) if n_val > 0 else float("inf")



def list_classes(src: str | os.PathLike) -> dict[str, list[Path]]:
    """{class: sorted image files} of an ImageNet-style folder, read by the source reader encrypt-shards uses
    (:func:`himr_pipe.sources.open_source`), so the sample holds exactly the inputs a run would take
    (files it would skip, such as non-image extensions, are left out)."""
    from ..sources import File, SourceError, open_source

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


def _apportion(sizes, samples: int):
    """Each class's share of ``samples`` in proportion to its size (largest remainders), classes in order."""
    import numpy as np

    sizes = np.asarray(sizes)
    quota = samples * sizes / int(sizes.sum())
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: samples - int(take.sum())]:
        take[i] += 1
    return take


def _val_of(k: int, val_share: float) -> int:
    """The validation images of a class drawn ``k`` times: its share, rounded per class."""
    return int(round(k * val_share))


def _why_small(takes, val_share: float) -> str | None:
    """Why a draw of ``takes`` images per class is refused (the rule of this module, read at each call), or None."""
    import numpy as np

    takes = np.asarray(takes)
    vals = np.round(takes * val_share).astype(int)  # as _val_of: half to even, like round()
    if half_width(int(vals.sum())) > MAX_HALF_WIDTH:
        return "half-width"
    if ((takes - vals) < MIN_TRAIN_PER_CLASS).any() or (vals < MIN_VAL_PER_CLASS).any():
        return "class"
    return None


def smallest_samples(sizes, val_share: float = VAL_SHARE) -> int | None:
    """The smallest ``--samples`` whose draw from classes of these sizes passes :func:`check_sample` (None: even
    all of them do not). The validation images are counted as the draw makes them: each class's share rounded
    on its own, so a sample needs more than ``97 / val_share`` where the rounding takes some away."""
    sizes = [int(x) for x in sizes if x]
    total, need = sum(sizes), math.ceil((HALF_WIDTH_Z / MAX_HALF_WIDTH) ** 2)
    if not sizes:
        return None
    # nothing below these bounds can pass: n_val <= samples * val_share + classes / 2, and the smallest class
    # (drawn about samples * its size / total, at most one more) needs the least draw that holds both minimums
    least_k = next(k for k in range(1, 10 ** 6) if k - _val_of(k, val_share) >= MIN_TRAIN_PER_CLASS
                   and _val_of(k, val_share) >= MIN_VAL_PER_CLASS)
    start = max(1, math.floor((need - len(sizes) / 2) / val_share), (least_k - 1) * total // min(sizes))
    for n in range(start, total + 1):
        if _why_small(_apportion(sizes, n), val_share) is None:
            return n
    return None


def draw_sample(by_class: dict[str, list[Path]], samples: int, seed: int = 0, val_share: float = VAL_SHARE,
                classes: int | None = None) -> dict[str, dict[str, list[Path]]]:
    """``samples`` files stratified by class, split into {"train": {cls: files}, "val": {cls: files}}.

    Each class gets its share of ``samples`` in proportion to its size (largest remainders), its files
    drawn at random and a ``val_share`` of them held out. ``classes``: keep only that many classes, drawn
    at random (for sets with many classes). Deterministic for ``seed``.
    """
    import numpy as np  # here, not at the top: the CLI imports this package for the request's defaults

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
    take = _apportion(sizes, samples)
    out: dict[str, dict[str, list[Path]]] = {"train": {}, "val": {}}
    for c, k in zip(names, take):
        files = by_class[c]
        picked = [files[i] for i in sorted(rng.choice(len(files), size=int(k), replace=False))]
        order = rng.permutation(len(picked))
        n_val = _val_of(k, val_share)
        out["val"][c] = sorted(picked[i] for i in order[:n_val])
        out["train"][c] = sorted(picked[i] for i in order[n_val:])
    return out


def check_sample(split: dict, val_share: float = VAL_SHARE, sizes=None) -> dict:
    """Refuse (:class:`TradeoffError`) a sample too small to tell two settings apart (the package docstring);
    else the rule applied, for the report. The rule is this module's, read at each call (tests raise it here).
    ``sizes``: the sizes of the classes drawn from (in the split's order), so that the refusal names the
    smallest ``--samples`` that passes for them."""
    max_half_width, min_train, min_val = MAX_HALF_WIDTH, MIN_TRAIN_PER_CLASS, MIN_VAL_PER_CLASS
    n_val = sum(len(v) for v in split["val"].values())
    hw = half_width(n_val)
    least = None if sizes is None else smallest_samples(sizes, val_share)
    give = ("; no --samples passes with these classes (too few images)" if sizes is not None and least is None
            else f"; --samples {least} is the smallest that passes for these classes" if least is not None else "")
    if hw > max_half_width:
        need = math.ceil((HALF_WIDTH_Z / max_half_width) ** 2)
        raise TradeoffError(
            f"the sample is too small to tell two settings apart: {n_val} validation images give a top-1 "
            f"estimate a 95% half-width of up to 0.98/sqrt({n_val}) = {hw:.3f}, above {max_half_width:g}; "
            f"it needs at least {need} validation images, each class's share {val_share:g} of its draw rounded "
            f"on its own (so --samples of at least {math.ceil(need / val_share)}, and more where the rounding "
            f"takes some away){give}")
    small = [c for c in split["train"] if len(split["train"][c]) < min_train or len(split["val"][c]) < min_val]
    if small:
        c = small[0]
        raise TradeoffError(
            f"{len(small)} class(es) have too few images in the sample to be learnt and measured (every class needs "
            f"at least {min_train} training and {min_val} validation images), e.g. {c!r}: "
            f"{len(split['train'][c])} train, {len(split['val'][c])} val; give more --samples, or fewer classes "
            f"with --classes{give}")
    return {"max_half_width": max_half_width, "half_width": "0.98 / sqrt(n_val)", "min_train_per_class": min_train,
            "min_val_per_class": min_val, "val_share": val_share}


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

