"""The Triton kernels against the torch reference: bit-identical, property-based over shapes.

On a CPU-only machine they run under TRITON_INTERPRET=1 (set in conftest.py before triton is
imported), so batches stay small; on a GPU the same tests run compiled on the device. The shapes
are chosen to reach every chunk width the kernels pick (16, 8, 4, 2 and 1 bytes), programs that
span several images and images that span several programs.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from himr_pipe.kernels import make_permutations
from himr_pipe.kernels import reference as ref
from himr_pipe.kernels import triton_kernels as tk

DEV = "cuda" if torch.cuda.is_available() else "cpu"

# patch sizes: odd ones (RS only, 1-byte chunks when C is odd), 6 and 12 (2- and 4-byte chunks with C=3)
RS_PATCHES = [1, 2, 3, 4, 5, 6, 8, 12, 16]
MI_PATCHES = [2, 4, 6, 8, 12, 16]
BLOCKS = st.sampled_from([None, 32, 256])  # None: the module default; small blocks: many programs per image


def shapes(patches):
    return st.tuples(
        st.integers(1, 3),             # batch
        st.integers(1, 3),             # grid rows
        st.integers(1, 3),             # grid cols (non-square grids included)
        st.sampled_from(patches),
        st.sampled_from([1, 3]),       # channels
    )


def _batch(shape, seed):
    b, gh, gw, p, c = shape
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, 256, (b, gh * p, gw * p, c), dtype=np.uint8))
    perms = torch.from_numpy(make_permutations(rng.integers(0, 2**63, (b, gh * gw))))
    return x, perms, p


@settings(max_examples=30, deadline=None)
@given(shapes(RS_PATCHES), st.integers(0, 2**32 - 1), BLOCKS)
def test_rs_bit_identical_and_round_trip(shape, seed, block):
    x, perms, p = _batch(shape, seed)
    want = ref.rs_permute(x, perms, p)
    got = tk.rs_permute(x.to(DEV), perms.to(DEV), p, block=block)
    assert torch.equal(got.cpu(), want)
    back = tk.rs_unpermute(got, perms.to(DEV), p, block=block)
    assert torch.equal(back.cpu(), x)
    assert torch.equal(back.cpu(), ref.rs_unpermute(want, perms, p))


@settings(max_examples=25, deadline=None)
@given(shapes(MI_PATCHES), st.integers(0, 2**32 - 1), BLOCKS)
def test_mi_bit_identical(shape, seed, block):
    x, _, p = _batch(shape, seed)
    assert torch.equal(tk.mi_mix(x.to(DEV), p, block=block).cpu(), ref.mi_mix(x, p))


# (patch, channels, RS chunk bytes, MI chunk bytes or None for an odd patch)
WIDTHS = [(16, 3, 16, 8), (32, 3, 16, 16), (8, 3, 8, 4), (4, 3, 4, 2), (12, 1, 4, 2), (6, 3, 2, 1),
          (14, 3, 2, 1), (3, 3, 1, None), (5, 1, 1, None), (16, 1, 16, 8), (4, 4, 16, 8), (2, 1, 2, 1)]


@pytest.mark.parametrize("p,c,rs_cb,mi_cb", WIDTHS)
def test_every_chunk_width(p, c, rs_cb, mi_cb):
    assert tk._chunk_bytes(p * c) == rs_cb
    x, perms, _ = _batch((2, 2, 3, p, c), p * 10 + c)
    y = tk.rs_permute(x.to(DEV), perms.to(DEV), p, block=64)
    assert torch.equal(y.cpu(), ref.rs_permute(x, perms, p))
    assert torch.equal(tk.rs_unpermute(y, perms.to(DEV), p).cpu(), x)
    if mi_cb is not None:
        assert tk._chunk_bytes(p // 2 * c) == mi_cb
        assert torch.equal(tk.mi_mix(x.to(DEV), p, block=64).cpu(), ref.mi_mix(x, p))


def test_misaligned_buffers_fall_back_to_narrower_chunks():
    x, perms, p = _batch((2, 2, 2, 16, 3), 5)
    buf = torch.empty(x.numel() + 1, dtype=torch.uint8, device=DEV)
    xm = buf[1:].view(x.shape)             # an odd address: only 1-byte chunks fit
    xm.copy_(x)
    assert tk._chunk_bytes(48, xm) == 1
    assert torch.equal(tk.rs_permute(xm, perms.to(DEV), p).cpu(), ref.rs_permute(x, perms, p))
    assert torch.equal(tk.mi_mix(xm, p).cpu(), ref.mi_mix(x, p))
    out = torch.empty(x.numel() + 2, dtype=torch.uint8, device=DEV)[2:].view(x.shape)  # 2-byte aligned out
    assert torch.equal(tk.rs_unpermute(tk.rs_permute(x.to(DEV), perms.to(DEV), p), perms.to(DEV), p, out=out).cpu(), x)


def test_non_contiguous_input_and_perm_types():
    x, perms, p = _batch((2, 2, 3, 8, 3), 6)
    nchw = x.permute(0, 3, 1, 2).contiguous().to(DEV)
    xs = nchw.permute(0, 2, 3, 1)          # an NHWC view of an NCHW tensor: not contiguous
    assert not xs.is_contiguous()
    want = ref.rs_permute(x, perms, p)
    for pm in (perms.to(DEV), perms.to(DEV).int(), perms.numpy(), perms.to(torch.int16)):
        assert torch.equal(tk.rs_permute(xs, pm, p).cpu(), want)
        assert torch.equal(tk.rs_unpermute(want.to(DEV), pm, p).cpu(), x)
    assert torch.equal(tk.mi_mix(xs, p).cpu(), ref.mi_mix(x, p))


def test_inverse_permutation_on_the_device():
    _, perms, _ = _batch((3, 3, 3, 4, 1), 7)
    assert torch.equal(tk._inverse(perms.to(DEV)).cpu().long(), torch.argsort(perms, dim=1))


def test_out_of_range_perms_are_clamped_not_read_out_of_bounds():
    x, perms, p = _batch((2, 2, 2, 4, 3), 8)
    bad = perms.clone()
    bad[0, 0], bad[1, 2] = 10**6, -5
    got = tk.rs_permute(x.to(DEV), bad.to(DEV), p)
    assert torch.equal(got.cpu(), ref.rs_permute(x, bad.clamp(0, perms.shape[1] - 1), p))


def test_out_is_written_and_returned_and_reused():
    outs = {"rs": None, "inv": None, "mi": None}
    for seed in (1, 2):                    # the same buffers for two batches, as the pipeline reuses them
        x, perms, p = _batch((3, 2, 3, 8, 3), seed)
        xd, pd = x.to(DEV), perms.to(DEV)
        if outs["rs"] is None:
            outs = {"rs": torch.empty_like(xd), "inv": torch.empty_like(xd),
                    "mi": torch.empty((3, x.shape[1] // 2, x.shape[2] // 2, 3), dtype=torch.uint8, device=DEV)}
        y = tk.rs_permute(xd, pd, p, out=outs["rs"])
        assert y is outs["rs"] and torch.equal(y.cpu(), ref.rs_permute(x, perms, p))
        back = tk.rs_unpermute(y, pd, p, out=outs["inv"])
        assert back is outs["inv"] and torch.equal(back.cpu(), x)
        m = tk.mi_mix(xd, p, out=outs["mi"])
        assert m is outs["mi"] and torch.equal(m.cpu(), ref.mi_mix(x, p))


def test_bad_out_is_rejected():
    x = torch.zeros((2, 8, 8, 3), dtype=torch.uint8, device=DEV)
    perms = torch.arange(4, device=DEV).repeat(2, 1)
    bad = {
        "shape": torch.empty((2, 8, 8, 1), dtype=torch.uint8, device=DEV),
        "dtype": torch.empty((2, 8, 8, 3), dtype=torch.int32, device=DEV),
        "device": torch.empty((2, 8, 8, 3), dtype=torch.uint8, device="meta"),
        "contiguous": torch.empty((2, 8, 3, 8), dtype=torch.uint8, device=DEV).transpose(2, 3),
        "overlap": x,
        "type": np.empty((2, 8, 8, 3), dtype=np.uint8),
    }
    for why, out in bad.items():
        for fn in (tk.rs_permute, tk.rs_unpermute):
            with pytest.raises(ValueError, match="out must"):
                fn(x, perms, 4, out=out)
    with pytest.raises(ValueError, match=r"out must be a uint8 tensor of shape \(2, 4, 4, 3\)"):
        tk.mi_mix(x, 4, out=torch.empty_like(x))
    with pytest.raises(ValueError, match="out must not overlap"):
        tk.mi_mix(x, 4, out=x.view(-1)[:96].view(2, 4, 4, 3))


def test_empty_batch():
    x = torch.zeros((0, 8, 8, 3), dtype=torch.uint8, device=DEV)
    perms = torch.zeros((0, 4), dtype=torch.int64, device=DEV)
    assert tk.rs_permute(x, perms, 4).shape == (0, 8, 8, 3)
    assert tk.rs_unpermute(x, perms, 4).shape == (0, 8, 8, 3)
    assert tk.mi_mix(x, 4).shape == (0, 4, 4, 3)
    out = torch.empty((0, 8, 8, 3), dtype=torch.uint8, device=DEV)
    assert tk.rs_permute(x, perms, 4, out=out) is out
    assert tk.rs_unpermute(x, perms, 4, out=out) is out
    out_mi = torch.empty((0, 4, 4, 3), dtype=torch.uint8, device=DEV)
    assert tk.mi_mix(x, 4, out=out_mi) is out_mi
    with pytest.raises(ValueError, match="out must"):
        tk.rs_permute(x, perms, 4, out=torch.empty((1, 8, 8, 3), dtype=torch.uint8, device=DEV))


def test_launch_overrides_and_module_defaults():
    x, perms, p = _batch((2, 2, 2, 4, 3), 9)
    want_rs, want_mi = ref.rs_permute(x, perms, p), ref.mi_mix(x, p)
    for block, nw in ((16, 1), (128, 2), (4096, 8)):
        assert torch.equal(tk.rs_permute(x.to(DEV), perms.to(DEV), p, block=block, num_warps=nw).cpu(), want_rs)
        assert torch.equal(tk.mi_mix(x.to(DEV), p, block=block, num_warps=nw).cpu(), want_mi)
    saved = tk.RS_BLOCK, tk.MI_BLOCK       # the sweep sets the module constants; they are read per call
    try:
        tk.RS_BLOCK, tk.MI_BLOCK = 16, 16
        assert torch.equal(tk.rs_permute(x.to(DEV), perms.to(DEV), p).cpu(), want_rs)
        assert torch.equal(tk.mi_mix(x.to(DEV), p).cpu(), want_mi)
    finally:
        tk.RS_BLOCK, tk.MI_BLOCK = saved
    for kw in ({"block": 48}, {"block": 0}, {"num_warps": 3}):
        with pytest.raises(ValueError, match="power of two"):
            tk.rs_permute(x.to(DEV), perms.to(DEV), p, **kw)
        with pytest.raises(ValueError, match="power of two"):
            tk.mi_mix(x.to(DEV), p, **kw)


def test_odd_patch_rs_and_extremes():
    # an odd patch (RS only) and the rounding extremes of MI
    x, perms, p = _batch((2, 2, 3, 5, 3), 1)
    assert torch.equal(tk.rs_permute(x.to(DEV), perms.to(DEV), p).cpu(), ref.rs_permute(x, perms, p))
    x = torch.tensor([[255, 255], [255, 255]], dtype=torch.uint8).reshape(1, 2, 2, 1)
    assert tk.mi_mix(x.to(DEV), 2).item() == 255
    x = torch.tensor([[1, 2], [2, 1]], dtype=torch.uint8).reshape(1, 2, 2, 1)
    assert tk.mi_mix(x.to(DEV), 2).item() == 2
    x = torch.tensor([[0, 0], [1, 0]], dtype=torch.uint8).reshape(1, 2, 2, 1)
    assert tk.mi_mix(x.to(DEV), 2).item() == 0
    x = torch.full((1, 8, 8, 4), 255, dtype=torch.uint8)  # SWAR at its largest sums, in every byte lane
    x[0, ::2, ::2] = 254
    assert torch.equal(tk.mi_mix(x.to(DEV), 8).cpu(), ref.mi_mix(x, 8))


def test_same_errors_as_the_reference():
    x = torch.zeros((1, 8, 8, 3), dtype=torch.uint8)
    with pytest.raises(ValueError, match="does not divide"):
        tk.rs_permute(x, torch.zeros((1, 4), dtype=torch.int64), 3)
    with pytest.raises(ValueError, match="perms must have shape"):
        tk.rs_permute(x, torch.zeros((1, 3), dtype=torch.int64), 4)
    with pytest.raises(ValueError, match="perms must have shape"):
        tk.rs_unpermute(x, torch.zeros((2, 4), dtype=torch.int64), 4)
    with pytest.raises(ValueError, match="even patch"):
        tk.mi_mix(torch.zeros((1, 6, 6, 3), dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match="uint8 NHWC"):
        tk.mi_mix(torch.zeros((1, 8, 8, 3), dtype=torch.int32), 4)
    assert tk.rs_permute(x[:0], torch.zeros((0, 4), dtype=torch.int64), 4).shape == (0, 8, 8, 3)


@pytest.mark.parametrize("name,gap,drop", [("rs", 1, 0.25), ("mi", 0, 0.0), ("none", 0, 0.0),
                                            ("mi-shuffle", 0, 0.0), ("mi-shuffle", 1, 0.25)])
def test_encrypt_dispatch_gives_the_same_result_for_both_implementations(name, gap, drop):
    from himr_pipe.kernels import decrypt, encrypt
    from himr_pipe.scheme import Scheme

    s = Scheme.named(name, 8, 16, 24, gap, drop)  # the shuffled schemes also with both defences
    x, perms, _ = _batch((2, 2, 3, 8, 3), 3)
    impl = "triton" if DEV == "cpu" else "auto"
    want = encrypt(s, x, perms, impl="torch")
    got = encrypt(s, x.to(DEV), perms, impl=impl)
    assert torch.equal(got.cpu(), want)
    assert torch.equal(decrypt(s, got, perms, impl=impl).cpu(), decrypt(s, want, perms, impl="torch"))


@settings(max_examples=15, deadline=None)
@given(shapes(MI_PATCHES), st.integers(0, 2**32 - 1))
def test_mi_shuffle_is_rs_of_mi_on_cells_and_decrypt_inverts_it(shape, seed):
    """mi-shuffle = RS with the MI cell (P/2) on the MI image, on both implementations; decrypt gives MI back."""
    from himr_pipe.kernels import decrypt, encrypt
    from himr_pipe.scheme import Scheme

    x, perms, p = _batch(shape, seed)
    b, h, w, _ = x.shape
    s = Scheme.named("mi-shuffle", p, h, w)
    mi = ref.mi_mix(x, p)
    want = ref.rs_permute(mi, perms, p // 2)
    got = encrypt(s, x.to(DEV), perms.to(DEV), impl="triton" if DEV == "cpu" else "auto")
    assert torch.equal(got.cpu(), want)
    assert torch.equal(encrypt(s, x, perms, impl="torch"), want)
    assert torch.equal(decrypt(s, want, perms, impl="torch"), mi)


# -- orientations (the flip defence): the orientation gather against the reference ------------------------
ORIENT_BLOCKS = st.sampled_from([None, 64, 512])  # element (byte) blocks: small ones span image boundaries


def _orient(b, n, seed, dtype=torch.int64):
    return torch.from_numpy(np.random.default_rng(seed + 1).integers(0, 8, (b, n))).to(dtype)


@settings(max_examples=25, deadline=None)
@given(shapes(RS_PATCHES), st.integers(0, 2**32 - 1), ORIENT_BLOCKS, st.sampled_from([torch.int32, torch.int64]))
def test_rs_orient_bit_identical_and_round_trip(shape, seed, block, dtype):
    x, perms, p = _batch(shape, seed)
    o = _orient(*perms.shape, seed, dtype)
    want = ref.rs_permute(x, perms, p, orient=o)
    got = tk.rs_permute(x.to(DEV), perms.to(DEV), p, orient=o.to(DEV), block=block)
    assert torch.equal(got.cpu(), want)
    back = tk.rs_unpermute(got, perms.to(DEV), p, orient=o.to(DEV), block=block)
    assert torch.equal(back.cpu(), x)
    assert torch.equal(tk.rs_unpermute(want.to(DEV), perms.to(DEV), p, orient=o.to(DEV)).cpu(),
                       ref.rs_unpermute(want, perms, p, orient=o))


@pytest.mark.parametrize("o", range(8))
def test_each_orientation_is_the_documented_symmetry(o):
    # one 3x3 cell (odd P) and one 4x4, in place (identity perms): output pixel (y, x) is source (x', y')
    # when bit 0 is set, else (y', x'); y' = P-1-y with bit 2, x' = P-1-x with bit 1
    for p in (3, 4):
        a = np.arange(p * p * 3, dtype=np.uint8).reshape(1, p, p, 3)
        want = np.empty_like(a)
        for y in range(p):
            for x in range(p):
                yy, xx = (p - 1 - y if o & 4 else y), (p - 1 - x if o & 2 else x)
                want[0, y, x] = a[0, xx, yy] if o & 1 else a[0, yy, xx]
        ident = torch.zeros((1, 1), dtype=torch.int64, device=DEV)
        oo = torch.full((1, 1), o, dtype=torch.int64, device=DEV)
        got = tk.rs_permute(torch.from_numpy(a).to(DEV), ident, p, orient=oo)
        assert np.array_equal(got.cpu().numpy(), want)
        assert torch.equal(tk.rs_unpermute(got, ident, p, orient=oo).cpu(), torch.from_numpy(a))


@pytest.mark.parametrize("p,c,word", [(4, 1, 1), (5, 3, 1), (3, 2, 2), (4, 4, 4), (2, 8, 4), (6, 6, 2)])
def test_rs_orient_pixel_words(p, c, word):
    # the gather moves bytes, or 2- or 4-byte words when the pixel allows; a misaligned buffer falls back to bytes
    x, perms, _ = _batch((2, 2, 3, p, c), p * 10 + c)
    o = _orient(*perms.shape, c)
    assert tk._pixel_word(c) == word
    want = ref.rs_permute(x, perms, p, orient=o)
    y = tk.rs_permute(x.to(DEV), perms.to(DEV), p, orient=o.to(DEV), block=128)
    assert torch.equal(y.cpu(), want)
    assert torch.equal(tk.rs_unpermute(y, perms.to(DEV), p, orient=o.to(DEV)).cpu(), x)
    buf = torch.empty(x.numel() + 1, dtype=torch.uint8, device=DEV)
    xm = buf[1:].view(x.shape)
    xm.copy_(x)
    assert tk._pixel_word(c, xm) == 1
    assert torch.equal(tk.rs_permute(xm, perms.to(DEV), p, orient=o.to(DEV)).cpu(), want)


def test_rs_orient_out_zero_orientations_and_clamping():
    outs = None
    for seed in (1, 2):                    # reused buffers, as in the pipeline
        x, perms, p = _batch((3, 2, 3, 8, 3), seed)
        o = _orient(3, 6, seed)
        xd, pd, od = x.to(DEV), perms.to(DEV), o.to(DEV)
        if outs is None:
            outs = torch.empty_like(xd), torch.empty_like(xd)
        y = tk.rs_permute(xd, pd, p, out=outs[0], orient=od)
        assert y is outs[0] and torch.equal(y.cpu(), ref.rs_permute(x, perms, p, orient=o))
        back = tk.rs_unpermute(y, pd, p, out=outs[1], orient=od)
        assert back is outs[1] and torch.equal(back.cpu(), x)
    # all zeros: the plain RS result, forward and inverse, for both orientation dtypes
    for dt in (torch.int32, torch.int64):
        zero = torch.zeros(perms.shape, dtype=dt, device=DEV)
        assert torch.equal(tk.rs_permute(xd, pd, p, orient=zero).cpu(), tk.rs_permute(xd, pd, p).cpu())
        assert torch.equal(tk.rs_unpermute(xd, pd, p, orient=zero).cpu(), tk.rs_unpermute(xd, pd, p).cpu())
    # out-of-range orientations are clamped to 0..7 as in the reference; out-of-range perms clamped
    bad_o = o.clone()
    bad_o[0, 0], bad_o[1, 2], bad_o[2, 5] = -3, 9, 2**40
    assert torch.equal(tk.rs_permute(xd, pd, p, orient=bad_o.to(DEV)).cpu(), ref.rs_permute(x, perms, p, orient=bad_o))
    assert torch.equal(tk.rs_unpermute(xd, pd, p, orient=bad_o.to(DEV)).cpu(),
                       ref.rs_unpermute(x, perms, p, orient=bad_o))
    bad_p = perms.clone()
    bad_p[0, 0], bad_p[1, 2] = 10**6, -5
    assert torch.equal(tk.rs_permute(xd, bad_p.to(DEV), p, orient=od).cpu(),
                       ref.rs_permute(x, bad_p.clamp(0, 5), p, orient=o))


def test_rs_orient_checks_launches_and_empty_batch():
    x, perms, p = _batch((2, 2, 2, 4, 3), 9)
    o = _orient(2, 4, 9)
    xd, pd, od = x.to(DEV), perms.to(DEV), o.to(DEV)
    want = ref.rs_permute(x, perms, p, orient=o)
    for block, nw in ((16, 1), (128, 2), (4096, 8)):
        assert torch.equal(tk.rs_permute(xd, pd, p, orient=od, block=block, num_warps=nw).cpu(), want)
    saved = tk.RS_ORIENT_BLOCK             # read per call, like the other launch constants
    try:
        tk.RS_ORIENT_BLOCK = 32
        assert torch.equal(tk.rs_permute(xd, pd, p, orient=od).cpu(), want)
    finally:
        tk.RS_ORIENT_BLOCK = saved
    for kw in ({"block": 48}, {"num_warps": 3}):
        with pytest.raises(ValueError, match="power of two"):
            tk.rs_permute(xd, pd, p, orient=od, **kw)
    for fn in (tk.rs_permute, tk.rs_unpermute):
        with pytest.raises(ValueError, match="orient must have shape"):
            fn(xd, pd, p, orient=od[:, :3])
        with pytest.raises(ValueError, match="out must"):
            fn(xd, pd, p, orient=od, out=xd)
        with pytest.raises(ValueError, match="out must"):
            fn(xd, pd, p, orient=od, out=torch.empty((2, 8, 8, 1), dtype=torch.uint8, device=DEV))
    empty = torch.zeros((0, 8, 8, 3), dtype=torch.uint8, device=DEV)
    none = torch.zeros((0, 4), dtype=torch.int64, device=DEV)
    assert tk.rs_permute(empty, none, 4, orient=none).shape == (0, 8, 8, 3)
    assert tk.rs_unpermute(empty, none, 4, orient=none).shape == (0, 8, 8, 3)


@pytest.mark.parametrize("name,gap", [("rs", 0), ("mi-shuffle", 1)])
def test_encrypt_flip_gives_the_same_result_for_both_implementations(name, gap):
    from himr_pipe.kernels import decrypt, encrypt
    from himr_pipe.scheme import Scheme

    s = Scheme.named(name, 8, 32, 32, gap=gap, flip=True)
    x = torch.from_numpy(np.random.default_rng(4).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    keys = np.random.default_rng(5).integers(0, 2**63, (2, s.num_patches))
    cells = make_permutations(keys, orient=True)           # packed perm + N * orientation
    assert cells.max() >= s.num_patches                    # some cell is turned
    impl = "triton" if DEV == "cpu" else "auto"
    want = encrypt(s, x, cells, impl="torch")
    got = encrypt(s, x.to(DEV), torch.from_numpy(cells).to(DEV), impl=impl)
    assert torch.equal(got.cpu(), want)
    plain = Scheme.named(name, 8, 32, 32, gap=gap)
    assert not torch.equal(want, encrypt(plain, x, cells % s.num_patches, impl="torch"))  # flip does turn cells
    assert torch.equal(decrypt(s, got, cells, impl=impl).cpu(), decrypt(s, want, cells, impl="torch"))
    if not gap:                                              # no blanked borders: decrypt is exact
        assert torch.equal(decrypt(s, got, cells, impl=impl).cpu(), x)
