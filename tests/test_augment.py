"""Augmentation in the encrypted domain: each operation checked against the scheme it claims to commute with.

Real photos (scikit-image's bundled astronaut, coffee, chelsea, rocket) are
resized to 64x64, encrypted with the reference kernels on uint8 NHWC, and
turned into float NCHW in 0..1, so comparisons can be exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from himr_pipe.kernels import encrypt, make_permutations, mi_mix, rs_permute
from himr_pipe.scheme import Scheme
from himr_pipe.train.augment import (
    DEFAULTS,
    build_augment,
    color_jitter,
    from_patches,
    grid_crop_flip,
    grid_shift,
    patch_dropout,
    patch_hflip,
    random_hflip,
    sample_beta,
    to_patches,
    token_mixup_cutmix,
)

SIZE = 64


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """(4, 64, 64, 3) uint8 NHWC real photos."""
    imgs = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        a = torch.from_numpy(np.ascontiguousarray(getattr(data, name)())).permute(2, 0, 1)[None].float()
        a = F.interpolate(a, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
        imgs.append(a.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0))
    return torch.stack(imgs).contiguous()


def to_float(x_nhwc: torch.Tensor) -> torch.Tensor:
    return x_nhwc.permute(0, 3, 1, 2).float() / 255.0


def to_uint8(x_nchw: torch.Tensor) -> torch.Tensor:
    return (x_nchw * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def perms_for(b: int, n: int, seed: int, orient: bool = False) -> torch.Tensor:
    """Keyed permutations; ``orient=True``: the flip defence's packed cells (permutation + N * orientation)."""
    keys = np.random.default_rng(seed).integers(0, 2**63, (b, n))
    return torch.from_numpy(make_permutations(keys, orient=orient))


def rs_float(x: torch.Tensor, perms: torch.Tensor, p: int) -> torch.Tensor:
    """RS on float NCHW with rs_permute's convention: out slot j = in patch perms[b, j]."""
    b, _, h, w = x.shape
    pt = to_patches(x, p)
    out = pt.gather(1, perms.view(b, -1, 1, 1, 1).expand_as(pt))
    return from_patches(out, (h // p, w // p))


def patch_multiset(x: torch.Tensor, p: int) -> list[list[bytes]]:
    pt = to_patches(x, p).contiguous()
    return [sorted(pt[i, j].numpy().tobytes() for j in range(pt.shape[1])) for i in range(pt.shape[0])]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------- helpers
@pytest.mark.parametrize("p", [8, 16])
def test_float_rs_helper_matches_reference_kernel(photos, p):
    perms = perms_for(4, (SIZE // p) ** 2, 1)
    assert torch.equal(rs_float(to_float(photos), perms, p), to_float(rs_permute(photos, perms, p)))
    assert torch.equal(from_patches(to_patches(to_float(photos), p), (SIZE // p,) * 2), to_float(photos))


# ----------------------------------------------------------------- RS
@pytest.mark.parametrize("p", [8, 16])
def test_patch_hflip_of_rs_is_rs_of_hflip(photos, p):
    gw = SIZE // p
    n = gw * gw
    perms = perms_for(4, n, 2)
    enc = to_float(rs_permute(photos, perms, p))
    out = patch_hflip(enc, p, p=1.0, generator=gen(0))
    flipped_plain = photos.flip(2)  # hflip of NHWC
    # multisets of patches equal, for an unrelated permutation of the flipped photo
    other = to_float(rs_permute(flipped_plain, perms_for(4, n, 3), p))
    assert patch_multiset(out, p) == patch_multiset(other, p)
    assert patch_multiset(out, p) != patch_multiset(enc, p)  # it did flip something
    # and exactly RS(hflip(x), perm') with perm'[k] = i*gw + (gw-1-j) for perm[k] = (i, j)
    perm2 = (perms // gw) * gw + (gw - 1 - perms % gw)
    assert torch.equal(out, to_float(rs_permute(flipped_plain.contiguous(), perm2, p)))


def test_patch_hflip_probability_is_per_image(photos):
    x = to_float(photos).repeat(8, 1, 1, 1)  # 32 images
    assert torch.equal(patch_hflip(x, 8, p=0.0, generator=gen(0)), x)
    out = patch_hflip(x, 8, p=0.5, generator=gen(0))
    per_patch = to_patches(x, 8)
    flipped = torch.tensor([torch.equal(o, f) for o, f in zip(to_patches(out, 8), per_patch.flip(-1))])
    same = torch.tensor([torch.equal(o, f) for o, f in zip(out, x)])
    assert bool((flipped ^ same).all())  # every image either fully flipped or untouched
    assert 4 < int(flipped.sum()) < 28
    assert torch.equal(out, patch_hflip(x, 8, p=0.5, generator=gen(0)))  # reproducible


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("value_range", [None, (0.0, 1.0)])
def test_color_jitter_commutes_with_rs(photos, seed, value_range):
    p = 8
    perms = perms_for(4, (SIZE // p) ** 2, seed + 10)
    x = to_float(photos)
    a = color_jitter(rs_float(x, perms, p), 0.4, 0.4, 0.4, gen(seed), value_range=value_range)
    b = rs_float(color_jitter(x, 0.4, 0.4, 0.4, gen(seed), value_range=value_range), perms, p)
    assert torch.equal(a, b)
    assert not torch.equal(a, rs_float(x, perms, p))
    if value_range is not None:
        assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_color_jitter_zero_strength_is_identity_and_draws_stay_aligned(photos):
    x = to_float(photos)
    assert torch.equal(color_jitter(x, 0, 0, 0, gen(0)), x)
    # turning brightness off does not change the contrast factors drawn
    only_c = color_jitter(x, 0.0, 0.5, 0.0, gen(5))
    both = color_jitter(x, 1e-12, 0.5, 0.0, gen(5))
    assert torch.allclose(only_c, both, atol=1e-5)


def test_token_cutmix_is_patch_set_of_two_sources(photos):
    p = 8
    n = (SIZE // p) ** 2
    x = to_float(rs_permute(photos, perms_for(4, n, 4), p))
    y = F.one_hot(torch.arange(4), 4).float()
    out, ys = token_mixup_cutmix(x, y, p, mixup_alpha=0.0, cutmix_alpha=1.0, generator=gen(3))
    own, partner, res = to_patches(x, p), to_patches(x.flip(0), p), to_patches(out, p)
    for i in range(4):
        is_own = torch.tensor([torch.equal(res[i, j], own[i, j]) for j in range(n)])
        is_partner = torch.tensor([torch.equal(res[i, j], partner[i, j]) for j in range(n)])
        assert bool((is_own | is_partner).all())
        assert not bool((is_own & is_partner).any())  # real photos: no identical patches at a slot
        taken = int(is_partner.sum())
        assert ys[i, 3 - i] == pytest.approx(taken / n, abs=1e-6)
        assert ys[i, i] == pytest.approx(1 - taken / n, abs=1e-6)
    assert torch.allclose(ys.sum(1), torch.ones(4))
    assert 0 < int((ys[:, torch.arange(4)] != 1).sum())  # something was taken somewhere


def test_token_cutmix_count_rule(photos):
    """k = floor((1 - lam) * N + 0.5) patches taken: label weights are multiples of 1/N."""
    p = 16
    n = (SIZE // p) ** 2
    x = to_float(photos).repeat(4, 1, 1, 1)
    y = F.one_hot(torch.arange(16), 16).float()
    _, ys = token_mixup_cutmix(x, y, p, mixup_alpha=0.0, cutmix_alpha=1.0, generator=gen(7))
    w = ys[torch.arange(16), torch.arange(16)] * n
    assert torch.allclose(w, w.round(), atol=1e-4)


def test_mixup_labels_and_pixels(photos):
    x = to_float(photos)
    y = F.one_hot(torch.arange(4), 4).float()
    out, ys = token_mixup_cutmix(x, y, 8, mixup_alpha=0.8, cutmix_alpha=0.0, generator=gen(1))
    assert torch.allclose(ys.sum(1), torch.ones(4))
    lam = ys[torch.arange(4), torch.arange(4)].view(4, 1, 1, 1)
    assert torch.allclose(out, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    assert bool(((lam > 0) & (lam < 1)).all())


def test_mix_switch_and_off(photos):
    x = to_float(photos)
    y = F.one_hot(torch.arange(4), 4).float()
    out, ys = token_mixup_cutmix(x, y, 8, 0.0, 0.0, generator=gen(0))
    assert torch.equal(out, x) and torch.equal(ys, y)
    out, ys = token_mixup_cutmix(x, y, 8, 0.8, 1.0, generator=gen(0), mix_prob=0.0)
    assert torch.equal(out, x) and torch.equal(ys, y)
    # both on: every image is either a cut (values from the two sources only) or a blend
    xs = x.repeat(4, 1, 1, 1)
    ys16 = F.one_hot(torch.arange(16), 16).float()
    out, ys = token_mixup_cutmix(xs, ys16, 8, 0.8, 1.0, 0.5, gen(2))
    assert torch.allclose(ys.sum(1), torch.ones(16))
    is_cut = ((out == xs) | (out == xs.flip(0))).flatten(1).all(1)
    assert 0 < int(is_cut.sum()) < 16


def test_box_cutmix_labels_match_area(photos):
    x = to_float(photos)
    y = F.one_hot(torch.arange(4), 4).float()
    for cell in (1, 4):
        out, ys = token_mixup_cutmix(x, y, cell, 0.0, 1.0, generator=gen(11), cutmix_mode="box")
        taken = ((out != x) & (out == x.flip(0))).any(1).float().mean(dim=(1, 2))
        own = (out == x).all(1).float().mean(dim=(1, 2))
        assert torch.allclose(ys[torch.arange(4), torch.arange(4)], own, atol=1e-6)
        assert torch.all(taken <= 1 - own + 1e-6)
        assert torch.allclose(ys.sum(1), torch.ones(4))


def test_sample_beta_moments():
    for a in (0.4, 0.8, 1.0, 2.0):
        s = sample_beta(a, 20000, gen(0))
        assert bool(((s >= 0) & (s <= 1)).all())
        assert float(s.mean()) == pytest.approx(0.5, abs=0.01)
        assert float(s.var()) == pytest.approx(1 / (4 * (2 * a + 1)), rel=0.06)
    assert torch.equal(sample_beta(0.8, 10, gen(3)), sample_beta(0.8, 10, gen(3)))


@pytest.mark.parametrize("fill", ["zero", "mean", 0.5])
def test_patch_dropout_exact_count(photos, fill):
    p = 8
    n = (SIZE // p) ** 2
    ratio = 0.3
    k = int(np.floor(ratio * n + 0.5))
    x = to_float(rs_permute(photos, perms_for(4, n, 6), p))
    out, mask = patch_dropout(x, p, ratio, gen(2), fill=fill, return_mask=True)
    assert mask.shape == (4, n) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [k] * 4
    po, px = to_patches(out, p), to_patches(x, p)
    assert torch.equal(po[~mask], px[~mask])
    if fill == "zero":
        assert bool((po[mask] == 0).all())
    elif fill == "mean":
        m = x.mean(dim=(0, 2, 3)).view(1, 3, 1, 1)
        assert torch.equal(po[mask], m.expand(int(mask.sum()), 3, p, p))
    else:
        assert bool((po[mask] == 0.5).all())
    assert torch.equal(patch_dropout(x, p, ratio, gen(2), fill=fill), out)
    # p=0 leaves everything; ratio 0 too
    assert torch.equal(patch_dropout(x, p, ratio, gen(2), p=0.0), x)
    assert torch.equal(patch_dropout(x, p, 0.0, gen(2)), x)


# ----------------------------------------------------------------- MI
@pytest.mark.parametrize("p", [8, 16])
def test_mi_commutes_with_hflip(photos, p):
    assert torch.equal(mi_mix(photos.flip(2).contiguous(), p), mi_mix(photos, p).flip(2))
    enc = to_float(mi_mix(photos, p))
    out = grid_crop_flip(enc, p // 2, shift_cells=0, p_flip=1.0, generator=gen(0))
    assert torch.equal(out, to_float(mi_mix(photos.flip(2).contiguous(), p)))
    assert torch.equal(random_hflip(enc, 1.0, gen(0)), out)


def naive_shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift one NCHW image by (dy, dx) pixels with zero fill, by slicing."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


@pytest.mark.parametrize("p", [8, 16])
def test_grid_shift_of_mi_is_mi_of_patch_shift(photos, p):
    dy = torch.tensor([1, -2, 0, 3])
    dx = torch.tensor([-1, 0, 2, -3])
    plain = to_float(photos)
    shifted_plain = grid_shift(plain, p, dy, dx)
    for i in range(4):
        assert torch.equal(shifted_plain[i], naive_shift(plain[i], int(dy[i]) * p, int(dx[i]) * p))
    enc_shift = grid_shift(to_float(mi_mix(photos, p)), p // 2, dy, dx)
    assert torch.equal(enc_shift, to_float(mi_mix(to_uint8(shifted_plain), p)))


def test_grid_crop_flip_draws_are_grid_aligned_candidates(photos):
    p, s = 16, 1
    enc = to_float(mi_mix(photos, p)).repeat(2, 1, 1, 1)
    out = grid_crop_flip(enc, p // 2, shift_cells=s, p_flip=0.5, generator=gen(4))
    assert torch.equal(out, grid_crop_flip(enc, p // 2, s, 0.5, gen(4)))
    for i in range(enc.shape[0]):
        cands = [grid_shift(enc[i:i + 1], p // 2, torch.tensor([a]), torch.tensor([b]))
                 for a in range(-s, s + 1) for b in range(-s, s + 1)]
        cands += [c.flip(-1) for c in cands]
        assert any(torch.equal(out[i:i + 1], c) for c in cands)


# ----------------------------------------------------------------- build_augment
@pytest.mark.parametrize("kind", ["rs", "mi", "mi-shuffle", "none", "rs-flip", "mi-shuffle-flip"])
def test_build_augment_runs_and_returns_soft_targets(photos, kind):
    p = 8
    flip = kind.endswith("-flip")
    scheme = Scheme.named(kind.removesuffix("-flip"), patch=p, height=SIZE, width=SIZE, flip=flip)
    if flip:
        enc = encrypt(scheme, photos, perms_for(4, scheme.num_patches, 8, orient=True))
    elif kind == "rs":
        enc = rs_permute(photos, perms_for(4, scheme.num_patches, 8), p)
    elif kind == "mi-shuffle":
        enc = rs_permute(mi_mix(photos, p), perms_for(4, scheme.num_patches, 8), p // 2)
    elif kind == "mi":
        enc = mi_mix(photos, p)
    else:
        enc = photos
    x = to_float(enc).repeat(2, 1, 1, 1)
    y = torch.tensor([0, 3, 5, 9, 1, 2, 3, 4])
    aug = build_augment(scheme, 10)
    out, ys = aug(x, y, gen(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert ys.shape == (8, 10) and ys.dtype == torch.float32
    assert torch.allclose(ys.sum(1), torch.ones(8))
    assert bool((ys >= 0).all())
    assert not torch.equal(out, x)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    out2, ys2 = aug(x, y, gen(0))
    assert torch.equal(out, out2) and torch.equal(ys, ys2)
    # soft targets in, soft targets out
    _, ys3 = aug(x, F.one_hot(y, 10).float(), gen(0))
    assert torch.equal(ys3, ys)
    # half precision runs too
    out_h, _ = aug(x.to(torch.bfloat16), y, gen(0))
    assert out_h.dtype == torch.bfloat16
    # disabled: identity with one-hot targets
    off = build_augment(scheme, 10, {"enabled": False})
    xo, yo = off(x, y, gen(0))
    assert xo is x and torch.equal(yo, F.one_hot(y, 10).float())


def test_build_augment_all_parts_off_is_identity(photos):
    scheme = Scheme(kind="rs", patch=8, height=SIZE, width=SIZE)
    cfg = {"hflip": 0, "brightness": 0, "contrast": 0, "saturation": 0, "mixup_alpha": 0,
           "cutmix_alpha": 0, "patch_drop_prob": 0}
    x = to_float(photos)
    out, ys = build_augment(scheme, 4, cfg)(x, torch.arange(4), gen(0))
    assert torch.equal(out, x) and torch.equal(ys, torch.eye(4))


def test_build_augment_validates(photos):
    scheme = Scheme(kind="mi", patch=8, height=SIZE, width=SIZE)
    with pytest.raises(ValueError, match="unknown augmentation option"):
        build_augment(scheme, 10, {"mixup": 0.2})
    aug = build_augment(scheme, 10)
    assert aug.config["shift_cells"] == 1 and aug.config["cutmix_alpha"] == 0.0
    assert set(aug.config) == set(DEFAULTS["common"])
    with pytest.raises(ValueError, match="scheme mi images are"):
        aug(to_float(photos), torch.arange(4), gen(0))  # plain 64x64, MI is 32x32
    with pytest.raises(ValueError, match="float NCHW"):
        aug(mi_mix(photos, 8), torch.arange(4), gen(0))  # uint8 NHWC
    with pytest.raises(ValueError, match="generator"):
        patch_hflip(to_float(photos).to("meta"), 8, 0.5, gen(0))  # a CPU generator for a non-CPU batch


@pytest.mark.parametrize("p", [8, 16])
def test_mi_box_cutmix_is_mi_of_patch_aligned_cutmix(photos, p):
    """Same draws on the plain grid (cell P) and the MI grid (cell P/2): identical boxes, exact MI."""
    y = F.one_hot(torch.arange(4), 4).float()
    plain_cut, y_plain = token_mixup_cutmix(to_float(photos), y, p, 0.0, 1.0, generator=gen(9), cutmix_mode="box")
    mi_cut, y_mi = token_mixup_cutmix(to_float(mi_mix(photos, p)), y, p // 2, 0.0, 1.0, generator=gen(9),
                                      cutmix_mode="box")
    assert torch.equal(mi_cut, to_float(mi_mix(to_uint8(plain_cut), p)))
    assert torch.equal(y_mi, y_plain)
    aug = build_augment(Scheme(kind="mi", patch=p, height=SIZE, width=SIZE), 4, {"cutmix_alpha": 1.0})
    out, ys = aug(to_float(mi_mix(photos, p)), torch.arange(4), gen(0))
    assert out.shape == (4, 3, SIZE // 2, SIZE // 2) and torch.allclose(ys.sum(1), torch.ones(4))


# ----------------------------------------------------------------- mi-shuffle
@pytest.mark.parametrize("p", [8, 16])
def test_cell_hflip_of_mi_shuffle_is_mi_shuffle_of_hflip(photos, p):
    """Flipping every stored cell of mi-shuffle(x) gives exactly mi-shuffle(hflip x) with a matching permutation:
    flipping a patch swaps and flips its sub-patches, so their (rounded) mean is the flipped cell."""
    gw = SIZE // p
    perms = perms_for(4, gw * gw, 5)
    enc = to_float(rs_permute(mi_mix(photos, p), perms, p // 2))
    out = patch_hflip(enc, p // 2, p=1.0, generator=gen(0))
    perm2 = (perms // gw) * gw + (gw - 1 - perms % gw)
    want = to_float(rs_permute(mi_mix(photos.flip(2).contiguous(), p), perm2, p // 2))
    assert torch.equal(out, want)
    assert not torch.equal(out, enc)


def test_mi_shuffle_augment_is_the_shuffled_recipe(photos):
    """mi-shuffle takes the order-free recipe of rs (cell flips, patch dropout, token mixing) on the MI cell,
    never grid shifts (positions mean nothing once the cells are shuffled)."""
    aug = build_augment(Scheme.named("mi-shuffle", 8, SIZE, SIZE), 10)
    assert aug.config["shift_cells"] == 0 and aug.config["patch_drop_prob"] == 0.25
    enc = to_float(rs_permute(mi_mix(photos, 8), perms_for(4, 64, 2), 4))
    only_flip = build_augment(Scheme.named("mi-shuffle", 8, SIZE, SIZE), 10,
                              {"brightness": 0, "contrast": 0, "saturation": 0, "mixup_alpha": 0, "cutmix_alpha": 0,
                               "patch_drop_prob": 0, "hflip": 1.0})
    out, _ = only_flip(enc, torch.arange(4), gen(0))
    assert torch.equal(out, patch_hflip(enc, 4, p=1.0, generator=gen(0)))


# ----------------------------------------------------------------- the flip defence
def hflip_conjugates(cell: int) -> torch.Tensor:
    """(8,) table q[o]: hflip of a cell in orientation o is the hflipped cell in orientation q[o]
    (the kernel's orientation convention), found by trying all eight on a generic cell."""
    c = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, cell, cell, 3), dtype=np.uint8))
    one = torch.zeros(1, 1, dtype=torch.long)

    def turn(img, o):
        return rs_permute(img.contiguous(), one, cell, orient=torch.full((1, 1), o))

    table = []
    for o in range(8):
        hits = [q for q in range(8) if torch.equal(turn(c, o).flip(2), turn(c.flip(2), q))]
        assert len(hits) == 1  # a generic cell: its eight orientations are all different
        table.append(hits[0])
    return torch.tensor(table)


@pytest.mark.parametrize("p", [8, 16])
@pytest.mark.parametrize("name,gap", [("rs", 0), ("rs", 1), ("mi-shuffle", 1)])
def test_patch_hflip_of_flip_encryption_is_flip_encryption_of_hflip(photos, name, gap, p):
    """Flipping every stored cell of a flip encryption of x gives exactly a flip encryption of hflip(x): the
    cell slots move as without flip, and each orientation o becomes its conjugate by the mirror."""
    s = Scheme.named(name, patch=p, height=SIZE, width=SIZE, gap=gap, flip=True)
    n, gw, cell = s.num_patches, s.grid[1], s.out_cell
    cells = perms_for(4, n, 12, orient=True)
    enc = to_float(encrypt(s, photos, cells))
    out = patch_hflip(enc, cell, p=1.0, generator=gen(0))
    perms, orient = cells % n, cells // n
    assert len(orient.unique()) == 8
    perm2 = (perms // gw) * gw + (gw - 1 - perms % gw)
    q = hflip_conjugates(cell)
    assert torch.equal(q[q], torch.arange(8)) and not torch.equal(q, torch.arange(8))  # an involution, not trivial
    mirrored = photos.flip(2).contiguous()
    assert torch.equal(out, to_float(encrypt(s, mirrored, perm2 + n * q[orient])))
    assert not torch.equal(out, to_float(encrypt(s, mirrored, perm2 + n * orient)))  # the orientations do change
    assert not torch.equal(out, enc)


@pytest.mark.parametrize("name", ["rs", "mi-shuffle"])
def test_flip_augment_is_the_non_flip_recipe_without_cell_flips(photos, name):
    plain = build_augment(Scheme.named(name, 8, SIZE, SIZE), 10)
    s = Scheme.named(name, 8, SIZE, SIZE, flip=True)
    aug = build_augment(s, 10)
    assert aug.config == {**plain.config, "hflip": 0.0}
    enc = to_float(encrypt(s, photos, perms_for(4, s.num_patches, 3, orient=True)))
    # patch_hflip is still there on request (and valid: see the test above)
    only_flip = build_augment(s, 10, {"brightness": 0, "contrast": 0, "saturation": 0, "mixup_alpha": 0,
                                      "cutmix_alpha": 0, "patch_drop_prob": 0, "hflip": 1.0})
    out, _ = only_flip(enc, torch.arange(4), gen(0))
    assert torch.equal(out, patch_hflip(enc, s.out_cell, p=1.0, generator=gen(0)))
    # the default recipe: jitter, patch dropout on the cell, token mixing
    out, ys = aug(enc, torch.arange(4), gen(0))
    assert out.shape == enc.shape and not torch.equal(out, enc) and torch.allclose(ys.sum(1), torch.ones(4))
