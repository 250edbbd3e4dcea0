"""Pretrained starts: a public ViT / DeiT checkpoint, or one of our own, adapted to a model for encrypted data.

Every registered model (``pevit_*``, ``mivit_*`` and their shuffle / flip variants, ``peyolos_*``) loads
weights the timm way: ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH),
shards=OUT)``, which is what timm's ``train.py --pretrained --pretrained-path PATH`` calls. timm reads the
file (a state dict, a ``.pth`` holding ``model`` / ``state_dict``, or safetensors) and hands the state dict to
the model's ``pretrained_filter_fn``: :func:`adapt_state_dict`. ``himr-pipe train --init PATH`` goes through
the same code (``models.build_model(..., init=PATH)``).

Two kinds of source:

* **a plain timm ViT / DeiT** (``vit_*_patch16_224``, ``deit_*_patch16_224``: ``patch_embed.proj``,
  ``cls_token``, ``pos_embed``, ``blocks.*``, ``norm``, ``head``), or one of our own checkpoints trained on
  ``none`` shards (the same layout). It is adapted exactly where the mathematics allows:

  - **MI** (``mi``, ``mi-shuffle``, PEYOLOS on ``mi``): an MI cell is the mean of a patch's four (P/2)x(P/2)
    sub-patches, so the cell kernel is the **sum of the P x P kernel's four quarters**:
    ``<W, x'> = sum_q <W_q, m> = <sum_q W_q, m>`` when every sub-patch of ``x'`` is replaced by their mean
    ``m``. The MI embedding is Conv(P/2) -> GELU -> Conv 1x1; the GELU is held in its linear range by a
    per-channel shift ``s`` on the first conv's bias (the smallest that keeps every pre-activation at or above
    :data:`LINEAR_MARGIN` for any image in the valid pixel range, after the ImageNet normalisation the
    trainer applies), and the 1x1 conv is the identity with bias ``-s``. GELU(z) = z * Phi(z) and
    1 - Phi(8) < 7e-16, so the adapted model on the MI image equals the plain model on the image whose
    sub-patches are replaced by their mean, up to float rounding (tested). timm's ``resample_patch_embed``
    (FlexiViT's resize) is a different, approximate map, and is not used.
  - **order-invariant models** (rs, mi-shuffle) have no absolute position embedding: the checkpoint's is
    dropped. Their RPE (reference vector and MLP) is new, initialised as the models initialise it.
  - **flip models** (the orbit-pooled embedding): the first conv starts from the checkpoint's kernel (summed
    into the cell kernel for mi-shuffle), the 1x1 conv from the identity. The GELU is *not* shifted into its
    linear range there: a linear map pooled over the eight orientations would see only the D4-symmetric part
    of the kernel, while the GELU keeps the orbit mean able to tell apart cells that are orientations of
    none of each other. So the flip models start from the kernel, not from the plain model's function.
  - **position embeddings** with another grid (another image size, a PEYOLOS canvas): the patch rows are
    resampled with timm's ``resample_abs_pos_embed`` (bicubic), the class token's row is kept; the detection
    tokens' rows are new (the paper's PEYOLOS: ``--init_pe_size``, YOLOS's ``InterpolateInitPosEmbed``).
  - the classifier is kept when the class count matches (timm's rule; ``keep_head=False`` forces a new
    one), else new. A DeiT distillation token and head are dropped.

* **one of our own checkpoints** (``checkpoint-*.pt`` of ``himr-pipe train``, which records its scheme): to a
  model for the same scheme (kind, shuffle, flip, P; the image size may differ where the model has a position
  embedding to resample), with a new head for another class count; or a classifier's backbone to PEYOLOS (the
  paper's recipe: blocks and patch embedding kept, patch position embedding resampled to the detection
  canvas, detection tokens and heads new). A checkpoint whose scheme cannot serve the model is refused with
  one line naming both (``ValueError``).

What was loaded, adapted, newly initialised and not used is said in one :class:`PretrainedAdapted` warning
(as timm logs its adaptations) and kept on the model as ``model.himr_init``.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from himr_pipe.errors import Refused
from himr_pipe.scheme import Scheme

__all__ = ["PretrainedAdapted", "Source", "read_source", "read_checkpoint", "CheckpointUnreadable", "adapt_state_dict", "fold_mi_kernel",
           "pretrained_args", "forget_state_dict", "loading", "LINEAR_MARGIN"]

# The GELU of an adapted MI embedding sees pre-activations >= this for every valid image: 1 - Phi(8) < 7e-16.
LINEAR_MARGIN = 8.0
# Whether the orbit-pooled (flip) embeddings also start in the GELU's linear range (module docstring: they do not,
# by default; the alternative was measured in benchmarks/RESULTS.md, issue 33).
ORBIT_LINEAR_START = False
# The trainer's normalisation (trainer.MEAN / STD: ImageNet's); the valid inputs are (pixel/255 - mean) / std.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class PretrainedAdapted(UserWarning):
    """What a pretrained start loaded, adapted, newly initialised and left unused."""


@dataclass
class Source:
    """A checkpoint file and what it is: a plain ViT (``scheme`` None) or one of ours (its scheme and task)."""

    path: str
    scheme: dict | None = None
    detector: bool = False
    classes: list | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ours(self) -> bool:
        return self.scheme is not None

    def describe(self) -> str:
        name = os.path.basename(self.path)
        if not self.ours:
            return f"{name} (a plain ViT checkpoint)"
        return f"{name} ({'a detector' if self.detector else 'a classifier'}, scheme " \
               f"{Scheme.from_dict(self.scheme).describe()})"


def _numpy_globals() -> list:
    """The globals of a numpy array in a pickle: our checkpoints hold numpy's RNG state (trainer._rng_state)."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


@contextlib.contextmanager
def loading():
    """``torch.load(weights_only=True)`` of our checkpoints (numpy's RNG state inside) within this block."""
    with torch.serialization.safe_globals(_numpy_globals()):
        yield


class CheckpointUnreadable(Refused, ValueError):
    """A checkpoint file that can't be read: empty, cut short, damaged, not a torch file (the message is one line
    naming it, and what to do)."""


def read_checkpoint(path: str | os.PathLike, advice: str, mmap: bool = False):
    """The object in the torch checkpoint at ``path``, read with ``weights_only`` (numpy's RNG state allowed,
    no code), or :class:`CheckpointUnreadable` naming the file, why, and ``advice`` (what the reader should do).
    The one reader of checkpoints: ``--resume``, ``--init`` and ``predict``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointUnreadable(f"{path}: no such checkpoint file")
    try:
        size = os.path.getsize(path)
        with loading():
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and size > 0)
    except Exception as e:  # empty, truncated, not a torch file, pickled code: never its traceback
        first = (str(e).strip().splitlines() or [""])[0][:200]
        why = ("empty: 0 bytes" if size == 0 else
               f"damaged, cut short or not a torch file: {size} bytes, {type(e).__name__}" + (f": {first}" if first
                                                                                             else ""))
        raise CheckpointUnreadable(f"{path}: not a readable checkpoint ({why}); {advice}") from None


def read_source(path: str | os.PathLike) -> Source:
    """What the checkpoint at ``path`` is (``ValueError`` with one line when it can't be read)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointUnreadable(f"{path}: no such checkpoint file")
    if path.endswith(".safetensors"):
        return Source(path)
    ck = read_checkpoint(path, "point --init at a whole checkpoint", mmap=True)
    if isinstance(ck, dict) and isinstance(ck.get("model"), dict) and isinstance(ck.get("scheme"), dict):
        model = ck["model"]
        # timm reads files with its own allow-list (no numpy: our checkpoints hold numpy's RNG state), so our
        # state dict goes to timm directly (pretrained_cfg["state_dict"], timm's first source)
        return Source(path, scheme=ck["scheme"], detector=_has_box_head(model), classes=ck.get("classes"),
                      extra={"num_classes": ck.get("num_classes"), "state_dict": model})
    return Source(path)


def fold_mi_kernel(w: torch.Tensor) -> torch.Tensor:
    """(D, C, P, P) -> (D, C, P/2, P/2): the sum of the kernel's four quarters (the exact MI cell kernel)."""
    p = w.shape[-1]
    if w.shape[-2] != p or p % 2:
        raise ValueError(f"MI folds an even square kernel, got {tuple(w.shape[-2:])}")
    c = p // 2
    return w[..., :c, :c] + w[..., :c, c:] + w[..., c:, :c] + w[..., c:, c:]


def _linear_shift(w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Per output channel, the shift that keeps ``conv(x) + shift >= LINEAR_MARGIN`` for every valid input."""
    mean = torch.tensor(_MEAN, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(_STD, dtype=torch.float64).view(1, -1, 1, 1)
    lo, hi = -mean / std, (1 - mean) / std
    if w.shape[1] != lo.shape[1]:  # not RGB: a bound over the widest channel range
        lo, hi = lo.min().expand(1, w.shape[1], 1, 1), hi.max().expand(1, w.shape[1], 1, 1)
    w64 = w.double()
    least = torch.minimum(w64 * lo, w64 * hi).sum(dim=(1, 2, 3))
    if b is not None:
        least = least + b.double()
    return (LINEAR_MARGIN - least).clamp(min=0).to(w.dtype)


def _grid_of(rows: int, prefix_guess: int) -> tuple[int, tuple[int, int]]:
    """(prefix rows, square grid) of a position embedding of ``rows`` rows."""
    for p in (prefix_guess, 0):
        n = rows - p
        g = math.isqrt(max(n, 0))
        if n > 0 and g * g == n:
            return p, (g, g)
    raise ValueError(f"cannot read the grid of a position embedding of {rows} rows")


def _blocks(sd: dict) -> int:
    idx = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    return max(idx) + 1 if idx else 0


def _has_box_head(state_or_model) -> bool:
    """A detector (PEYOLOS: a box head), read from its parameters' names."""
    names = state_or_model.keys() if isinstance(state_or_model, dict) else dict(state_or_model.named_parameters())
    return any(k.startswith("bbox_embed.") for k in names)


def _name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def _refuse(source: Source, model: nn.Module, target: Scheme, why: str):
    raise ValueError(f"cannot start {_name(model)} ({'a detector' if _has_box_head(model) else 'a classifier'}, "
                     f"scheme {target.describe()}) from {source.describe()}: {why}")


def adapt_state_dict(state: dict, model: nn.Module, *, describe, source: Source | None = None,
                     keep_head: bool | None = None) -> dict:
    """The full state dict of ``model`` started from ``state`` (timm's ``pretrained_filter_fn``, with the
    keywords bound).

    Starts from the model's own initialisation and overwrites what the checkpoint carries, adapted as the
    module docstring says; what it cannot carry keeps the model's initialisation. ``describe``: the function
    that reads the scheme a model expects from its structure (``models.model_scheme``; passed in, so that this
    module sits below the models). ``keep_head``: None keeps the classifier when its shape matches (timm's
    rule), False always starts a new one.
    """
    source = source or Source("<state dict>")
    target = describe(model)
    detector = _has_box_head(model)
    src_scheme = Scheme.from_dict(source.scheme) if source.ours else None
    plain = src_scheme is None or not src_scheme.definition.encrypts
    if "patch_embed.proj.weight" not in state and "patch_embed.proj.0.weight" not in state:
        _refuse(source, model, target, "it has no ViT patch embedding (patch_embed.proj): not a ViT / DeiT "
                "checkpoint")
    if source.detector and not detector:
        _refuse(source, model, target, "it is a detector; a classifier starts from a classifier or a plain ViT")
    if not plain:
        same = (src_scheme.name, src_scheme.flip, src_scheme.patch) == (target.name, target.flip, target.patch)
        if not same:
            _refuse(source, model, target, "its patch embedding and positions were trained for other cells; start "
                    "from a plain ViT checkpoint or from one trained on the same scheme")
    # width and depth must be the model's: a ViT of another size is another model
    own = model.state_dict()
    src_dim = (state.get("cls_token") if "cls_token" in state else state.get("pos_embed"))
    src_dim = None if src_dim is None else int(src_dim.shape[-1])
    if src_dim is not None and src_dim != model.embed_dim or _blocks(state) != len(model.blocks):
        _refuse(source, model, target, f"it is a ViT of width {src_dim} and depth {_blocks(state)}, the model "
                f"has width {model.embed_dim} and depth {len(model.blocks)}; build the model at the checkpoint's "
                "size (--model tiny|small|base, or --embed-dim / --depth / --num-heads)")

    out = {k: v.detach().clone() for k, v in own.items()}
    loaded, adapted, new = [], [], []
    used: set[str] = set()

    # -- the patch embedding: the plain kernel folded and/or orbit-pooled where the model's embedding differs
    mi_cells, orbit = target.definition.mixed, target.flip  # an MI embedding (Conv(P/2) first), an orbit-pooled one
    if plain and (mi_cells or orbit):
        w = state["patch_embed.proj.weight"]
        b = state.get("patch_embed.proj.bias")
        used.update({"patch_embed.proj.weight", "patch_embed.proj.bias"})
        if w.shape[-1] != target.patch:
            _refuse(source, model, target, f"its patches are {w.shape[-1]}x{w.shape[-1]}, the shards' P is "
                    f"{target.patch}: the model's grid must be the encryption's")
        what = []
        if mi_cells:
            w = fold_mi_kernel(w)
            what.append(f"the {target.patch}x{target.patch} kernel summed over its four quarters into the "
                        f"{target.out_cell}x{target.out_cell} MI cell kernel (exact)")
        mix = out["patch_embed.proj.2.weight"]
        eye = torch.eye(mix.shape[0], dtype=mix.dtype).view(*mix.shape)
        bias0 = b.clone() if b is not None else torch.zeros(w.shape[0], dtype=w.dtype)
        if orbit and not ORBIT_LINEAR_START:
            what.append("the orbit-pooled first conv starts from that kernel, the 1x1 conv from the identity "
                        "(a start, not the plain model's function)")
            shift = torch.zeros_like(bias0)
        else:
            shift = _linear_shift(w, b)
            what.append(f"the GELU held in its linear range by a bias shift (max {float(shift.max()):.1f}) undone "
                        "by the identity 1x1 conv" + (" (orbit-pooled: the mean of the kernel's eight orientations)"
                                                      if orbit else ""))
        out["patch_embed.proj.0.weight"] = w.to(out["patch_embed.proj.0.weight"].dtype)
        if "patch_embed.proj.0.bias" in out:
            out["patch_embed.proj.0.bias"] = (bias0 + shift).to(out["patch_embed.proj.0.bias"].dtype)
        out["patch_embed.proj.2.weight"] = eye
        if "patch_embed.proj.2.bias" in out:
            out["patch_embed.proj.2.bias"] = -shift.to(out["patch_embed.proj.2.bias"].dtype)
        adapted.append("patch_embed: " + "; ".join(what))
    elif "patch_embed.proj.weight" in state and "patch_embed.proj.weight" in out:
        if state["patch_embed.proj.weight"].shape != out["patch_embed.proj.weight"].shape:
            k = state["patch_embed.proj.weight"].shape[-1]
            _refuse(source, model, target, f"its patches are {k}x{k}, the shards' P is {target.patch}: the "
                    "model's grid must be the encryption's")

    # -- the position embedding
    if "pos_embed" in state:
        used.add("pos_embed")
        if "pos_embed" not in out:
            adapted.append("pos_embed dropped (the model is order-invariant: no absolute positions)")
        else:
            src = state["pos_embed"]
            src_prefix_guess = 1 + int("dist_token" in state) if "cls_token" in state else 0
            if source.ours and src_scheme is not None:
                grid_s = tuple(src_scheme.grid)
                prefix_s = src.shape[1] - grid_s[0] * grid_s[1]
            else:
                prefix_s, grid_s = _grid_of(src.shape[1], src_prefix_guess)
            grid_t = tuple(model.patch_embed.grid_size)
            prefix_t = 0 if model.no_embed_class else model.num_prefix_tokens
            tgt = out["pos_embed"].clone()
            rows = src[:, prefix_s:]
            if tuple(grid_s) != grid_t:
                from timm.layers import resample_abs_pos_embed

                rows = resample_abs_pos_embed(rows.float(), new_size=list(grid_t), old_size=list(grid_s),
                                              num_prefix_tokens=0)
                adapted.append(f"pos_embed: the patch rows resampled from the {grid_s[0]}x{grid_s[1]} grid to "
                               f"{grid_t[0]}x{grid_t[1]} (bicubic, timm's resample_abs_pos_embed)")
            tgt[:, prefix_t:] = rows.to(tgt.dtype)
            kept_prefix = 0
            if prefix_t and prefix_s and getattr(model, "cls_token", None) is not None and "cls_token" in state:
                both_det = source.detector and detector and prefix_s == prefix_t
                kept_prefix = prefix_t if both_det else 1
                tgt[:, :kept_prefix] = src[:, :kept_prefix].to(tgt.dtype)
            if prefix_t > kept_prefix:
                new.append(f"pos_embed rows of the {prefix_t - kept_prefix} detection tokens")
            out["pos_embed"] = tgt
            loaded.append("pos_embed")

    # -- everything else: same name and shape is loaded, another shape is new
    classifier = "class_embed." if detector else "head."
    timm_drops_head = (getattr(model, "pretrained_cfg", None) or {}).get("num_classes", model.num_classes) \
        != model.num_classes and not detector
    for k in out:
        if k.startswith("patch_embed.proj") and k not in state or k == "pos_embed":
            continue
        if k not in state:
            new.append(k)
            continue
        used.add(k)
        if k.startswith("patch_embed.proj") and any(a.startswith("patch_embed:") for a in adapted):
            continue
        head = k.startswith(classifier)
        if state[k].shape != out[k].shape or head and (keep_head is False or timm_drops_head):
            new.append(k + (f" ({tuple(state[k].shape)} -> {tuple(out[k].shape)})" if state[k].shape != out[k].shape
                            else ""))
            continue
        out[k] = state[k].detach().to(out[k].dtype).clone()
        loaded.append(k)
    dropped = sorted(k for k in state if k not in used)

    report = {"file": source.path, "source": source.describe(), "loaded": loaded, "adapted": adapted, "new": new,
              "unused": dropped}
    model.himr_init = report
    warnings.warn(describe_report(report, _name(model)), PretrainedAdapted, stacklevel=2)
    return out


def _group(keys: list[str]) -> str:
    """Parameter names grouped by their first part (``blocks.*: 48``) for a one-line summary."""
    counts: dict[str, int] = {}
    for k in keys:
        head = k if " rows " in k else k.split(" ")[0].split(".")[0]
        counts[head] = counts.get(head, 0) + 1
    return ", ".join(f"{h} ({n})" if n > 1 else h for h, n in counts.items())


def describe_report(r: dict, name: str = "model") -> str:
    parts = [f"{name} started from {r['source']}: loaded {len(r['loaded'])} tensors ({_group(r['loaded'])})"]
    if r["adapted"]:
        parts.append("adapted: " + "; ".join(r["adapted"]))
    if r["new"]:
        parts.append("newly initialised: " + _group(r["new"]))
    if r["unused"]:
        parts.append("not used: " + _group(r["unused"]))
    return ". ".join(parts)


def pretrained_args(file: str | os.PathLike | None, describe, keep_head: bool | list | None = None
                    ) -> tuple[dict, dict[str, Any]]:
    """(pretrained_cfg entries, ``build_model_with_cfg`` arguments) that start a model from ``file``
    (nothing for None); ``describe`` and ``keep_head`` as for :func:`adapt_state_dict`, except that
    ``keep_head`` may also be the shards' class names: the classifier is then kept only when the checkpoint
    names the same classes in the same order (one of ours; a plain checkpoint's head is never the shards'),
    read from the one load of the file."""
    if file is None:
        return {}, {}
    source = read_source(file)
    if isinstance(keep_head, (list, tuple)):
        keep_head = None if keep_head and list(source.classes or ()) == list(keep_head) else False
    cfg = {"file": source.path}
    if "state_dict" in source.extra:
        cfg["state_dict"] = source.extra.pop("state_dict")
    return cfg, {"pretrained_filter_fn": partial(adapt_state_dict, describe=describe, source=source,
                                                 keep_head=keep_head),
                 "pretrained_strict": True}


def forget_state_dict(model: nn.Module) -> nn.Module:
    """Drop the state dict handed to timm from the model's pretrained_cfg (it is in the model now)."""
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict):
            cfg.pop("state_dict", None)
    return model
