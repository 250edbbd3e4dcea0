"""The parameter record of an encryption scheme.

Every part of himr-pipe (pipeline, kernels, encoders, manifest, models and
loaders) takes a :class:`Scheme`: kind, patch, size and defences. It is
immutable, validated on construction, and round-trips through the manifest
with :meth:`to_dict` / :meth:`from_dict` (those bytes are pinned). What a
kind *means* (its rules, geometry, kernels, inverse, audit, model family and
augmentation) is its definition in the registry :mod:`himr_pipe.schemes`,
``scheme.definition``: a new scheme is a module there, not a change here.

The built-in schemes (see docs/method.md):

* ``rs``   cut the HxW image into PxP patches and put them back in a fresh
           uniformly random order per image. Output is HxW.
* ``mi``   replace every PxP patch by the mean of its four (P/2)x(P/2)
           sub-patches. Output is (H/2)x(W/2); patch positions are kept, so
           the output grid has cells of (P/2)x(P/2).
* ``mi`` with ``shuffle=True`` ("mi-shuffle" on the command line): MI, then
           the (P/2)x(P/2) cells of the MI image are shuffled with a fresh
           permutation per image, as RS shuffles patches. Positions are gone
           (so no recognisable blurred picture) and MI's averaging has blurred
           the seams a jigsaw solver reads. For classification with an
           order-invariant model (MI patch embedding + RPE, no positions).
* ``none`` no encryption: the plain resized image (baseline and tests).

Every *shuffled* scheme (``rs``, ``mi`` with ``shuffle``) takes two defences
against jigsaw attacks (the paper's "interval" and patch dropping), applied
to the cells of the stored image (``out_cell``): ``gap`` blanks a border of
that many pixels inside every cell, so neighbouring seams carry nothing to
match; ``drop`` blanks a fraction of every image's cells (the first slots
after shuffling, which are a uniformly random subset of the image's cells).
Both keep the geometry, so models and loaders work unchanged; both cost
accuracy (benchmarks).

A third defence, ``flip`` (``--flip``), keeps every pixel: each stored cell
gets a keyed random orientation, one of the eight of the square's symmetry
group D4 (identity, the two flips, the transpose, the rotations), so a cell's
edge no longer tells which neighbour it met, nor along which of its four sides
(Gallagher's "type 2" puzzle, with mirror images as well). The order-invariant
models are made exactly invariant to it by a patch embedding symmetrised over
the group (``train/models.py``), and the attack searches the eight
orientations of every piece. The orientations come from the same keyed stream
as the permutation (the low 3 bits of each cell's sort key,
``himr_pipe.kernels.make_permutations``), so decrypt and audit regenerate them
from the owner's key; OUT never holds them.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from typing import Any

from .schemes import SchemeError, check_common, definition_of, scheme_def

__all__ = ["DEFAULT_SCHEME", "Scheme", "SchemeError", "default_flip", "default_gap", "parse_size"]

# classification's scheme when the user names none (detection's is mi: :mod:`.tasks.detection`). What it leaks
# and costs against the others: docs/ (privacy) and benchmarks/RESULTS.md.
DEFAULT_SCHEME = "mi-shuffle"


def default_gap(name: str) -> int:
    """The gap of scheme ``name`` when the user gives none (its definition's ``defaults``)."""
    return scheme_def(name).defaults.get("gap", 0)


def default_flip(name: str) -> bool:
    """Does scheme ``name`` take the flip defence when the user says nothing (its definition's ``defaults``)?"""
    return scheme_def(name).defaults.get("flip", False)


def _restore(module: str, fields: tuple) -> "Scheme":
    """Unpickle a :class:`Scheme`: import the module that registered its scheme first (a spawned worker, a Ray
    task), then rebuild (and so validate) the record."""
    importlib.import_module(module)
    return Scheme(*fields)


@dataclass(frozen=True)
class Scheme:
    kind: str = "rs"
    patch: int = 16
    height: int = 224
    width: int = 224
    gap: int = 0        # defence: blank a border of this many pixels inside every stored cell (seams no longer match)
    drop: float = 0.0   # defence: blank this fraction of each image's cells (pieces missing from the puzzle)
    shuffle: bool = False  # mi only: shuffle the MI cells per image (rs always shuffles); kind and shuffle name
    # the scheme's definition in the registry (himr_pipe.schemes), which every rule below asks
    flip: bool = False  # defence: a keyed random D4 orientation (flip / transpose / rotation) of every stored cell

    def __post_init__(self) -> None:
        check_common(definition_of(self.kind, self.shuffle), self)

    def __reduce__(self):
        return (_restore, (type(self.definition).__module__, tuple(getattr(self, f) for f in _FIELDS)))

    # -- what the scheme does ---------------------------------------------
    @property
    def definition(self):
        """What the scheme is and does: its :class:`~himr_pipe.schemes.SchemeDef` in the registry."""
        return definition_of(self.kind, self.shuffle)

    @property
    def name(self) -> str:
        """The command-line name: rs, mi, mi-shuffle, none, or a registered scheme's."""
        return self.definition.name

    @property
    def shuffled(self) -> bool:
        """Are the stored cells shuffled per image (rs, mi-shuffle)? Then positions carry nothing."""
        return self.definition.shuffled

    @classmethod
    def named(cls, name: str, patch: int = 16, height: int = 224, width: int = 224, gap: int = 0,
              drop: float = 0.0, flip: bool = False) -> "Scheme":
        """The scheme of a command-line name (a key of :data:`himr_pipe.schemes.SCHEMES`)."""
        d = scheme_def(name)
        return cls(d.kind, patch, height, width, gap, drop, d.shuffle, flip)

    def describe(self) -> str:
        """A short human label: 'rs P=16 gap 1', 'mi-shuffle P=16', ..."""
        s = f"{self.name} P={self.patch}"
        if self.gap:
            s += f" gap {self.gap}"
        if self.drop:
            s += f" drop {self.drop:g}"
        if self.flip:
            s += " flip"
        return s

    # -- geometry -------------------------------------------------------
    @property
    def size(self) -> tuple[int, int]:
        """(H, W) the image is resized to before encryption."""
        return (self.height, self.width)

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols) of the input image."""
        return (self.height // self.patch, self.width // self.patch)

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def out_size(self) -> tuple[int, int]:
        """(H, W) of the encrypted image."""
        return self.definition.out_size(self)

    @property
    def dropped(self) -> int:
        """Cells blanked per image by the drop defence."""
        return int(self.drop * self.num_patches + 0.5)

    @property
    def out_cell(self) -> int:
        """Side of one patch cell in the encrypted image (P, or P/2 for mi)."""
        return self.definition.out_cell(self)

    # -- serialisation --------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.flip:
            # recorded only when on: a job record without it is the same job as before the defence existed
            # (a resumed run of an earlier version is not refused as "different")
            del d["flip"]
        d["out_height"], d["out_width"] = self.out_size
        d["grid"] = list(self.grid)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Scheme":
        s = cls(kind=d["kind"], patch=int(d["patch"]), height=int(d["height"]), width=int(d["width"]),
                gap=int(d.get("gap", 0)), drop=float(d.get("drop", 0.0)), shuffle=bool(d.get("shuffle", False)),
                flip=bool(d.get("flip", False)))
        if "out_height" in d and (d["out_height"], d["out_width"]) != s.out_size:
            raise SchemeError(f"inconsistent scheme record: {d}")
        return s


_FIELDS = ("kind", "patch", "height", "width", "gap", "drop", "shuffle", "flip")


def parse_size(text: str | int) -> tuple[int, int]:
    """'224' -> (224, 224); '192x256' -> (192, 256) as HxW."""
    if isinstance(text, int):
        return (text, text)
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise SchemeError(f"size must be N or HxW, got {text!r}") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) <= 0:
        raise SchemeError(f"size must be N or HxW with positive sides, got {text!r}")
    return (vals[0], vals[1])
