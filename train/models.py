"""Models for encrypted images: PEViT (RS), MI-ViT (MI) and a plain ViT (none).

All three are timm's :class:`~timm.models.vision_transformer.VisionTransformer`;
only the patch embedding and the position embedding differ (see
docs/method.md):

* **PEViT** (scheme ``rs``): no position embedding, a class token read by the
  head, and a reference-based positional encoding (RPE) inside the patch
  embedding (:class:`RPEPatchEmbed`): a learnable vector ``r`` and
  ``g = Linear -> ReLU -> Linear -> Sigmoid``; every patch token ``t`` becomes
  ``t + g(t - r)``. Every step is token-wise or attention without positions,
  so the logits are invariant to the order of the patches:
  ``PEViT(RS(x)) == PEViT(x)`` up to float rounding.
* **MI-ViT** (scheme ``mi``): the input is the (H/2)x(W/2) MI image; the patch
  embedding (:class:`MIPatchEmbed`) is Conv(P/2, stride P/2) -> GELU ->
  Conv 1x1 on it, giving the same (H/P)x(W/P) grid as the plain image, and
  learned absolute position embeddings are kept (MI keeps patch positions).
  For ``mi-shuffle`` (MI cells shuffled per image) the MI-ViT drops the
  position embedding and adds the RPE (:class:`RPEMIPatchEmbed`), like PEViT:
  order invariant.
* **flip** (``Scheme.flip``, rs and mi-shuffle): every stored cell also comes
  in a keyed random orientation, one of the eight symmetries of the square
  (D4). The models then take an orbit-pooled patch embedding
  (:class:`D4OrbitProj` in :class:`D4PatchEmbed` / :class:`D4MIPatchEmbed`,
  with the RPE :class:`RPED4PatchEmbed` / :class:`RPED4MIPatchEmbed`): every
  cell is embedded in all eight orientations by a shared first conv, GELU,
  mean over the eight, then a 1x1 conv (Deep Sets pooling over the group
  orbit). The orbit of a cell is the same in every orientation, so the token
  and hence the logits are exactly invariant to the per-cell orientation (as
  well as to the order): ``model(flip_RS(x)) == model(x)`` up to float
  rounding, and the embedding still tells apart cells that are not
  orientations of each other (a symmetrised linear filter would only see
  D4-symmetric patterns). PEViT(``flip=True``) thus gets a
  Conv(P) -> GELU -> Conv 1x1 embedding like MI's; MI-ViT(``shuffled=True,
  flip=True``) pools its own first conv.
* **plain ViT** (scheme ``none``): timm's ViT with learned position embedding
  (DeiT sizes), the baseline on unencrypted images.

In timm's terms every model's ``img_size`` / ``patch_size`` is that of the
image it is fed: ``scheme.out_size`` / ``scheme.out_cell``. For MI that is
(H/2)x(W/2) and P/2, so ``mivit_tiny_patch16_224`` (named after the scheme,
P=16 on 224x224) takes 112x112 inputs with ``patch_size=8``.

:func:`build_model` is the way the trainer builds a model from a shard
manifest's :class:`~himr_pipe.scheme.Scheme`; :func:`check_model_matches`
refuses (``ValueError``) a model that does not fit the data. Importing this
module registers ``pevit_{tiny,small,base}_patch16_224`` and
``mivit_{tiny,small,base}_patch16_224`` with ``timm.create_model``
(``shuffled=True`` gives the mi-shuffle MI-ViT, ``flip=True`` the
orientation-invariant models of the flip defence).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Format, PatchEmbed, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer

from himr_pipe.kernels.reference import orient_index
from himr_pipe.scheme import Scheme
from himr_pipe.schemes.base import timm_names

from .pretrained import forget_state_dict, pretrained_args

__all__ = [
    "RPEPatchEmbed", "MIPatchEmbed", "RPEMIPatchEmbed", "D4OrbitProj", "D4PatchEmbed", "D4MIPatchEmbed",
    "RPED4PatchEmbed", "RPED4MIPatchEmbed", "PEViT", "MIViT", "SIZES",
    "build_model", "model_scheme", "check_model_matches",
]

# DeiT Ti/S/B: (embed_dim, depth, num_heads)
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}


# ---------------------------------------------------------------- patch embeddings
class _RPE:
    """Mixin: the reference-based positional encoding after a patch embedding.

    ``t -> t + g(t - r)`` for every patch token ``t`` (after the projection
    and optional norm), with a learnable reference ``r`` (shape (D,), so
    timm's optimizer factory keeps it out of weight decay like other 1-D
    parameters) and ``g = Linear(D,D) -> ReLU -> Linear(D,D) -> Sigmoid``.
    Token-wise, hence independent of the order of the patches.
    """

    def __init__(self, *args, embed_dim=768, **kwargs):
        super().__init__(*args, embed_dim=embed_dim, **kwargs)
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        self.ref = nn.Parameter(torch.empty(embed_dim, **dd))
        self.rpe_mlp = nn.Sequential(
            nn.Linear(embed_dim, embed_dim, **dd),
            nn.ReLU(),
            nn.Linear(embed_dim, embed_dim, **dd),
            nn.Sigmoid(),
        )
        self.init_weights()

    def init_weights(self) -> None:
        # VisionTransformer.init_weights reaches this through named_apply (after
        # it has initialised the Linear layers of rpe_mlp itself).
        trunc_normal_(self.ref, std=.02)

    def rpe(self, t: torch.Tensor) -> torch.Tensor:
        """The RPE on tokens with channels last."""
        return t + self.rpe_mlp(t - self.ref)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if not self.flatten and self.output_fmt == Format.NCHW:
            return self.rpe(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.rpe(x)  # NLC, or NHWC (dynamic_img_size)


class MIPatchEmbed(PatchEmbed):
    """Patch embedding of an MI image: Conv(P/2, stride P/2) -> GELU -> Conv 1x1.

    Arguments are in terms of the MI image it is fed, as timm's: ``img_size``
    = (H/2, W/2) and ``patch_size`` = P/2 (the MI cell, ``scheme.out_cell``).
    ``grid_size`` / ``num_patches`` / ``feat_ratio()`` / ``dynamic_feat_size``
    are then those of timm's PatchEmbed, the (H/P)x(W/P) grid; only ``proj``
    is replaced (``proj[0]`` is the first conv).
    """

    def __init__(self, img_size=112, patch_size=8, in_chans=3, embed_dim=768, bias=True, **kwargs):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         bias=bias, **kwargs)
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        cell = self.patch_size
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim, kernel_size=cell, stride=cell, bias=bias, **dd),
            nn.GELU(),
            nn.Conv2d(embed_dim, embed_dim, kernel_size=1, **dd),
        )

    def set_input_size(self, img_size=None, patch_size=None):
        # timm would rebuild ``proj`` as one Conv2d (resample_patch_embed): refuse.
        if patch_size is not None and to_2tuple(patch_size) != self.patch_size:
            raise ValueError("MIPatchEmbed cannot change its patch size; build a new model for the new scheme")
        super().set_input_size(img_size=img_size)


class RPEPatchEmbed(_RPE, PatchEmbed):
    """timm's patch embedding followed by the RPE (PEViT, scheme ``rs``)."""


class RPEMIPatchEmbed(_RPE, MIPatchEmbed):
    """The MI patch embedding followed by the RPE (scheme ``mi-shuffle``: MI cells in random order)."""


class D4OrbitProj(nn.Sequential):
    """Conv(k, stride k) -> GELU -> Conv 1x1, pooled over the eight orientations of every k x k cell.

    ``self[0]`` is the first conv (``D`` filters of k x k), ``self[1]`` the
    GELU, ``self[2]`` the 1x1 conv; the state dict is that of the same
    ``nn.Sequential``. For a cell ``c`` the output is
    ``self[2](mean_g GELU(<O_g W, c> + b))`` over the eight symmetries ``O_g``
    of the square (:func:`himr_pipe.kernels.reference.orient_index`, applied
    to the filters' spatial axes, every channel alike). ``O_g`` permutes
    pixels, so ``<O_g W, O_o c> = <O_o^-1 O_g W, c>``: turning the cell by
    ``O_o`` only permutes the eight responses, and their mean is exactly
    invariant (up to float rounding). The same as embedding all eight
    orientations of the input with the shared first layer, but done by
    orienting the weights: one conv with the eight oriented copies of the
    filters stacked (``8 * D`` output channels, orientation-major), GELU, mean
    over the eight groups, then the 1x1 conv.
    """

    def __init__(self, conv: nn.Conv2d, act: nn.Module, mix: nn.Conv2d):
        kh, kw = conv.kernel_size
        if (kh != kw or tuple(conv.stride) != (kh, kw) or conv.groups != 1 or tuple(conv.dilation) != (1, 1)
                or conv.padding not in ((0, 0), "valid")):
            raise ValueError("D4OrbitProj needs a square conv with stride = kernel (one cell per output), no "
                             f"padding, dilation or groups; got kernel {conv.kernel_size}, stride {conv.stride}")
        super().__init__(conv, act, mix)
        ry, rx = orient_index(kh)
        # (8, k*k): for each orientation, the source tap of each output tap (row-major)
        self.register_buffer("orbit_index", (ry * kh + rx).reshape(8, kh * kh), persistent=False)

    def oriented_weight(self) -> torch.Tensor:
        """(8*D, C, k, k): the first conv's filters in the eight orientations, orientation-major."""
        w = self[0].weight
        d, c, k, _ = w.shape
        return w.flatten(2)[:, :, self.orbit_index].permute(2, 0, 1, 3).reshape(8 * d, c, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self[0]
        bias = None if conv.bias is None else conv.bias.repeat(8)
        y = self[1](F.conv2d(x, self.oriented_weight(), bias, stride=conv.stride))
        b, _, gh, gw = y.shape
        return self[2](y.view(b, 8, conv.out_channels, gh, gw).mean(dim=1))


class _D4:
    """Mixin: the patch embedding's ``proj`` becomes a :class:`D4OrbitProj` (the flip defence).

    On timm's PatchEmbed (one Conv(P)) a GELU and a 1x1 conv are added (as in
    the MI embedding); on :class:`MIPatchEmbed` its own Conv(P/2) -> GELU ->
    Conv 1x1 is pooled. ``proj[0]`` is the first conv either way.
    """

    def __init__(self, *args, embed_dim=768, **kwargs):
        super().__init__(*args, embed_dim=embed_dim, **kwargs)
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        if self.patch_size[0] != self.patch_size[1]:
            raise ValueError(f"the orientation-invariant embedding needs square cells, got {self.patch_size}")
        if isinstance(self.proj, nn.Conv2d):
            self.proj = D4OrbitProj(self.proj, nn.GELU(), nn.Conv2d(embed_dim, embed_dim, kernel_size=1, **dd))
        else:
            self.proj = D4OrbitProj(*self.proj)

    def set_input_size(self, img_size=None, patch_size=None):
        # timm would rebuild ``proj`` as one Conv2d (resample_patch_embed): refuse.
        if patch_size is not None and to_2tuple(patch_size) != self.patch_size:
            raise ValueError("the orientation-invariant patch embedding cannot change its patch size; build a new "
                             "model for the new scheme")
        super().set_input_size(img_size=img_size)


class D4PatchEmbed(_D4, PatchEmbed):
    """Orbit-pooled Conv(P) -> GELU -> Conv 1x1 (PEViT for ``rs`` with the flip defence, ``rpe=False``)."""


class D4MIPatchEmbed(_D4, MIPatchEmbed):
    """The MI patch embedding, orbit-pooled (mi-shuffle with the flip defence, ``rpe=False``)."""


class RPED4PatchEmbed(_RPE, D4PatchEmbed):
    """Orbit-pooled embedding followed by the RPE (PEViT, ``rs`` with the flip defence)."""


class RPED4MIPatchEmbed(_RPE, D4MIPatchEmbed):
    """Orbit-pooled MI embedding followed by the RPE (``mi-shuffle`` with the flip defence)."""


def _is_d4(pe: nn.Module) -> bool:
    """Is ``pe`` an orientation-invariant (orbit-pooled) patch embedding?"""
    return isinstance(getattr(pe, "proj", None), D4OrbitProj)


# ---------------------------------------------------------------- models
class PEViT(VisionTransformer):
    """PEViT: timm ViT without position embedding, class-token head, optional RPE.

    ``img_size`` / ``patch_size`` are the RS image's size and P. Any other
    VisionTransformer argument passes through (``drop_path_rate``,
    ``patch_drop_rate``, ...); ``pos_embed`` and ``embed_layer`` are fixed.
    ``flip=True`` (the flip defence) takes the orbit-pooled embedding
    (:class:`RPED4PatchEmbed`, or :class:`D4PatchEmbed` with ``rpe=False``):
    the logits are then also invariant to the orientation of every patch.
    """

    himr_kind = "rs"

    def __init__(self, img_size=224, patch_size=16, rpe: bool = True, flip: bool = False, **kwargs):
        for key in ("pos_embed", "embed_layer"):
            if key in kwargs:
                raise ValueError(f"PEViT fixes {key}; got {key}={kwargs[key]!r}")
        kwargs.setdefault("class_token", True)
        kwargs.setdefault("global_pool", "token")
        if flip:
            layer = RPED4PatchEmbed if rpe else D4PatchEmbed
        else:
            layer = RPEPatchEmbed if rpe else PatchEmbed
        super().__init__(img_size=img_size, patch_size=patch_size, pos_embed="none", embed_layer=layer, **kwargs)
        self.rpe = bool(rpe)
        self.flip = bool(flip)


class MIViT(VisionTransformer):
    """ViT on MI images: :class:`MIPatchEmbed` and learned position embedding.

    ``img_size`` / ``patch_size`` are the MI image's: (H/2, W/2) and P/2.
    ``shuffled=True`` is the model for ``mi-shuffle`` (MI cells in a random
    order per image): like PEViT, no position embedding, a class-token head
    and the RPE after the MI patch embedding (``rpe=False`` drops it), so the
    logits are invariant to the order of the cells. ``flip=True`` (with
    ``shuffled``: the flip defence of mi-shuffle) pools the MI embedding over
    the eight orientations of every cell (:class:`RPED4MIPatchEmbed`, or
    :class:`D4MIPatchEmbed` with ``rpe=False``): invariant to them as well.
    """

    himr_kind = "mi"

    def __init__(self, img_size=112, patch_size=8, shuffled: bool = False, rpe: bool = True, flip: bool = False,
                 **kwargs):
        for key in ("pos_embed", "embed_layer"):
            if key in kwargs:
                raise ValueError(f"MIViT fixes {key}; got {key}={kwargs[key]!r}")
        if flip and not shuffled:
            raise ValueError("MIViT(flip=True) is the model of mi-shuffle with the flip defence: pass shuffled=True "
                             "(MI with its cell positions kept has no flip defence)")
        if shuffled:
            kwargs.setdefault("class_token", True)
            kwargs.setdefault("global_pool", "token")
            if flip:
                layer = RPED4MIPatchEmbed if rpe else D4MIPatchEmbed
            else:
                layer = RPEMIPatchEmbed if rpe else MIPatchEmbed
            super().__init__(img_size=img_size, patch_size=patch_size, pos_embed="none", embed_layer=layer, **kwargs)
        else:
            super().__init__(img_size=img_size, patch_size=patch_size, pos_embed="learn",
                             embed_layer=MIPatchEmbed, **kwargs)
        self.shuffled = bool(shuffled)
        self.rpe = bool(rpe and shuffled)
        self.flip = bool(flip)


# ---------------------------------------------------------------- timm registry
def _cfg(input_size=(3, 224, 224), first_conv="patch_embed.proj", **kwargs) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": tuple(input_size),
        "pool_size": None,
        "crop_pct": 1.0,  # encrypted images must not be cropped: it breaks the patch grid
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": first_conv,
        "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


# The classification families the scheme definitions name (himr_pipe.schemes: ``SchemeDef.families``), and what
# builds each: (class, the stored cell and side at the registered geometry, the kwargs that make it that family).
# Registered below, explicitly, under the names of the one naming rule (himr_pipe.schemes.base.timm_names), so
# that every scheme's shards have a model timm (and its train.py) builds by name; build_model builds through the
# same entry. "vit" (none) is timm's own VisionTransformer: not registered here (timm has its names).
REGISTERED = (16, 224)  # the plain image's P and side every registered name is for
_FAMILIES: dict[str, tuple[type, int, int, dict]] = {
    "pevit": (PEViT, 16, 224, {}),                                           # rs
    "pevit_flip": (PEViT, 16, 224, dict(flip=True)),                         # rs with the flip defence
    "mivit": (MIViT, 8, 112, {}),                                            # mi
    "mivit_shuffle": (MIViT, 8, 112, dict(shuffled=True)),                   # mi-shuffle
    "mivit_shuffle_flip": (MIViT, 8, 112, dict(shuffled=True, flip=True)),   # mi-shuffle + flip: the default
    "vit": (VisionTransformer, 16, 224, dict(pos_embed="learn", class_token=True, global_pool="token")),  # none
}
# family -> its registered timm names (one per size): what the entries below put in timm's registry
FAMILY_NAMES: dict[str, list[str]] = {}

# Read by timm's @register_model (must exist before the entrypoints below).
default_cfgs = generate_default_cfgs({
    name: _cfg(input_size=(3, side, side), first_conv="patch_embed.proj.0" if cls is MIViT or fixed.get("flip")
               else "patch_embed.proj")
    for fam, (cls, _, side, fixed) in _FAMILIES.items() if cls is not VisionTransformer
    for name in timm_names(fam, SIZES, *REGISTERED)
})


def shards_scheme(shards) -> tuple[Scheme, int | None, str]:
    """(scheme, number of classes, task) of an OUT (a path or URL, or its manifest dict)."""
    if isinstance(shards, Mapping):
        m = shards
    else:
        from himr_pipe.manifest import Manifest

        m = Manifest.load(str(shards), require_complete=True).data
    task = m["job"].get("task", "classification")  # records of versions before tasks name none
    cats = (m.get("detection") or {}).get("categories")  # a detector predicts the object categories
    return Scheme.from_dict(m["job"]["scheme"]), len(cats) if cats else m.get("num_classes"), task


def _fits(task: str, scheme: Scheme) -> str:
    """The registered names of the model family that fits ``scheme``'s shards for ``task`` (its definition's)."""
    fam = scheme.definition.family(task, scheme)
    if fam is None:
        return f"none: {task} refuses scheme {scheme.name}"
    return " / ".join(FAMILY_NAMES.get(fam) or [f"the {fam} family"])


def _create(cls, variant: str, pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Build a registered model. ``shards=OUT`` (a path, URL or manifest dict; timm's train.py passes it with
    ``--model-kwargs shards=OUT``) or ``scheme=`` fit it to the data: input size and patch from the scheme,
    the classes from the manifest (unless ``num_classes`` is given), the pretrained_cfg's ``input_size`` set to
    the stored image size (``crop_pct`` stays 1.0), and a ``ValueError`` saying which model fits when this
    one does not (:func:`check_model_matches`). ``pretrained=True`` with ``pretrained_cfg_overlay=dict(file=PATH)``
    starts from a checkpoint file, adapted by :func:`himr_pipe.train.pretrained.adapt_state_dict` (the model's
    ``pretrained_filter_fn``)."""
    shards, scheme = kwargs.pop("shards", None), kwargs.pop("scheme", None)
    keep_head = kwargs.pop("keep_head", None)  # build_model's: False or class names the checkpoint must name
    out_indices = kwargs.pop("out_indices", 3)
    overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
    start = {}
    if pretrained:  # timm's way: pretrained_cfg_overlay=dict(file=PATH) (train.py --pretrained-path PATH)
        if not overlay.get("file"):
            raise ValueError(f"{variant}: there are no published weights for models on encrypted images; start from "
                             "a checkpoint file: pretrained_cfg_overlay=dict(file=PATH) (timm's train.py: "
                             "--pretrained --pretrained-path PATH), a plain ViT / DeiT or one of ours")
        cfg_more, start = pretrained_args(overlay["file"], model_scheme, keep_head)
        overlay = {**overlay, **cfg_more}
    if shards is not None:
        scheme, ncls, task = shards_scheme(shards)
        if task != getattr(cls, "himr_task", "classification"):
            raise ValueError(f"{variant} is a {getattr(cls, 'himr_task', 'classification')} model and these are "
                             f"{task} shards: the model for them: {_fits(task, _as_scheme(scheme))}")
        if ncls:
            kwargs.setdefault("num_classes", ncls)
    if scheme is not None:
        scheme = _as_scheme(scheme)
        kwargs.update(img_size=scheme.out_size, patch_size=scheme.out_cell)
        overlay = {"input_size": (kwargs.get("in_chans", 3), *scheme.out_size), **overlay}
    if kwargs.get("flip") and cls is PEViT:  # the orbit-pooled embedding's first conv is proj[0], as MI's
        overlay = {"first_conv": "patch_embed.proj.0", **overlay}
    if pretrained and "num_classes" not in overlay:  # timm keeps the checkpoint's classifier only at this count
        overlay["num_classes"] = kwargs.get("num_classes", 1000)
    model = build_model_with_cfg(cls, variant, pretrained, pretrained_cfg_overlay=overlay or None,
                                 feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **start, **kwargs)
    forget_state_dict(model)
    if scheme is not None:
        check = getattr(cls, "check_matches", None) or check_model_matches  # PEYOLOS: check_detector_matches
        try:
            check(model, scheme)
        except ValueError as e:
            raise ValueError(f"{variant} does not fit these shards (scheme {scheme.name}): {e}\n"
                             f"the model for them: {_fits(getattr(cls, 'himr_task', 'classification'), scheme)}"
                             ) from None
        model.himr_scheme = scheme.to_dict()
    return model


def _size_args(size: str) -> dict[str, int]:
    d, depth, heads = SIZES[size]
    return dict(embed_dim=d, depth=depth, num_heads=heads)


def _build(family: str, size: str, pretrained: bool = False, **kwargs) -> VisionTransformer:
    """The one builder of every classifier: a family at a size, through :func:`_create` (what each registered
    timm entry calls, and :func:`build_model`)."""
    cls, cell, side, fixed = _FAMILIES[family]
    name = timm_names(family, [size], *REGISTERED)[0]
    if cls is VisionTransformer:  # timm's own ViT: our pretrained_cfg (no hub weights), its settings as defaults
        kwargs = {**fixed, **kwargs}
        kwargs.setdefault("pretrained_cfg", _cfg(input_size=(kwargs.get("in_chans", 3), side, side)))
        fixed = {}
    clash = sorted(k for k in fixed if k in kwargs and kwargs[k] != fixed[k])
    if clash:
        raise ValueError(f"{name} is the model with {fixed}; for other settings use its base model")
    return _create(cls, name, pretrained, **{**_size_args(size), "patch_size": cell, **kwargs, **fixed})


def _register(family: str) -> None:
    """Register ``family`` with timm at every size (``pevit_tiny_patch16_224``, ...)."""
    cls = _FAMILIES[family][0]
    names = timm_names(family, SIZES, *REGISTERED)
    for size, name in zip(SIZES, names):
        def entry(pretrained: bool = False, _family=family, _size=size, **kwargs):
            return _build(_family, _size, pretrained, **kwargs)

        entry.__name__ = entry.__qualname__ = name
        entry.__module__ = __name__
        entry.__doc__ = f"{cls.__name__}-{size}, family {family} (see the module's docstring)."
        register_model(entry)
    FAMILY_NAMES[family] = names


_register("pevit")
_register("pevit_flip")
_register("mivit")
_register("mivit_shuffle")
_register("mivit_shuffle_flip")


# ---------------------------------------------------------------- scheme <-> model
_FROM_SCHEME = ("img_size", "patch_size", "pos_embed", "embed_layer")


def _as_scheme(scheme: Scheme | Mapping[str, Any]) -> Scheme:
    if isinstance(scheme, Scheme):
        return scheme
    if isinstance(scheme, Mapping):
        return Scheme.from_dict(scheme)
    raise TypeError(f"expected a Scheme or its dict, got {type(scheme).__name__}")


def build_model(scheme: Scheme | Mapping[str, Any], num_classes: int, size: str = "tiny", rpe: bool = True,
                init: str | None = None, keep_head: bool | list | None = None, **kw) -> VisionTransformer:
    """The model for data encrypted with ``scheme``.

    * ``rs``   -> :class:`PEViT` on ``scheme.size`` with patch ``scheme.patch``
      (``rpe`` picks the RPE);
    * ``mi``   -> :class:`MIViT` on ``scheme.out_size`` (H/2 x W/2) with
      patch ``scheme.out_cell`` (P/2): grid (H/P)x(W/P); for ``mi-shuffle``
      without position embedding and with the RPE (``rpe``), order invariant;
    * ``none`` -> plain timm ViT with learned position embedding.

    ``size`` (tiny/small/base) gives DeiT's embed_dim/depth/num_heads; explicit
    ``embed_dim`` / ``depth`` / ``num_heads`` override them. Other ``kw`` go to
    timm's VisionTransformer (``drop_path_rate``, ``patch_drop_rate``,
    ``in_chans``, ...); the input geometry comes from the scheme only.
    ``rpe`` only applies to the shuffled schemes (rs, mi-shuffle). With ``scheme.flip`` (the flip
    defence of rs / mi-shuffle) the patch embedding is orbit-pooled over the eight orientations of a
    cell (:class:`D4OrbitProj`), so the model is invariant to them. The scheme is recorded as
    ``model.himr_scheme`` (its ``to_dict()``).

    ``init``: a checkpoint file to start from (a plain timm ViT / DeiT, or one of ours), adapted by
    :func:`himr_pipe.train.pretrained.adapt_state_dict` through timm's pretrained loading; ``keep_head=False``
    (or class names the checkpoint does not name) starts a new classifier even when the class count matches.
    """
    scheme = _as_scheme(scheme)
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
    fixed = sorted(k for k in _FROM_SCHEME if k in kw)
    if fixed:
        raise ValueError(f"build_model takes {', '.join(fixed)} from the scheme ({scheme.to_dict()}), not from kwargs")
    if num_classes is None or int(num_classes) < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    family = scheme.definition.family("classification", scheme)
    if family not in _FAMILIES:
        raise ValueError(f"no classifier is registered for scheme {scheme.name} (its family: {family})")
    if _FAMILIES[family][0] is not VisionTransformer:
        kw["rpe"] = rpe  # the order-invariant models' RPE (MI with its positions kept has none either way)
    start = dict(pretrained_cfg_overlay=dict(file=init), keep_head=keep_head) if init is not None else {}
    # the registered entry's own builder, under the registered name: one naming path (timm.create_model(name,
    # scheme=...) builds the same model)
    return _build(family, size, init is not None, scheme=scheme, num_classes=int(num_classes), **start, **kw)


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside torch.compile / DDP / DataParallel wrappers."""
    for _ in range(8):
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif not hasattr(model, "patch_embed") and isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            break
    return model


def _definition_of(family: str):
    """The scheme whose shards a classifier of ``family`` (the flip defence aside) trains on: the first registered
    (a scheme derived from rs shares rs's models; a model's structure names rs)."""
    from himr_pipe.schemes import SCHEMES

    return next(d for d in SCHEMES.values()
                if (d.families.get("classification") or "").format(flip="") == family)


def model_scheme(model: nn.Module) -> Scheme:
    """The scheme a model expects, read from its structure (not from labels).

    A :class:`MIPatchEmbed` means ``mi``; no position embedding means ``rs``
    (order-invariant); a learned position embedding means ``none``. Patch and
    size come from ``patch_embed`` (doubled for MI). An orbit-pooled
    embedding (:class:`D4OrbitProj`) means the flip defence (``flip=True``).
    Raises ``ValueError`` when the model is not a ViT whose geometry can be read.
    """
    m = _unwrap(model)
    pe = getattr(m, "patch_embed", None)
    if not isinstance(pe, PatchEmbed):
        raise ValueError(f"cannot tell which data a {type(m).__name__} expects: it has no timm PatchEmbed "
                         "(build it with himr_pipe.train.models.build_model)")
    if pe.img_size is None:
        raise ValueError(f"{type(m).__name__} has no fixed input size; cannot check it against the data")
    ph, pw = pe.patch_size
    if ph != pw:
        raise ValueError(f"{type(m).__name__} has a non-square patch {pe.patch_size}; schemes use square patches")
    first = pe.proj[0] if isinstance(pe.proj, nn.Sequential) else pe.proj  # MI or orbit-pooled: the first conv
    if isinstance(first, nn.Conv2d) and (tuple(first.kernel_size) != pe.patch_size
                                         or tuple(first.stride) != pe.patch_size):
        raise ValueError(f"{type(m).__name__}: patch embedding conv kernel {tuple(first.kernel_size)} / stride "
                         f"{tuple(first.stride)} disagrees with its patch_size {pe.patch_size}")
    h, w = pe.img_size
    mixed = isinstance(pe, MIPatchEmbed)  # MI cells: the input is the half-size MI image, its cell P/2
    positions = getattr(m, "pos_embed", None) is not None  # none: the cells come shuffled (order-invariant)
    family = ("mivit" if positions else "mivit_shuffle") if mixed else ("vit" if positions else "pevit")
    d = _definition_of(family)
    patch, h, w = (2 * ph, 2 * h, 2 * w) if mixed else (ph, h, w)
    try:
        return Scheme.named(d.name, patch, h, w, flip=_is_d4(pe))
    except ValueError as e:
        raise ValueError(f"{type(m).__name__} does not fit any scheme: {e}") from None


_KIND_WHY = {
    ("none", "rs"): "it has learned position embeddings, but RS shuffles the patches of every image at random, "
                    "so positions carry nothing; use PEViT (no position embedding)",
    ("mi", "rs"): "it has an MI patch embedding (for half-size MI images), but the shards are RS",
    ("rs", "mi"): "it is an order-invariant PEViT with a plain patch embedding, but the shards are MI "
                  "(half-size images whose patch positions are kept)",
    ("none", "mi"): "it is a plain ViT, but the shards are MI (half-size images, cells of P/2)",
    ("rs", "none"): "it is a PEViT for RS data, but the shards are not encrypted",
    ("mi", "none"): "it is an MI-ViT for half-size MI images, but the shards are not encrypted",
    ("mi", "mi-shuffle"): "the shards' MI cells are shuffled per image, so a model with position embeddings learns "
                          "nothing from positions; use the order-invariant MI model (no positions, RPE)",
    ("mi-shuffle", "mi"): "the shards keep MI's cell positions, which an order-invariant model throws away",
    ("mi-shuffle", "rs"): "it has an MI patch embedding (for half-size MI images), but the shards are RS",
    ("rs", "mi-shuffle"): "it is an order-invariant PEViT with a plain patch embedding, but the shards are MI "
                          "(half-size images, cells of P/2)",
    ("none", "mi-shuffle"): "it is a plain ViT, but the shards are mi-shuffle (half-size images whose cells are "
                            "shuffled per image); use the order-invariant MI model",
    ("mi-shuffle", "none"): "it is an MI-ViT for half-size MI images, but the shards are not encrypted",
}


def _family(s: Scheme) -> str | None:
    """The classifier family of ``s``'s data, the flip defence aside (it is checked on its own): schemes that
    share one (rs and a scheme derived from it) share their models."""
    return s.definition.family("classification", replace(s, flip=False))


def check_model_matches(model: nn.Module, scheme: Scheme | Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless ``model`` fits data encrypted with ``scheme``.

    Checks the kind (an MI patch embedding for ``mi``, no position embedding
    for ``rs``, learned position embedding for ``none``), the flip defence
    (an orbit-pooled patch embedding exactly when the shards' cells are
    turned), the patch size P (the model's grid must coincide with the
    encryption's), the input size, and the scheme recorded by
    :func:`build_model`, if any.
    """
    scheme = _as_scheme(scheme)
    m = _unwrap(model)
    have = model_scheme(m)
    problems = []
    if _family(have) != _family(scheme):  # the model reads the structure; the data's transform is the scheme's
        problems.append(f"kind: the model is for {have.name!r} data, the shards are {scheme.name!r}: "
                        f"{_KIND_WHY.get((have.name, scheme.name), '')}")
    if have.shuffled and scheme.shuffled and have.flip != scheme.flip:
        problems.append("flip: " + (
            "the shards' cells are each turned by a keyed random flip, transpose or rotation (the flip defence), "
            "but the model's patch embedding is not invariant to it; use the orientation-invariant model "
            "(orbit-pooled patch embedding: build_model with the shards' flip scheme)"
            if scheme.flip else
            "the model's patch embedding is pooled over the eight orientations of a cell (for shards with the flip "
            "defence), but these shards' cells keep their orientation, which that model would throw away; use the "
            "model without flip"))
    if have.patch != scheme.patch:
        problems.append(f"patch size: the model's patches are {have.patch}x{have.patch} (in the plain image), "
                        f"the shards were encrypted with P={scheme.patch}; the model's patch grid must be the "
                        "encryption's")
    if getattr(m, "dynamic_img_size", False):
        oh, ow = scheme.out_size
        cell = have.out_cell if have.name == scheme.name else scheme.out_cell
        if oh % cell or ow % cell:
            problems.append(f"input size: the shards' {oh}x{ow} images are not a multiple of the model's cell {cell}")
    elif have.size != scheme.size:
        problems.append(f"input size: the model is for {have.height}x{have.width} images (input "
                        f"{have.out_size[0]}x{have.out_size[1]}), the shards hold {scheme.height}x{scheme.width} "
                        f"(stored {scheme.out_size[0]}x{scheme.out_size[1]})")
    recorded = getattr(m, "himr_scheme", None)
    if recorded is not None and _as_scheme(recorded) != scheme:
        problems.append(f"the model was built for scheme {dict(recorded)}, the shards are {scheme.to_dict()}")
    if problems:
        raise ValueError("model does not match the data:\n  - " + "\n  - ".join(problems)
                         + "\nbuild the model from the shards' scheme: build_model(scheme, num_classes, ...)")
