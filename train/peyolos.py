"""PEYOLOS: YOLOS object detection on MI-encrypted images (and the plain baseline).

YOLOS (Fang et al. 2021) is a plain ViT with ``det_tokens`` (100) learnable
detection tokens added to the patch tokens; after the last block every
detection token goes through two 3-layer MLP heads, one giving
``num_classes + 1`` class logits (the last is "no object") and one giving a
box ``(cx, cy, w, h)`` normalised to [0, 1] by a sigmoid. Training is DETR's
set loss (:mod:`himr_pipe.train.detection`). PEYOLOS (see docs/method.md)
is YOLOS on MI images:

* **MI** (scheme ``mi``): the input is the (H/2)x(W/2) MI image and the patch
  embedding is :class:`~himr_pipe.train.models.MIPatchEmbed`
  (Conv(P/2, stride P/2) -> GELU -> Conv 1x1), giving the same (H/P)x(W/P)
  grid as the plain image. The released PEYOLOS code applies the conv to the
  *plain* image and average-pools 2x2; the conv is linear, so that is the
  conv on the mean of the four sub-patches, i.e. on the MI image (tested).
  MI keeps patch positions and scales every box by exactly 1/2, so boxes
  normalised to the plain canvas are also the boxes of the MI image.
* **plain** (scheme ``none``): timm's PatchEmbed with patch P on HxW.
* **RS and mi-shuffle are refused**: they move every patch to a random place
  per image, which destroys the positions box regression needs.

The model is timm's :class:`~timm.models.vision_transformer.VisionTransformer`
with the detection tokens as timm's *register tokens* (``reg_tokens``) and
``no_embed_class=False``. With that setting timm's learned position embedding
has one row per prefix token (class token, then the detection tokens) before
the patch rows, so **every detection token has its own learned position
embedding**, as in YOLOS. timm's ``dynamic_img_size`` (on by default here)
interpolates only the patch rows to the input's grid and keeps the prefix
rows as they are, which is YOLOS's handling of its ``det_pos_embed``; so no
extra parameter is needed. (YOLOS appends its detection tokens after the
patches and timm prepends them; attention without relative positions does
not see the order, so this changes nothing.) The class token is kept, as in
YOLOS, and read by no head.

In timm's terms ``img_size`` / ``patch_size`` are those of the image fed to
the model: ``scheme.out_size`` / ``scheme.out_cell``. :func:`build_detector`
builds the model for a scheme; :func:`check_detector_matches` refuses a model
that does not fit the data. Importing this module registers
``peyolos_{tiny,small}_patch16_512`` (MI, P=16 on a 512x512 canvas: 256x256
input, ``patch_size`` 8) and ``peyolos_{tiny,small}_none_patch16_512``
(plain, 512x512 input) with ``timm.create_model``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from timm.layers import PatchEmbed, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, init_weights_vit_timm

from himr_pipe.scheme import Scheme
from himr_pipe.schemes.base import timm_names
from himr_pipe.train.models import (FAMILY_NAMES, SIZES, MIPatchEmbed, _as_scheme, _cfg, _create, _size_args,
                                    _unwrap, model_scheme)

__all__ = ["MLP", "PEYOLOS", "build_detector", "check_detector_matches", "refuse_shuffled", "sincos_2d"]


# ---------------------------------------------------------------- heads
class MLP(nn.Module):
    """DETR's / YOLOS's prediction head: ``num_layers`` Linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 3, **dd):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b, **dd) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def sincos_2d(rows: int, cols: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """MAE's fixed 2D sine-cosine position embedding, (rows * cols, dim) in row-major patch order: a quarter of
    the channels each for sin(x), cos(x), sin(y), cos(y) at ``dim / 4`` frequencies. ``dim`` must be a
    multiple of 4."""
    if dim % 4:
        raise ValueError(f"a 2D sine-cosine embedding needs a width divisible by 4, got {dim}")
    gy, gx = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                            indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    x, y = gx.flatten()[:, None] * omega, gy.flatten()[:, None] * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], 1).float()


# ---------------------------------------------------------------- model
class PEYOLOS(VisionTransformer):
    """YOLOS on timm: a ViT with ``det_tokens`` detection tokens and class/box MLP heads.

    ``img_size`` / ``patch_size`` are those of the image the model is fed: for
    ``mi=True`` the MI image's (H/2, W/2) and P/2 (patch embedding
    :class:`MIPatchEmbed`), for ``mi=False`` the plain image's HxW and P
    (timm's PatchEmbed). ``num_classes`` counts the object classes; the class
    head gives ``num_classes + 1`` logits, the last being "no object".

    ``forward(x)`` takes a normalised float NCHW batch and returns
    ``{"pred_logits": (B, det_tokens, num_classes + 1),
    "pred_boxes": (B, det_tokens, 4)}``, boxes as normalised (cx, cy, w, h)
    of the input canvas (which, for MI, is also the plain canvas).

    The detection tokens are timm's register tokens (``self.reg_token``, also
    reachable as :attr:`det_token`) with their own rows of the learned
    position embedding (``no_embed_class=False``); see the module docstring.
    They are initialised like YOLOS's (truncated normal, std 0.02).

    ``pos_init="sincos"`` (the default) starts the patch rows of the position
    embedding at MAE's 2D sine-cosine values (:func:`sincos_2d`); they stay
    learned. YOLOS starts from DeiT's trained embedding; trained from scratch,
    timm's initial one is noise (std 0.02), so no patch token says where it
    is until that noise has been trained into positions, and a detector
    cannot regress a box before then (measured in benchmarks/RESULTS.md,
    issue 21). ``"learn"`` keeps timm's initialisation. Any other
    VisionTransformer argument passes through (``drop_path_rate``,
    ``class_token``, ``dynamic_img_size``, ...); the arguments that would
    break the detection tokens or their positions are fixed.
    """

    himr_task = "detection"
    _FIXED = ("pos_embed", "embed_layer", "reg_tokens", "no_embed_class", "global_pool", "dynamic_img_pad")

    def __init__(self, img_size=256, patch_size=8, num_classes: int = 91, det_tokens: int = 100, mi: bool = True,
                 aux_loss: bool = False, dense_aux: bool = False, pos_init: str = "sincos", **kwargs):
        for key in self._FIXED:
            if key in kwargs:
                raise ValueError(f"PEYOLOS fixes {key}; got {key}={kwargs[key]!r} (detection tokens need their own "
                                 "learned position embeddings, and boxes are normalised to the unpadded input)")
        if pos_init not in ("sincos", "learn"):
            raise ValueError(f"pos_init must be 'sincos' or 'learn', got {pos_init!r}")
        self.pos_init = pos_init  # read by _init_detection, which VisionTransformer.__init__ reaches
        if int(det_tokens) < 1:
            raise ValueError(f"det_tokens must be a positive integer, got {det_tokens!r}")
        if num_classes is None or int(num_classes) < 1:
            raise ValueError(f"num_classes must be a positive integer (object classes, without no-object), "
                             f"got {num_classes!r}")
        kwargs.setdefault("class_token", True)
        kwargs.setdefault("dynamic_img_size", True)
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        super().__init__(img_size=img_size, patch_size=patch_size, num_classes=0, global_pool="",
                         pos_embed="learn", no_embed_class=False, reg_tokens=int(det_tokens),
                         embed_layer=MIPatchEmbed if mi else PatchEmbed, **kwargs)
        self.num_classes = int(num_classes)
        self.det_tokens = int(det_tokens)
        self.mi = bool(mi)
        self.aux_loss = bool(aux_loss)
        self.dense_aux = bool(dense_aux)
        self.himr_kind = "mi" if mi else "none"
        self.class_embed = MLP(self.embed_dim, self.embed_dim, self.num_classes + 1, 3, **dd)
        self.bbox_embed = MLP(self.embed_dim, self.embed_dim, 4, 3, **dd)
        self._init_detection()

    def _init_detection(self) -> None:
        # VisionTransformer.__init__ initialised everything it built (register tokens at std 1e-6); YOLOS
        # draws its detection tokens at std 0.02, and the heads get timm's ViT init for Linear layers.
        trunc_normal_(self.reg_token, std=.02)
        if getattr(self, "pos_init", "sincos") == "sincos":
            gh, gw = self.patch_embed.grid_size
            with torch.no_grad():
                self.pos_embed[0, -gh * gw:] = sincos_2d(gh, gw, self.embed_dim).to(self.pos_embed)
        for head in (self.class_embed, self.bbox_embed):
            for m in head.modules():
                init_weights_vit_timm(m)

    def init_weights(self, mode: str = "", needs_reset: bool = True) -> None:
        super().init_weights(mode, needs_reset=needs_reset)
        if hasattr(self, "class_embed"):  # not yet when VisionTransformer.__init__ calls this
            self._init_detection()

    @property
    def det_token(self) -> nn.Parameter:
        """The learnable detection tokens, (1, det_tokens, D) (timm's ``reg_token``)."""
        return self.reg_token

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.class_embed

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh class head for ``num_classes`` object classes (+1 no-object); the box head is kept."""
        if global_pool not in (None, ""):
            raise ValueError("PEYOLOS has no pooling: its heads read the detection tokens")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        p = self.class_embed.layers[0].weight
        self.num_classes = int(num_classes)
        self.class_embed = MLP(self.embed_dim, self.embed_dim, self.num_classes + 1, 3, device=p.device,
                               dtype=p.dtype)
        for m in self.class_embed.modules():
            init_weights_vit_timm(m)
        self.class_embed.train(self.training)

    def det_features(self, x: torch.Tensor) -> torch.Tensor:
        """The detection tokens of ``forward_features``'s output, (B, det_tokens, D)."""
        start = self.num_prefix_tokens - self.num_reg_tokens
        return x[:, start:start + self.det_tokens]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        """Class logits and sigmoid boxes of the detection tokens (``pre_logits``: the tokens themselves)."""
        d = self.det_features(x)
        return d if pre_logits else self._heads(d)

    def _heads(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class logits and sigmoid boxes of any tokens (the detection tokens, or the patches: the dense loss)."""
        tokens = self.head_drop(tokens)
        return {"pred_logits": self.class_embed(tokens), "pred_boxes": self.bbox_embed(tokens).sigmoid()}

    def dense_head(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The shared heads on the patch tokens of a normed token sequence: (B, N, K+1) logits, (B, N, 4) boxes."""
        return self._heads(x[:, self.num_prefix_tokens:])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The detection tokens' predictions. In training, two optional extras for the loss (evaluation and the
        returned boxes are never changed by them):

        * ``aux_loss``: ``"aux_outputs"``, the same heads (shared, as in DETR) on every earlier block's
          detection tokens, after the final norm, so that a set loss can supervise each depth (DETR's
          auxiliary losses);
        * ``dense_aux``: ``"dense_outputs"``, the same heads on every *patch* token of the last block, with
          ``"grid"`` (rows, cols), for a one-to-many loss (each patch predicts the object that covers its
          centre: :func:`~himr_pipe.train.detection.dense_loss`). This is Co-DETR's point (Zong et al. 2023):
          one-to-one matching gives the encoder few positives, so it learns to localise slowly; dense
          positives on the encoder's own tokens teach every patch where its object is, which the detection
          tokens then read. The heads are shared, so no parameter is added and checkpoints are unchanged.
        """
        h, w = x.shape[-2:]
        if not ((self.aux_loss or self.dense_aux) and self.training):
            return self.forward_head(self.forward_features(x))
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        aux = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if self.aux_loss and i < len(self.blocks) - 1:
                aux.append(self.forward_head(self.norm(x)))
        x = self.norm(x)
        out = self.forward_head(x)
        if self.aux_loss:
            out["aux_outputs"] = aux
        if self.dense_aux:
            cell = self.patch_embed.patch_size
            out["dense_outputs"] = {**self.dense_head(x), "grid": (h // cell[0], w // cell[1])}
        return out


# ---------------------------------------------------------------- timm registry
# The detection families the scheme definitions name (``SchemeDef.families["detection"]``): (stored cell and side
# at the registered geometry, the kwargs that make it that family). Their names follow the one naming rule
# (himr_pipe.schemes.base.timm_names) at 512x512, P=16.
REGISTERED = (16, 512)
_FAMILIES: dict[str, tuple[int, int, dict]] = {
    "peyolos": (8, 256, dict(mi=True)),      # mi: the MI patch embedding, 256x256 input
    "peyolos_none": (16, 512, dict(mi=False)),  # none: the plain baseline
}

# Read by timm's @register_model (must exist before the entrypoints below). Not fixed_input_size:
# the position embeddings are interpolated to the input's grid (dynamic_img_size).
default_cfgs = generate_default_cfgs({
    name: _cfg(input_size=(3, side, side), first_conv="patch_embed.proj.0" if fixed["mi"] else "patch_embed.proj",
               classifier="class_embed", fixed_input_size=False, num_classes=91)
    for fam, (_, side, fixed) in _FAMILIES.items() for name in timm_names(fam, SIZES, *REGISTERED)
})


def _build(family: str, size: str, pretrained: bool = False, **kwargs) -> PEYOLOS:
    """The one builder of every detector: a family at a size, through :func:`models._create` (what each
    registered timm entry calls, and :func:`build_detector`)."""
    cell, side, fixed = _FAMILIES[family]
    name = timm_names(family, [size], *REGISTERED)[0]
    return _create(PEYOLOS, name, pretrained,
                   **{**_size_args(size), "img_size": side, "patch_size": cell, **kwargs, **fixed})


@register_model
def peyolos_tiny_patch16_512(pretrained: bool = False, **kwargs) -> PEYOLOS:
    """PEYOLOS-Ti for MI of 512x512 with P=16: 256x256 input, patch_size 8, 32x32 grid, 100 detection tokens."""
    return _build("peyolos", "tiny", pretrained, **kwargs)


@register_model
def peyolos_small_patch16_512(pretrained: bool = False, **kwargs) -> PEYOLOS:
    """PEYOLOS-S for MI of 512x512 with P=16: 256x256 input, patch_size 8, 32x32 grid, 100 detection tokens."""
    return _build("peyolos", "small", pretrained, **kwargs)


@register_model
def peyolos_tiny_none_patch16_512(pretrained: bool = False, **kwargs) -> PEYOLOS:
    """YOLOS-Ti on plain 512x512 images, P=16 (the unencrypted baseline)."""
    return _build("peyolos_none", "tiny", pretrained, **kwargs)


@register_model
def peyolos_small_none_patch16_512(pretrained: bool = False, **kwargs) -> PEYOLOS:
    """YOLOS-S on plain 512x512 images, P=16 (the unencrypted baseline)."""
    return _build("peyolos_none", "small", pretrained, **kwargs)


FAMILY_NAMES.update({fam: timm_names(fam, ("tiny", "small"), *REGISTERED) for fam in _FAMILIES})


# ---------------------------------------------------------------- scheme <-> model
_FROM_SCHEME = ("img_size", "patch_size", "mi")


def refuse_shuffled(scheme: Scheme | Mapping[str, Any]) -> Scheme:
    """The scheme, or ``ValueError`` if it shuffles patches (rs, mi-shuffle): no boxes can be learned from those."""
    scheme = _as_scheme(scheme)
    if scheme.shuffled:
        raise ValueError(f"detection needs patch positions, but scheme {scheme.name!r} moves every "
                         f"{'MI cell' if scheme.definition.mixed else 'patch'} to a random place per image, which "
                         "destroys the positions that box regression needs; encrypt detection data with "
                         "scheme 'mi' (positions kept, boxes scale by 1/2) or 'none'")
    return scheme


def build_detector(scheme: Scheme | Mapping[str, Any], num_classes: int, size: str = "tiny", det_tokens: int = 100,
                   init: str | None = None, **kw) -> PEYOLOS:
    """The PEYOLOS detector for data encrypted with ``scheme``.

    * ``mi``   -> MI patch embedding on ``scheme.out_size`` (H/2 x W/2) with
      patch ``scheme.out_cell`` (P/2): grid (H/P)x(W/P);
    * ``none`` -> timm's PatchEmbed on HxW with patch P;
    * ``rs`` and ``mi-shuffle`` are refused (``ValueError``): shuffled
      patches carry no positions to regress boxes from.

    ``num_classes`` counts the object classes (the class head adds the
    no-object logit). ``size`` (tiny/small/base) gives DeiT's
    embed_dim/depth/num_heads; explicit ``embed_dim`` / ``depth`` /
    ``num_heads`` override them. Other ``kw`` go to :class:`PEYOLOS` /
    timm's VisionTransformer (``drop_path_rate``, ``in_chans``, ...); the
    input geometry comes from the scheme only. The scheme is recorded as
    ``model.himr_scheme`` (its ``to_dict()``) and ``model.himr_task`` is
    ``"detection"``.

    ``init``: a checkpoint file to start from, the paper's recipe (``PEYOLOS/main.py --pre_trained``): a plain
    ViT / DeiT or one of our classifiers on the same scheme gives the backbone, its patch position embedding
    resampled to the detection canvas; detection tokens and heads are new
    (:func:`himr_pipe.train.pretrained.adapt_state_dict`).
    """
    scheme = refuse_shuffled(scheme)
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
    fixed = sorted(k for k in _FROM_SCHEME if k in kw)
    if fixed:
        raise ValueError(f"build_detector takes {', '.join(fixed)} from the scheme ({scheme.to_dict()}), "
                         "not from kwargs")
    if num_classes is None or int(num_classes) < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    family = scheme.definition.family("detection", scheme)  # peyolos (mi), peyolos_none (none)
    start = dict(pretrained_cfg_overlay=dict(file=init)) if init is not None else {}
    # the registered entries' own builder, under the name of the one naming rule (timm.create_model(name,
    # scheme=...) builds the same model)
    model = _build(family, size, init is not None, scheme=scheme, num_classes=int(num_classes),
                   det_tokens=int(det_tokens), **start, **kw)
    model.himr_task = "detection"
    return model


def check_detector_matches(model: nn.Module, scheme: Scheme | Mapping[str, Any], strict_size: bool = True) -> None:
    """Raise ``ValueError`` unless ``model`` is a PEYOLOS that fits data encrypted with ``scheme``.

    Refuses shuffled schemes (rs, mi-shuffle) outright, then checks that the
    model is a detector, its kind (an MI patch embedding for ``mi``, timm's
    PatchEmbed for ``none``), its patch size P (the model's grid must be the
    encryption's), the input size and the scheme recorded by
    :func:`build_detector`, if any. The position embeddings are interpolated
    to the input's grid, so a model runs on other canvas sizes; with
    ``strict_size=False`` any input whose sides are multiples of the cell is
    accepted, otherwise the model's own size must be the scheme's (and the
    recorded scheme is not compared).
    """
    scheme = refuse_shuffled(scheme)
    m = _unwrap(model)
    if not isinstance(m, PEYOLOS):
        raise ValueError(f"model does not match the data: a {type(m).__name__} is not a detector (no detection "
                         "tokens, no box head); build one with build_detector(scheme, num_classes, ...)")
    have = model_scheme(m)
    problems = []
    if have.name != scheme.name:
        why = ("it has an MI patch embedding (for half-size MI images), but the data are not encrypted"
               if have.definition.mixed else
               "it has a plain patch embedding, but the data are MI (half-size images, cells of P/2)")
        problems.append(f"kind: the detector is for {have.name!r} data, the data are {scheme.name!r}: {why}")
    if have.patch != scheme.patch:
        problems.append(f"patch size: the detector's patches are {have.patch}x{have.patch} (in the plain image), "
                        f"the data were encrypted with P={scheme.patch}; the model's patch grid must be the "
                        "encryption's")
    if not strict_size and getattr(m, "dynamic_img_size", False):
        oh, ow = scheme.out_size
        cell = have.out_cell if have.name == scheme.name else scheme.out_cell
        if oh % cell or ow % cell:
            problems.append(f"input size: the data's {oh}x{ow} images are not a multiple of the detector's "
                            f"cell {cell}")
    else:
        if have.size != scheme.size:
            problems.append(f"input size: the detector is for {have.height}x{have.width} canvases (input "
                            f"{have.out_size[0]}x{have.out_size[1]}), the data are {scheme.height}x{scheme.width} "
                            f"(stored {scheme.out_size[0]}x{scheme.out_size[1]})"
                            + ("" if getattr(m, "dynamic_img_size", False) else
                               "; the model has a fixed input size"))
        recorded = getattr(m, "himr_scheme", None)
        if recorded is not None and _as_scheme(recorded) != scheme:
            problems.append(f"the detector was built for scheme {dict(recorded)}, the data are {scheme.to_dict()}")
    if problems:
        raise ValueError("detector does not match the data:\n  - " + "\n  - ".join(problems)
                         + "\nbuild the detector from the data's scheme: build_detector(scheme, num_classes, ...)")


# what timm.create_model(name, shards=OUT) checks a PEYOLOS against (models._create)
PEYOLOS.check_matches = staticmethod(check_detector_matches)
PEYOLOS.himr_task = "detection"
