"""The trade-off study's settings: the candidate settings, the training recipe, the request and its defaults."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from ..errors import Refused
from ..scheme import Scheme, SchemeError

VAL_SHARE = 0.2
AUDIT_SAMPLES = 16       # validation images attacked per setting
CLOSE = 0.05             # settings whose mean top-1 are within this get ``close_seeds`` training seeds


class TradeoffError(Refused, ValueError):
    """The request cannot give a meaningful table (refused before any work: exit 2)."""


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


@dataclass(frozen=True, kw_only=True)
class TradeoffRequest:
    """What ``himr-pipe tradeoff`` is asked, option for option; the command reads its defaults here.

    ``src`` and ``samples`` are required (SRC and ``--samples``). ``recipe`` and ``val_share`` are for
    callers only (the benchmarks): the command trains :data:`RECIPE`, with ``epochs`` replacing its epochs.
    """

    src: str | os.PathLike
    samples: int
    size: str = "224"                           # "N" or "HxW", before encryption
    patch: int = 16                             # P (the 2P settings use 2P)
    epochs: int | None = None                   # None: the recipe's
    fmt: str = "jpeg"                           # jpeg, png
    quality: int = 90
    seed: int = 0                               # the sample, the encryption seeds and the first training seed
    seeds: int = 1                              # training seeds per setting
    close_seeds: int | None = None              # None: no extra seeds for close settings
    settings: str | tuple[str, ...] | None = None   # labels of CANDIDATES (a comma list or labels); None: all
    classes: int | None = None                  # None: every class of SRC
    audit_samples: int = AUDIT_SAMPLES
    report: str | os.PathLike | None = None     # a folder for report.json, report.md and grid.png
    work: str | os.PathLike | None = None       # None: a temporary folder, removed at the end
    device: str = "auto"                        # training device: auto, cpu, cuda or cuda:N
    progress: bool | None = None                # None: on a terminal
    recipe: Recipe = RECIPE
    val_share: float = VAL_SHARE

    def trained(self) -> Recipe:
        """The recipe trained: :attr:`recipe` with :attr:`epochs` where given."""
        return self.recipe if self.epochs is None else replace(self.recipe, epochs=self.epochs)


def _norm(label: str) -> str:
    return re.sub(r"[\s+\-_]", "", label.lower())


def pick_settings(text: str | list[str] | tuple[str, ...] | None) -> list[Candidate]:
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


def refusal(cand: Candidate, size: tuple[int, int], patch: int, fmt: str, quality: int) -> str | None:
    """Why the product refuses this setting at this geometry and format, or None."""
    from ..encode import FormatError, choose_format

    try:
        choose_format(fmt, cand.scheme_at(size, patch), quality)
    except (SchemeError, FormatError) as e:
        return str(e)
    return None


def default_setting() -> str:
    """The label of the candidate encrypt-shards uses when the user names no scheme and no defence."""
    from ..scheme import DEFAULT_SCHEME
    from ..scheme import default_flip, default_gap

    gap, flip = default_gap(DEFAULT_SCHEME), default_flip(DEFAULT_SCHEME)
    return next((c.label for c in CANDIDATES if c.scheme == DEFAULT_SCHEME and c.gap == gap and c.flip == flip
                 and c.patch_factor == 1), f"{DEFAULT_SCHEME}{f' gap {gap}' if gap else ''}{' flip' if flip else ''}")

