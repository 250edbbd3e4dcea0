"""The Triton kernels against the torch reference: bit-identical, property-based over shapes.

On a CPU-only machine they run under TRITON_INTERPRET=1 (set in conftest.py),
so grids stay small; on a GPU the same tests run compiled on the device.
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

shapes = st.tuples(
    st.integers(1, 3),                # batch
    st.integers(1, 3),                # grid rows
    st.integers(1, 3),                # grid cols (non-square grids included)
    st.integers(2, 16).map(lambda k: 2 * k),  # patch 4..32, even so that MI applies (word and byte paths)
    st.sampled_from([1, 3]),          # channels
)


def _batch(shape, seed):
    b, gh, gw, p, c = shape
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, 256, (b, gh * p, gw * p, c), dtype=np.uint8))
    perms = torch.from_numpy(make_permutations(rng.integers(0, 2**63, (b, gh * gw))))
    return x, perms, p


@settings(max_examples=25, deadline=None)
@given(shapes, st.integers(0, 2**32 - 1))
def test_rs_bit_identical_and_inverse(shape, seed):
    x, perms, p = _batch(shape, seed)
    want = ref.rs_permute(x, perms, p)
    got = tk.rs_permute(x.to(DEV), perms.to(DEV), p)
    assert torch.equal(got.cpu(), want)
    assert torch.equal(tk.rs_unpermute(got, perms.to(DEV), p).cpu(), x)


@settings(max_examples=25, deadline=None)
@given(shapes, st.integers(0, 2**32 - 1))
def test_mi_bit_identical(shape, seed):
    x, _, p = _batch(shape, seed)
    assert torch.equal(tk.mi_mix(x.to(DEV), p).cpu(), ref.mi_mix(x, p))


def test_odd_patch_rs_and_extremes():
    # an odd patch (RS only) and the rounding extremes of MI
    x, perms, p = _batch((2, 2, 3, 5, 3), 1)
    assert torch.equal(tk.rs_permute(x.to(DEV), perms.to(DEV), p).cpu(), ref.rs_permute(x, perms, p))
    x = torch.tensor([[255, 255], [255, 255]], dtype=torch.uint8).reshape(1, 2, 2, 1)
    assert tk.mi_mix(x.to(DEV), 2).item() == 255
    x = torch.tensor([[1, 2], [2, 1]], dtype=torch.uint8).reshape(1, 2, 2, 1)
    assert tk.mi_mix(x.to(DEV), 2).item() == 2


def test_same_errors_as_the_reference():
    x = torch.zeros((1, 8, 8, 3), dtype=torch.uint8)
    with pytest.raises(ValueError, match="does not divide"):
        tk.rs_permute(x, torch.zeros((1, 4), dtype=torch.int64), 3)
    with pytest.raises(ValueError, match="perms must have shape"):
        tk.rs_permute(x, torch.zeros((1, 3), dtype=torch.int64), 4)
    with pytest.raises(ValueError, match="even patch"):
        tk.mi_mix(torch.zeros((1, 6, 6, 3), dtype=torch.uint8), 3)
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
@given(shapes, st.integers(0, 2**32 - 1))
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
