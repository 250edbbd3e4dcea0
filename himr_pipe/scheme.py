"""The one description of an encryption scheme.

Every part of himr-pipe (pipeline, kernels, encoders, manifest, and later the
models and loaders) takes a :class:`Scheme`. It is immutable, validated on
construction, and round-trips through the manifest with :meth:`to_dict` /
:meth:`from_dict`.

Schemes (see docs/method.md):

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

from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("rs", "mi", "none")
# command-line names of the schemes: kind plus options
NAMES = ("rs", "mi", "mi-shuffle", "none")


# The defences each scheme gets when the user names none (``--gap`` / ``--flip`` omitted). mi-shuffle, the default
# scheme for classification, comes with the flip defence and no gap: on 24 bundled photos (P=16, JPEG q90) it leaves
# 0.045 of the neighbours to the orientation-aware audit (PNG 0.054; budget 0.10), and on the shapes proxy it costs
# 0.23 top-1 against none where the previous default (mi-shuffle --gap 1, 0.059) cost 0.45: flip keeps every pixel
# and the orbit-pooled models are exactly invariant to it (README "Privacy"). Without any defence mi-shuffle rebuilds
# 0.13-0.14 of the neighbours. rs keeps none: it is the paper's scheme, and rs --flip alone still leaks 0.62, so a
# default would buy a cost and no budget. ``--no-flip`` / ``--gap 0`` ask for the leakier settings explicitly.
DEFAULT_DEFENCES = {"mi-shuffle": {"gap": 0, "flip": True}}
# classification's scheme when the user names none (detection's is mi: :mod:`.tasks.detection`)
DEFAULT_SCHEME = "mi-shuffle"


def default_gap(name: str) -> int:
    """The gap of scheme ``name`` when the user gives none (see :data:`DEFAULT_DEFENCES`)."""
    return DEFAULT_DEFENCES.get(name, {}).get("gap", 0)


def default_flip(name: str) -> bool:
    """Does scheme ``name`` take the flip defence when the user says nothing (see :data:`DEFAULT_DEFENCES`)?"""
    return DEFAULT_DEFENCES.get(name, {}).get("flip", False)


class SchemeError(ValueError):
    """A scheme whose parameters do not fit together."""


@dataclass(frozen=True)
class Scheme:
    kind: str = "rs"
    patch: int = 16
    height: int = 224
    width: int = 224
    gap: int = 0        # defence: blank a border of this many pixels inside every stored cell (seams no longer match)
    drop: float = 0.0   # defence: blank this fraction of each image's cells (pieces missing from the puzzle)
    shuffle: bool = False  # mi only: shuffle the MI cells per image (rs always shuffles)
    flip: bool = False  # defence: a keyed random D4 orientation (flip / transpose / rotation) of every stored cell

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SchemeError(f"unknown scheme {self.kind!r}; choose one of {', '.join(KINDS)}")
        for name in ("patch", "height", "width"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise SchemeError(f"{name} must be a positive integer, got {v!r}")
        if self.height % self.patch or self.width % self.patch:
            raise SchemeError(
                f"patch size {self.patch} does not divide the image size "
                f"{self.height}x{self.width}; choose a patch size that divides both sides"
            )
        if self.kind == "mi" and self.patch % 2:
            raise SchemeError(f"scheme mi needs an even patch size (2x2 sub-patches), got {self.patch}")
        if not isinstance(self.shuffle, bool):
            raise SchemeError(f"shuffle must be True or False, got {self.shuffle!r}")
        if self.shuffle and self.kind != "mi":
            raise SchemeError("shuffle is an option of scheme mi (rs always shuffles, none never does)")
        if not isinstance(self.flip, bool):
            raise SchemeError(f"flip must be True or False, got {self.flip!r}")
        if self.flip and not self.shuffled:
            raise SchemeError("the flip defence belongs to the shuffled schemes rs and mi-shuffle (an orientation "
                              "per shuffled cell; with positions kept it would only hide nothing)")
        if self.gap or self.drop:
            if not self.shuffled:
                raise SchemeError("the gap and drop defences belong to the shuffled schemes rs and mi-shuffle "
                                  "(they act on shuffled cells)")
            cell = self.out_cell
            if not isinstance(self.gap, int) or not 0 <= 2 * self.gap < cell:
                raise SchemeError(f"gap must be an integer with 0 <= 2*gap < the stored cell ({cell}), got {self.gap!r}")
            if not 0.0 <= float(self.drop) < 1.0:
                raise SchemeError(f"drop must be in [0, 1), got {self.drop!r}")

    # -- what the scheme does ---------------------------------------------
    @property
    def name(self) -> str:
        """The command-line name: rs, mi, mi-shuffle or none."""
        return "mi-shuffle" if self.shuffle else self.kind

    @property
    def shuffled(self) -> bool:
        """Are the stored cells shuffled per image (rs, mi-shuffle)? Then positions carry nothing."""
        return self.kind == "rs" or self.shuffle

    @classmethod
    def named(cls, name: str, patch: int = 16, height: int = 224, width: int = 224, gap: int = 0,
              drop: float = 0.0, flip: bool = False) -> "Scheme":
        """The scheme of a command-line name (see :data:`NAMES`)."""
        if name not in NAMES:
            raise SchemeError(f"unknown scheme {name!r}; choose one of {', '.join(NAMES)}")
        kind, shuffle = ("mi", True) if name == "mi-shuffle" else (name, False)
        return cls(kind, patch, height, width, gap, drop, shuffle, flip)

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
        if self.kind == "mi":
            return (self.height // 2, self.width // 2)
        return self.size

    @property
    def dropped(self) -> int:
        """Cells blanked per image by the drop defence."""
        return int(self.drop * self.num_patches + 0.5)

    @property
    def out_cell(self) -> int:
        """Side of one patch cell in the encrypted image (P, or P/2 for mi)."""
        return self.patch // 2 if self.kind == "mi" else self.patch

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
