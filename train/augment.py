"""Augmentation in the encrypted domain (installed as ``himr_pipe.train.augment``).

Offline encryption freezes every image: the shards hold RS or MI images, never
the plain ones, so the usual "augment the plain image, then encrypt" of the
research code is not available. This module augments batches of *encrypted*
images with operations that commute with the scheme, i.e. for which
``aug(E(x))`` is (in distribution) ``E(aug'(x))`` for an ordinary augmentation
``aug'`` of the plain image. Each function's docstring states why.
See docs/method.md, "Where this project differs or adds".

Conventions shared by every function:

* ``x`` is a float tensor ``(B, C, H, W)`` (NCHW) on any device, in any float
  dtype, and is never modified in place. The encrypted image's cell grid must
  line up with the tensor: cell ``P`` for RS and none, ``P/2`` for MI (that is
  ``Scheme.out_cell``), so **no crop, resize or padding may be applied to an
  encrypted image before these functions** (they would break the cells).
* Values are 0..1 or normalised: the caller decides. All operations are
  pixel-wise, linear, or use permutation-invariant statistics, so they also
  commute with a per-channel normalisation *except* the clamp of
  :func:`color_jitter` (only done when ``value_range`` is given) and the
  fill value 0 of :func:`grid_shift` / :func:`patch_dropout` (black in 0..1,
  the dataset mean after normalisation). The defaults of
  :func:`build_augment` assume 0..1 input (normalise after augmenting).
* Randomness comes only from the ``generator`` argument (``None``: torch's
  global RNG). A generator must live on ``x``'s device
  (``torch.Generator(device=x.device)``); a mismatch raises ``ValueError``.
  Every call draws the same amount of randomness whatever the data, so a
  seeded generator gives bit-identical runs on the same device.
* Everything is batched: per-image decisions are tensors of shape ``(B,)``,
  no Python loop over images.
* Labels are soft targets ``(B, K)`` (float32). One-hot in, mixed out; label
  smoothing is the trainer's job.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from himr_pipe.scheme import Scheme

__all__ = [
    "patch_hflip",
    "random_hflip",
    "color_jitter",
    "token_mixup_cutmix",
    "patch_dropout",
    "grid_shift",
    "grid_crop_flip",
    "sample_beta",
    "to_patches",
    "from_patches",
    "build_augment",
    "EncryptedAugment",
    "DEFAULTS",
]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _check(x: torch.Tensor, cell: int | None = None) -> tuple[int, int, int, int]:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            f"expected a float NCHW batch, got {getattr(x, 'dtype', type(x))} with shape "
            f"{tuple(getattr(x, 'shape', ()))}"
        )
    b, c, h, w = x.shape
    if cell is not None:
        if not isinstance(cell, int) or cell <= 0:
            raise ValueError(f"cell/patch must be a positive integer, got {cell!r}")
        if h % cell or w % cell:
            raise ValueError(f"cell {cell} does not divide the image size {h}x{w}")
    return b, c, h, w


def _check_gen(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is None:
        return
    gd, xd = torch.device(generator.device), torch.device(device)
    if gd.type != xd.type or (xd.index is not None and gd.index is not None and gd.index != xd.index):
        raise ValueError(
            f"the generator lives on {gd} but the batch on {xd}; "
            f"create it with torch.Generator(device=x.device)"
        )


def _rand(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float32)


def _uniform(n: int, lo: float, hi: float, generator, device) -> torch.Tensor:
    return lo + (hi - lo) * _rand((n,), generator, device)


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of every entry in its row (0 = smallest): a uniformly random ordering for iid scores."""
    return scores.argsort(dim=1).argsort(dim=1)


def _random_subset(b: int, n: int, k: torch.Tensor, generator, device) -> torch.Tensor:
    """(B, N) bool mask with exactly ``k[i]`` True entries in row i, uniformly chosen."""
    return _ranks(_rand((b, n), generator, device)) < k.view(b, 1)


def _cell_mask_to_pixels(mask: torch.Tensor, x: torch.Tensor, cell: int) -> torch.Tensor:
    """(B, gh*gw) bool -> broadcastable against ``x.view(B, C, gh, cell, gw, cell)``."""
    b, _, h, w = x.shape
    return mask.view(b, 1, h // cell, 1, w // cell, 1)


def to_patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C, P, P), patches in row-major grid order (the RS slot order)."""
    b, c, h, w = _check(x, patch)
    gh, gw = h // patch, w // patch
    return x.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c, patch, patch)


def from_patches(p: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`to_patches`: (B, N, C, P, P) and the grid (gh, gw) -> (B, C, H, W)."""
    b, n, c, ph, pw = p.shape
    gh, gw = grid
    if gh * gw != n:
        raise ValueError(f"grid {grid} does not hold {n} patches")
    return p.reshape(b, gh, gw, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, gh * ph, gw * pw)


def _sample_gamma(shape_a: float, n: int, generator, device, rounds: int = 16) -> torch.Tensor:
    """Gamma(shape_a, 1) draws, batched and driven only by ``generator``.

    Marsaglia-Tsang squeeze/rejection with ``rounds`` candidates per draw,
    all drawn at once (acceptance >= 95 % per candidate, so a draw fails all
    16 with probability < 1e-20; it then takes the mode-like value d).
    Shapes < 1 use the boost Gamma(a) = Gamma(a + 1) * U^(1/a).
    torch.distributions does not take a generator, hence this.
    """
    a = float(shape_a)
    if a <= 0:
        raise ValueError(f"gamma shape must be positive, got {a}")
    boost = a < 1.0
    aa = a + 1.0 if boost else a
    d = aa - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = torch.randn((n, rounds), generator=generator, device=device, dtype=torch.float32)
    u = _rand((n, rounds), generator, device).clamp_min(1e-30)
    v = (1.0 + c * z) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-30)))
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)
    g = d * v.gather(1, first).squeeze(1)
    g = torch.where(ok.any(dim=1), g, torch.full_like(g, d))
    u2 = _rand((n,), generator, device).clamp_min(1e-30)  # drawn always: fixed randomness budget
    if boost:
        g = g * u2 ** (1.0 / a)
    return g


def sample_beta(alpha: float, n: int, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu", beta: float | None = None) -> torch.Tensor:
    """``n`` draws of Beta(alpha, beta) (beta defaults to alpha) as float32 on ``device``."""
    beta = alpha if beta is None else beta
    _check_gen(generator, torch.device(device))
    g1 = _sample_gamma(alpha, n, generator, device)
    g2 = _sample_gamma(beta, n, generator, device)
    s = g1 + g2
    return torch.where(s > 0, g1 / s.clamp_min(1e-30), torch.full_like(s, 0.5)).clamp(0.0, 1.0)


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) values -> (B, 1, 1, 1) in x's dtype."""
    return v.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


def _bmask(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) bool -> (B, 1, 1, 1) bool."""
    return m.view(-1, *([1] * (x.dim() - 1)))


# --------------------------------------------------------------------------
# geometric: RS
# --------------------------------------------------------------------------
def patch_hflip(x: torch.Tensor, patch: int, p: float = 0.5,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """RS: flip every PxP patch horizontally *in place*, for a random subset of images.

    Each image is chosen with probability ``p``; all patches of a chosen image
    flip together (its patch slots do not move).

    Why valid: the patch at grid (i, j) of ``hflip(x)`` is ``hflip`` of the
    patch (i, gw-1-j) of ``x``. So the *set* of patches of ``hflip(x)`` is the
    set of flipped patches of ``x``, and flipping each patch of ``RS(x, perm)``
    in place gives exactly ``RS(hflip(x), perm')`` with
    ``perm'[k] = i*gw + (gw-1-j)`` where ``(i, j)`` is the grid position of
    ``perm[k]``. RS draws a uniform permutation per image, so the result is
    distributed as the RS encryption of the horizontally flipped photo, and an
    order-invariant model (PEViT) sees exactly what it would see for
    ``hflip(x)``. Not valid for MI (MI keeps positions: use
    :func:`grid_crop_flip`).
    """
    b, c, h, w = _check(x, patch)
    _check_gen(generator, x.device)
    flip = _rand((b,), generator, x.device) < p
    xv = x.reshape(b, c, h // patch, patch, w // patch, patch)
    out = torch.where(flip.view(b, 1, 1, 1, 1, 1), xv.flip(-1), xv)
    return out.reshape(b, c, h, w)


# --------------------------------------------------------------------------
# colour: every scheme
# --------------------------------------------------------------------------
_GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luminance (C == 3) or channel mean (other C). Pixel-wise."""
    if x.shape[1] == 3:
        return _GREY[0] * x[:, 0:1] + _GREY[1] * x[:, 1:2] + _GREY[2] * x[:, 2:3]
    return x.mean(dim=1, keepdim=True)


def _image_mean(t: torch.Tensor) -> torch.Tensor:
    """Per-image mean over (C, H, W), accumulated in float64 where the device has it.

    Float64 accumulation of float32 values is exact (hence independent of the
    summation order, hence of any pixel/patch permutation) whenever the sum
    needs < 53 bits, which holds for images derived from uint8 at the usual
    sizes; otherwise it differs at most in the last bit.
    """
    acc = torch.float32 if t.device.type == "mps" else torch.float64
    return t.to(acc).mean(dim=(1, 2, 3), keepdim=True).to(t.dtype)


def color_jitter(x: torch.Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 generator: torch.Generator | None = None,
                 value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Per-image brightness, contrast and saturation jitter (torchvision semantics, fixed order).

    Factors are drawn per image, uniformly in ``[max(0, 1-s), 1+s]`` for
    strength ``s`` (0 disables an operation; its random draws are still
    made, so turning one off does not shift the others' randomness):

    * brightness: ``x * f``;
    * contrast: ``m + f * (x - m)`` with ``m`` the image's mean grey value
      (one scalar per image, like torchvision);
    * saturation: ``g + f * (x - g)`` with ``g`` each pixel's grey value
      (0.2989 R + 0.587 G + 0.114 B; channel mean if C != 3).

    ``value_range=(lo, hi)`` clamps after each operation (as torchvision does
    for 0..1 images); ``None`` (default) never clamps (normalised input).

    Why valid: each operation is pixel-wise or uses a global statistic (the
    image mean) that does not depend on where pixels are. Both commute with
    any permutation of pixels, hence of patches: ``jitter(RS(x)) ==
    RS(jitter(x))`` for the same draws (exactly, for uint8-derived input; the
    mean is accumulated in float64 so that it does not depend on the order).
    For MI, without clamping, the three operations are affine per pixel and MI
    is a linear mean that preserves the image mean, so ``jitter(MI(x)) ==
    MI(jitter(x))`` up to MI's integer rounding; with clamping it is the same
    up to clamped pixels. Either way it is a plain colour augmentation of the
    encrypted image that never mixes cells.
    """
    b, c, h, w = _check(x)
    _check_gen(generator, x.device)
    fb = _uniform(b, max(0.0, 1 - brightness), 1 + brightness, generator, x.device)
    fc = _uniform(b, max(0.0, 1 - contrast), 1 + contrast, generator, x.device)
    fs = _uniform(b, max(0.0, 1 - saturation), 1 + saturation, generator, x.device)

    def clamp(t):
        return t if value_range is None else t.clamp(value_range[0], value_range[1])

    out = x
    if brightness:
        out = clamp(out * _bcast(fb, out))
    if contrast:
        m = _image_mean(_grey(out))
        out = clamp(m + _bcast(fc, out) * (out - m))
    if saturation and c > 1:
        g = _grey(out)
        out = clamp(g + _bcast(fs, out) * (out - g))
    return out


# --------------------------------------------------------------------------
# mixing: every scheme (token cutmix for RS, boxes otherwise)
# --------------------------------------------------------------------------
def _box_cells(b: int, gh: int, gw: int, lam: torch.Tensor, generator, device) -> torch.Tensor:
    """CutMix box per image on a gh x gw grid (timm's rand_bbox, batched): (B, gh*gw) bool."""
    ratio = torch.sqrt((1.0 - lam).clamp(0.0, 1.0))
    cut_h = torch.floor(gh * ratio).long()
    cut_w = torch.floor(gw * ratio).long()
    cy = torch.floor(_rand((b,), generator, device) * gh).long().clamp_max(gh - 1)
    cx = torch.floor(_rand((b,), generator, device) * gw).long().clamp_max(gw - 1)
    y0 = (cy - cut_h // 2).clamp(0, gh)
    y1 = (cy + cut_h // 2).clamp(0, gh)
    x0 = (cx - cut_w // 2).clamp(0, gw)
    x1 = (cx + cut_w // 2).clamp(0, gw)
    rows = torch.arange(gh, device=device).view(1, gh, 1)
    cols = torch.arange(gw, device=device).view(1, 1, gw)
    inside = ((rows >= y0.view(b, 1, 1)) & (rows < y1.view(b, 1, 1))
              & (cols >= x0.view(b, 1, 1)) & (cols < x1.view(b, 1, 1)))
    return inside.view(b, gh * gw)


def token_mixup_cutmix(x: torch.Tensor, y_onehot: torch.Tensor, patch: int,
                       mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, switch_prob: float = 0.5,
                       generator: torch.Generator | None = None, *,
                       mix_prob: float = 1.0, cutmix_mode: str = "token") -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup and CutMix against the flipped batch (image i with image B-1-i), per image.

    Each image independently: with probability ``mix_prob`` it is mixed;
    if both alphas are > 0 it uses CutMix with probability ``switch_prob``,
    else Mixup; an alpha of 0 disables that method. ``lam ~ Beta(alpha, alpha)``
    per image. Targets: ``y_soft = lam * y + (1 - lam) * y.flip(0)`` where
    ``lam`` is the fraction of the image that stayed its own (for CutMix
    recomputed from the cells actually taken), so rows sum to 1 whenever the
    input rows do. (With an odd batch the middle image mixes with itself.)

    * Mixup: ``lam * x + (1 - lam) * x.flip(0)``. For RS this is a blend of
      two patch sets, slot by slot: patch k of one image with patch k of the
      other, i.e. each patch is paired with a *random* patch of the partner
      (not with the one at the same place in the plain photos). It is not
      ``RS(mixup(x1, x2))``, but it is still a convex combination of two
      inputs with the same label weights, the regulariser mixup is about, and
      the token-wise PEViT sees a token set of blended patches. For MI and
      none it is exactly ``E(mixup(x1, x2))`` up to MI's rounding (MI is
      linear and keeps positions).
    * CutMix, ``cutmix_mode="token"`` (RS): replace a uniformly random subset
      of ``k = floor((1 - lam) * N + 0.5)`` of the N patch slots (``patch`` =
      cell side P) with the partner's patches in the same slots. RS positions
      mean nothing, so a box would be just a random subset anyway; since the
      partner's slots hold a uniformly random subset of its patches, the
      result is a patch set of N-k patches of one photo and k of the other:
      the RS encryption of a cutmix image with ``lam = 1 - k/N`` exactly.
    * CutMix, ``cutmix_mode="box"`` (none; MI): timm's box, but on the grid of
      ``patch``-sized cells (``patch=1``: pixel boxes for plain images; the
      MI cell P/2 for MI, where a cell-aligned box of MI(x) is exactly MI of a
      patch-aligned cutmix of the plain photos, because MI keeps positions).

    Returns ``(x_mixed, y_soft)``; ``y_soft`` is float32 on ``x.device``.
    """
    b, c, h, w = _check(x, patch)
    _check_gen(generator, x.device)
    if cutmix_mode not in ("token", "box"):
        raise ValueError(f"cutmix_mode must be 'token' or 'box', got {cutmix_mode!r}")
    y = y_onehot.to(device=x.device, dtype=torch.float32)
    if y.dim() != 2 or y.shape[0] != b:
        raise ValueError(f"targets must be (B, K) with B={b}, got {tuple(y.shape)}")
    dev = x.device
    gh, gw = h // patch, w // patch
    n = gh * gw
    one = torch.ones(b, device=dev)
    # fixed randomness budget: every draw is made whatever the settings
    lam_mix = sample_beta(mixup_alpha, b, generator, dev) if mixup_alpha > 0 else one
    lam_cut = sample_beta(cutmix_alpha, b, generator, dev) if cutmix_alpha > 0 else one
    pick_cut = _rand((b,), generator, dev) < switch_prob
    apply = _rand((b,), generator, dev) < mix_prob
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cut = pick_cut
    else:
        use_cut = torch.full((b,), cutmix_alpha > 0, device=dev)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        apply = torch.zeros(b, dtype=torch.bool, device=dev)

    if cutmix_mode == "token":
        k = torch.floor((1.0 - lam_cut) * n + 0.5).long()
        cells = _random_subset(b, n, k, generator, dev)
    else:
        cells = _box_cells(b, gh, gw, lam_cut, generator, dev)
    cells = cells & (use_cut & apply).view(b, 1)
    lam_cut_eff = 1.0 - cells.float().sum(dim=1) / n

    partner = x.flip(0)
    xv = x.reshape(b, c, gh, patch, gw, patch)
    cut = torch.where(_cell_mask_to_pixels(cells, x, patch), partner.reshape(xv.shape), xv).reshape(b, c, h, w)
    blend = torch.lerp(partner, x, _bcast(lam_mix, x))  # lam * x + (1 - lam) * partner
    do_mix = apply & ~use_cut
    out = torch.where(_bmask(do_mix, x), blend, cut)  # cut == x where no cell was taken

    lam = torch.where(do_mix, lam_mix, torch.where(use_cut & apply, lam_cut_eff, one)).view(b, 1)
    y_soft = lam * y + (1.0 - lam) * y.flip(0)
    return out, y_soft


# --------------------------------------------------------------------------
# patch dropout: RS
# --------------------------------------------------------------------------
def patch_dropout(x: torch.Tensor, patch: int, ratio: float = 0.25, generator: torch.Generator | None = None,
                  *, p: float = 1.0, fill: str | float = "zero",
                  return_mask: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RS: blank a random subset of exactly ``k = floor(ratio * N + 0.5)`` patches per chosen image.

    Each image is chosen with probability ``p`` (others keep all N patches);
    the k slots are a uniform random subset. The other patches are returned
    bit-identical. ``fill``: ``"zero"`` (0), ``"mean"`` (per-channel mean of
    the batch) or a number. ``return_mask=True`` also returns the (B, N) bool
    mask of dropped slots (row-major grid order, as :func:`to_patches`), so a
    model can drop those tokens instead of seeing blank ones.

    Why valid: an order-invariant model sees an RS image as a set of patch
    tokens; blanking k of them is the set of a plain image with k patches
    erased (random erasing on the patch grid), and for the model it is the
    paper's "drop a fraction of patches" (exactly so if the trainer uses the
    mask to remove the tokens; with a blank fill the token is a constant one).
    Never touches pixels across patch boundaries. (For MI the same call with
    ``patch = P/2`` is valid too: it is MI of the photo with those patches
    erased, since MI of a zero patch is zero.)
    """
    b, c, h, w = _check(x, patch)
    _check_gen(generator, x.device)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    n = (h // patch) * (w // patch)
    k = int(math.floor(ratio * n + 0.5))
    chosen = _rand((b,), generator, x.device) < p
    kk = torch.where(chosen, torch.full((b,), k, device=x.device), torch.zeros(b, dtype=torch.long, device=x.device))
    mask = _random_subset(b, n, kk, generator, x.device)
    if fill == "zero":
        value = torch.zeros((), dtype=x.dtype, device=x.device)
    elif fill == "mean":
        value = x.mean(dim=(0, 2, 3)).view(1, c, 1, 1, 1, 1)
    elif isinstance(fill, (int, float)) and not isinstance(fill, bool):
        value = torch.tensor(float(fill), dtype=x.dtype, device=x.device)
    else:
        raise ValueError(f"fill must be 'zero', 'mean' or a number, got {fill!r}")
    xv = x.reshape(b, c, h // patch, patch, w // patch, patch)
    out = torch.where(_cell_mask_to_pixels(mask, x, patch), value, xv).reshape(b, c, h, w)
    return (out, mask) if return_mask else out


# --------------------------------------------------------------------------
# geometric: MI and none
# --------------------------------------------------------------------------
def random_hflip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip whole images horizontally, each with probability ``p``.

    Valid for plain images (scheme none) and MI: ``MI(hflip(x)) ==
    hflip(MI(x))`` exactly, because the patch at (i, gw-1-j) of hflip(x) is
    the flipped patch (i, j) of x, whose 2x2 sub-patches are the flipped
    sub-patches of the original with left and right swapped; their pixel-wise
    mean (and its integer rounding) is the flipped mean. NOT valid for RS
    pixels in general (use :func:`patch_hflip`).
    """
    b = _check(x)[0]
    _check_gen(generator, x.device)
    flip = _rand((b,), generator, x.device) < p
    return torch.where(_bmask(flip, x), x.flip(-1), x)


def grid_shift(x: torch.Tensor, cell: int, dy: torch.Tensor, dx: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Translate image i by ``dy[i]`` cells down and ``dx[i]`` cells right; uncovered cells get ``fill``.

    Deterministic building block of :func:`grid_crop_flip` (``dy``, ``dx``:
    int tensors of shape (B,), any sign). Moves whole cells only.
    """
    b, c, h, w = _check(x, cell)
    dev = x.device
    dy = torch.as_tensor(dy, device=dev).long().view(b, 1) * cell
    dx = torch.as_tensor(dx, device=dev).long().view(b, 1) * cell
    src_r = torch.arange(h, device=dev).view(1, h) - dy  # (B, H): source row of each output row
    src_c = torch.arange(w, device=dev).view(1, w) - dx
    ok_r = (src_r >= 0) & (src_r < h)
    ok_c = (src_c >= 0) & (src_c < w)
    rows = x.gather(2, src_r.clamp(0, h - 1).view(b, 1, h, 1).expand(b, c, h, w))
    out = rows.gather(3, src_c.clamp(0, w - 1).view(b, 1, 1, w).expand(b, c, h, w))
    ok = (ok_r.view(b, 1, h, 1) & ok_c.view(b, 1, 1, w))
    return torch.where(ok, out, torch.tensor(fill, dtype=x.dtype, device=dev))


def grid_crop_flip(x: torch.Tensor, cell: int, shift_cells: int = 1, p_flip: float = 0.5,
                   generator: torch.Generator | None = None, fill: float = 0.0) -> torch.Tensor:
    """MI (and none): random grid-aligned crop with padding, then random horizontal flip.

    Per image: shifts ``dy, dx`` uniform in ``{-shift_cells, ..., shift_cells}``
    (whole cells, zero fill), which is the same as padding ``shift_cells``
    cells of ``fill`` on every side and cropping a random cell-aligned window
    of the original size (torchvision's RandomCrop(padding=...), snapped to
    the grid). Then :func:`random_hflip` with ``p_flip``. Never resizes:
    resampling would mix cells.

    Why valid for MI (``cell = P/2``): MI replaces each PxP patch of the
    photo, in place, by a (P/2)x(P/2) cell. Shifting the photo by k whole
    patches (zero fill) shifts the MI image by k whole cells, and MI of a zero
    patch is a zero cell, so ``shift_{P/2}(MI(x), k) == MI(shift_P(x, k))``
    exactly; and ``hflip(MI(x)) == MI(hflip(x))`` exactly (see
    :func:`random_hflip`). The MI model keeps position embeddings, so these
    are real geometric augmentations of the underlying photo.
    With normalised input, ``fill=0`` is the dataset mean colour instead of
    black (still a constant pad).
    """
    b = _check(x, cell)[0]
    _check_gen(generator, x.device)
    if shift_cells < 0:
        raise ValueError(f"shift_cells must be >= 0, got {shift_cells}")
    r = _rand((b, 2), generator, x.device)
    d = torch.floor(r * (2 * shift_cells + 1)).long().clamp_max(2 * shift_cells) - shift_cells
    out = grid_shift(x, cell, d[:, 0], d[:, 1], fill) if shift_cells else x
    return random_hflip(out, p_flip, generator)


# --------------------------------------------------------------------------
# per-scheme pipeline
# --------------------------------------------------------------------------
DEFAULTS: dict[str, dict[str, Any]] = {
    # shared by every scheme (overridden by the scheme's definition's ``augment``: himr_pipe.schemes; rs and
    # mi-shuffle drop patches (p 0.25, as DeiT's random erasing), mi turns cutmix off (mixup only by default; > 0
    # gives cell-aligned box cutmix))
    "common": {
        "enabled": True,
        "hflip": 0.5,               # probability per image
        "brightness": 0.4,          # colour jitter strengths (timm's default 0.4); 0 disables
        "contrast": 0.4,
        "saturation": 0.4,
        "value_range": (0.0, 1.0),  # clamp after jitter; None for normalised input
        "mixup_alpha": 0.8,         # DeiT recipe; 0 disables
        "cutmix_alpha": 1.0,        # DeiT recipe; 0 disables
        "switch_prob": 0.5,
        "mix_prob": 1.0,
        "shift_cells": None,        # mi only: None -> max(1, round(min(grid) / 8)), 0 disables
        "patch_drop_prob": 0.0,     # per-image probability of patch dropout; 0 disables
        "patch_drop_ratio": 0.25,
        "patch_drop_fill": "zero",
    },
    # the flip defence (Scheme.flip), on top of rs / mi-shuffle's entry: every stored cell is already in a
    # uniformly random orientation of the square and the flip models are exactly invariant to it
    # (train/models.py, D4OrbitProj), so a per-cell orientation augmentation would be pointless. patch_hflip
    # is one (a flipped cell is the same cell in another orientation, test_augment): it would change nothing the
    # model sees, and before mixing it only re-draws the relative orientation of blended cells, which is
    # uniformly random already. Off by default; everything else is the non-flip scheme's recipe.
    "flip": {"hflip": 0.0},
}


class EncryptedAugment:
    """Callable ``aug(x, y, generator=None) -> (x, y_soft)`` built by :func:`build_augment`.

    ``x``: float NCHW of the scheme's encrypted size (``scheme.out_size``);
    ``y``: int class indices (B,) or soft/one-hot targets (B, K).
    ``y_soft``: float32 (B, num_classes) on ``x.device``.
    Order: geometric (flip / shift), colour jitter, patch dropout, mix.
    """

    def __init__(self, scheme: Scheme, num_classes: int, config: dict[str, Any]):
        self.scheme = scheme
        self.num_classes = int(num_classes)
        self.config = config

    def __repr__(self) -> str:
        return f"EncryptedAugment(scheme={self.scheme.name!r}, num_classes={self.num_classes}, config={self.config})"

    def targets(self, y: torch.Tensor, device: torch.device) -> torch.Tensor:
        y = torch.as_tensor(y, device=device)
        if y.is_floating_point():
            if y.dim() != 2 or y.shape[1] != self.num_classes:
                raise ValueError(f"soft targets must be (B, {self.num_classes}), got {tuple(y.shape)}")
            return y.to(torch.float32)
        if y.dim() != 1:
            raise ValueError(f"class indices must be (B,), got {tuple(y.shape)}")
        return torch.nn.functional.one_hot(y.long(), self.num_classes).to(torch.float32)

    def __call__(self, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        s, cfg = self.scheme, self.config
        _check(x)
        if tuple(x.shape[-2:]) != s.out_size:
            raise ValueError(f"batch is {tuple(x.shape[-2:])} but scheme {s.name} images are {s.out_size} "
                             f"(no crop/resize may come before augmentation in the encrypted domain)")
        y_soft = self.targets(y, x.device)
        if y_soft.shape[0] != x.shape[0]:
            raise ValueError(f"{x.shape[0]} images but {y_soft.shape[0]} targets")
        if not cfg["enabled"]:
            return x, y_soft
        _check_gen(generator, x.device)
        cell = s.out_cell
        if s.shuffled:  # rs, mi-shuffle: cells in random order; flip each cell on its own
            if cfg["hflip"] > 0:
                x = patch_hflip(x, cell, cfg["hflip"], generator)
        elif s.definition.mixed:  # mi: cells kept in place, each one token: moved whole
            x = grid_crop_flip(x, cell, cfg["shift_cells"], cfg["hflip"], generator)
        else:
            if cfg["hflip"] > 0:
                x = random_hflip(x, cfg["hflip"], generator)
        if cfg["brightness"] or cfg["contrast"] or cfg["saturation"]:
            x = color_jitter(x, cfg["brightness"], cfg["contrast"], cfg["saturation"], generator,
                             value_range=cfg["value_range"])
        if cfg["patch_drop_prob"] > 0 and cfg["patch_drop_ratio"] > 0:
            x = patch_dropout(x, cell, cfg["patch_drop_ratio"], generator, p=cfg["patch_drop_prob"],
                              fill=cfg["patch_drop_fill"])
        if (cfg["mixup_alpha"] > 0 or cfg["cutmix_alpha"] > 0) and cfg["mix_prob"] > 0:
            mode, mix_cell = ("token", cell) if s.shuffled else ("box", cell if s.definition.mixed else 1)
            x, y_soft = token_mixup_cutmix(x, y_soft, mix_cell, cfg["mixup_alpha"], cfg["cutmix_alpha"],
                                           cfg["switch_prob"], generator, mix_prob=cfg["mix_prob"],
                                           cutmix_mode=mode)
        return x, y_soft


def build_augment(scheme: Scheme, num_classes: int,
                  config: dict[str, Any] | None = None) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The augmentation for ``scheme``: ``aug(x, y, generator=None) -> (x, y_soft)``.

    * rs:   :func:`patch_hflip`, :func:`color_jitter`, :func:`patch_dropout`
            (p 0.25, ratio 0.25), token mixup/cutmix (:func:`token_mixup_cutmix`,
            mode "token", cell P).
    * mi-shuffle: as rs on the MI cell (P/2): flipping a PxP patch in place
            swaps and flips its sub-patches, so MI of it is the flipped cell;
            with an order-invariant model that is MI of the flipped image.
    * mi:   :func:`grid_crop_flip` (cell P/2, shift up to ``shift_cells``),
            :func:`color_jitter`, mixup (cutmix off unless ``cutmix_alpha`` > 0,
            then cell-aligned boxes).
    * none: :func:`random_hflip`, :func:`color_jitter`, mixup/cutmix with pixel
            boxes (same code path, mode "box", cell 1).
    * flip (rs / mi-shuffle with ``scheme.flip``): the same as without flip, but
            no :func:`patch_hflip` by default (``DEFAULTS["flip"]``): the cells come
            in random orientations and the model is invariant to them.

    ``config=None`` means :data:`DEFAULTS` (``common`` updated by the scheme's
    entry); a dict overrides single keys (unknown keys raise ``ValueError``).
    Turn parts off with 0: ``hflip``, ``brightness``/``contrast``/``saturation``,
    ``mixup_alpha``/``cutmix_alpha``, ``patch_drop_prob``, ``shift_cells``;
    ``{"enabled": False}`` gives the identity on images with one-hot targets.
    Defaults assume inputs in 0..1 (``value_range`` clamps the jitter); pass
    ``{"value_range": None}`` for normalised input.
    """
    if not isinstance(scheme, Scheme):
        raise TypeError(f"scheme must be a Scheme, got {type(scheme).__name__}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    cfg = dict(DEFAULTS["common"])
    cfg.update(scheme.definition.augment)
    if scheme.flip:
        cfg.update(DEFAULTS["flip"])
    unknown = set(config or {}) - set(cfg)
    if unknown:
        raise ValueError(f"unknown augmentation option(s) {sorted(unknown)}; known: {sorted(cfg)}")
    cfg.update(config or {})
    if cfg["shift_cells"] is None:
        gh, gw = scheme.grid
        cfg["shift_cells"] = max(1, int(round(min(gh, gw) / 8))) if scheme.definition.mixed and not scheme.shuffled \
            else 0
    cfg["shift_cells"] = int(cfg["shift_cells"])
    if cfg["value_range"] is not None:
        cfg["value_range"] = tuple(float(v) for v in cfg["value_range"])
    return EncryptedAugment(scheme, num_classes, cfg)
