"""What a scheme is, as an object: :class:`SchemeDef`, and the registry of them (:data:`SCHEMES`).

:class:`himr_pipe.scheme.Scheme` is the *parameter record* of a run (kind, patch, size, defences), pinned in every
manifest; the definition is what the record's ``kind`` (and ``shuffle``) means: its validation and geometry, its
kernels and inverse, what the audit attacks, which model family trains on it and how it is augmented. Every stage
asks ``scheme.definition`` instead of testing the scheme's name.

This module imports nothing of the package (the kernels are imported inside the methods that run them), so the
registry sits on the library's lowest floor, below the record and the kernels.
"""

from __future__ import annotations

from typing import Any
from ..errors import Refused


class SchemeError(Refused, ValueError):
    """A scheme whose parameters do not fit together."""


class SchemeDef:
    """One scheme: subclass it, fill in the class attributes, override what differs, and :func:`register_scheme`.

    The parts:

    * **the record**: ``name`` (the command line's), ``kind`` and ``shuffle`` (the values it writes in
      :class:`~himr_pipe.scheme.Scheme`), ``help`` (its part of ``--scheme``'s help), ``defaults`` (the defences
      it takes when the user names none: ``{"gap": 0, "flip": True}``);
    * **geometry**: :meth:`validate`, :meth:`out_size`, :meth:`out_cell`; ``shuffled`` (its stored cells are
      permuted per image with a keyed permutation, so it takes the gap / drop / flip defences) and ``encrypts``
      (False: the stored image is the plain one);
    * **kernels**: :meth:`encrypt` and :meth:`decrypt`, the transform and its inverse, written against an ``ops``
      module (the torch reference :mod:`himr_pipe.kernels.reference`, or the GPU's
      :mod:`himr_pipe.kernels.triton_kernels`, which has the same functions); ``triton`` says whether
      :meth:`encrypt` / :meth:`decrypt` may be given the Triton ops, and :meth:`image_kernel` is the CPU's fused
      per-image kernel (None: the CPU runs the torch reference). A subclass that overrides :meth:`encrypt` loses
      its parent's ``triton`` and ``image_kernel`` unless it sets them itself: they implement the parent's
      transform, not its own;
    * **display and audit**: ``mixed`` (each stored value is the mean of a 2x2 block of the plain image: the
      stored image is half size, the attack solves mixed seams and answers with the MI inverse, and its picture is
      judged against the same-information baseline), :meth:`plain_geometry` (a stored image shown at the plain
      image's size);
    * **models**: ``families``, the timm model family per task name (``{flip}`` is filled in with ``_flip``
      under the flip defence; a task it does not name refuses the scheme), read through :meth:`family`, and
      ``augment`` (train/augment.py's defaults for it).
    """

    name: str = ""
    kind: str = ""
    shuffle: bool = False
    help: str = ""
    defaults: dict[str, Any] = {}
    shuffled: bool = False
    encrypts: bool = True
    mixed: bool = False
    triton: bool = False
    families: dict[str, str] = {}
    augment: dict[str, Any] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "encrypt" in cls.__dict__:
            # the fast kernels inherited from a parent run the parent's transform: a scheme with a transform of
            # its own falls back to its torch reference on the CPU and the GPU unless it brings its own
            cls.triton = cls.__dict__.get("triton", False)
            if "image_kernel" not in cls.__dict__:
                cls.image_kernel = SchemeDef.image_kernel

    # -- the record's rules and geometry --------------------------------------------------------------------
    def validate(self, s) -> None:
        """Raise :class:`SchemeError` where ``s``'s parameters do not fit this scheme (the common checks of
        patch, size and defences are :func:`check_common`'s, run first)."""

    def out_size(self, s) -> tuple[int, int]:
        """(H, W) of the stored image."""
        return s.size

    def out_cell(self, s) -> int:
        """Side of one patch cell in the stored image."""
        return s.patch

    # -- kernels -------------------------------------------------------------------------------------------
    def encrypt(self, s, x, perms, ops, out=None):
        """The uint8 NHWC batch ``x`` (of ``s.size``) encrypted with ``s``; ``perms`` the per-image cells
        (:func:`~himr_pipe.kernels.make_permutations`, orientations packed for flip; None unless ``shuffled``);
        ``ops`` the kernel module; ``out`` a buffer of the stored shape to write into (or None)."""
        raise NotImplementedError

    def decrypt(self, s, y, perms, ops):
        """The owner's inverse at the stored geometry (identity where the transform has none)."""
        return y

    def image_kernel(self, s, channels: int = 3):
        """The CPU's per-image kernel (:class:`himr_pipe.kernels.cpu.ImageKernel`'s interface), or None: then
        the CPU runs :meth:`encrypt` with the torch reference, one image at a time."""
        return None

    def plain_geometry(self, s, img):
        """One stored (decrypted) HxWxC image shown at the plain image's size."""
        return img

    # -- models --------------------------------------------------------------------------------------------
    def family(self, task: str, s) -> str | None:
        """The timm model family that trains on ``s``'s shards for ``task`` (None: the task refuses the scheme)."""
        fam = self.families.get(task)
        return None if fam is None else fam.format(flip="_flip" if s.flip else "")

    def __repr__(self) -> str:
        return f"<scheme {self.name}>"


def check_common(d: SchemeDef, s) -> None:
    """The rules every scheme shares: positive integer geometry, a patch dividing the size, the defences."""
    for name in ("patch", "height", "width"):
        v = getattr(s, name)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise SchemeError(f"{name} must be a positive integer, got {v!r}")
    if s.height % s.patch or s.width % s.patch:
        raise SchemeError(
            f"patch size {s.patch} does not divide the image size "
            f"{s.height}x{s.width}; choose a patch size that divides both sides"
        )
    d.validate(s)
    if not isinstance(s.shuffle, bool):
        raise SchemeError(f"shuffle must be True or False, got {s.shuffle!r}")
    if not isinstance(s.flip, bool):
        raise SchemeError(f"flip must be True or False, got {s.flip!r}")
    if s.flip and not d.shuffled:
        raise SchemeError("the flip defence belongs to the shuffled schemes rs and mi-shuffle (an orientation "
                          "per shuffled cell; with positions kept it would only hide nothing)")
    if s.gap or s.drop:
        if not d.shuffled:
            raise SchemeError("the gap and drop defences belong to the shuffled schemes rs and mi-shuffle "
                              "(they act on shuffled cells)")
        cell = d.out_cell(s)
        if not isinstance(s.gap, int) or not 0 <= 2 * s.gap < cell:
            raise SchemeError(f"gap must be an integer with 0 <= 2*gap < the stored cell ({cell}), got {s.gap!r}")
        if not 0.0 <= float(s.drop) < 1.0:
            raise SchemeError(f"drop must be in [0, 1), got {s.drop!r}")


# command-line name -> definition, in registration order (the CLI lists them in this order)
SCHEMES: dict[str, SchemeDef] = {}
_BY_RECORD: dict[tuple[str, bool], SchemeDef] = {}


def register_scheme(d: SchemeDef | type) -> SchemeDef | type:
    """Add a scheme (an instance, or a class: then one instance of it) to :data:`SCHEMES`; usable as a class
    decorator. Registering a name twice is refused unless it is the same definition class (a module imported
    again)."""
    inst = d() if isinstance(d, type) else d
    if not inst.name or not inst.kind:
        raise SchemeError(f"{type(inst).__name__} needs a name and a kind")
    have = SCHEMES.get(inst.name) or _BY_RECORD.get((inst.kind, inst.shuffle))
    if have is not None and type(have).__qualname__ != type(inst).__qualname__:
        raise SchemeError(f"scheme {inst.name!r} (kind {inst.kind!r}, shuffle {inst.shuffle}) is already "
                          f"registered as {type(have).__qualname__}")
    SCHEMES[inst.name] = inst
    _BY_RECORD[(inst.kind, inst.shuffle)] = inst
    return d


def scheme_def(name: str) -> SchemeDef:
    """The definition of a command-line name."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise SchemeError(f"unknown scheme {name!r}; choose one of {', '.join(SCHEMES)}") from None


def definition_of(kind: str, shuffle: bool) -> SchemeDef:
    """The definition behind a record's ``kind`` and ``shuffle``."""
    d = _BY_RECORD.get((kind, bool(shuffle)) if isinstance(shuffle, bool) else (kind, False))
    if d is None:
        if any(k == kind for k, _ in _BY_RECORD):
            takes = ", ".join(sorted({x.kind for x in SCHEMES.values() if x.shuffle}))
            raise SchemeError(f"shuffle is an option of scheme {takes} (rs always shuffles, none never does)")
        raise SchemeError(f"unknown scheme {kind!r}; choose one of {', '.join(sorted({k for k, _ in _BY_RECORD}))}")
    return d


def timm_names(family: str, sizes, patch: int, side: int) -> list[str]:
    """The timm names a model family registers, one per size, at its registered geometry (the plain image's P
    and side: ``mivit_small_shuffle_flip_patch16_224``). The one naming rule: the manifest's ``model`` record
    (:mod:`himr_pipe.tasks`) and the train side's registration (``train/models.py``, ``train/peyolos.py``) both
    read it."""
    base, _, variant = family.partition("_")
    return [f"{base}_{size}{'_' + variant if variant else ''}_patch{patch}_{side}" for size in sizes]
