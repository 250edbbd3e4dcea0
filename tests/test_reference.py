"""The torch reference kernels: exact against plain loops, property-based over shapes."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from himr_pipe.kernels import encrypt, make_permutations, mi_mix, rs_permute, rs_unpermute
from himr_pipe.scheme import Scheme


def naive_rs(x: np.ndarray, perms: np.ndarray, p: int) -> np.ndarray:
    b, h, w, c = x.shape
    gw = w // p
    out = np.empty_like(x)
    for i in range(b):
        for j, src in enumerate(perms[i]):
            oy, ox = divmod(j, gw)
            sy, sx = divmod(int(src), gw)
            out[i, oy * p:(oy + 1) * p, ox * p:(ox + 1) * p] = x[i, sy * p:(sy + 1) * p, sx * p:(sx + 1) * p]
    return out


def naive_mi(x: np.ndarray, p: int) -> np.ndarray:
    b, h, w, c = x.shape
    s = p // 2
    out = np.empty((b, h // 2, w // 2, c), np.uint8)
    for gy in range(h // p):
        for gx in range(w // p):
            blk = x[:, gy * p:(gy + 1) * p, gx * p:(gx + 1) * p].astype(np.int32)
            tot = blk[:, :s, :s] + blk[:, :s, s:] + blk[:, s:, :s] + blk[:, s:, s:]
            out[:, gy * s:(gy + 1) * s, gx * s:(gx + 1) * s] = (tot + 2) // 4
    return out


def test_rs_hand_made_case():
    # 2x2 grid of 1x1 patches, one channel: values 0 1 / 2 3
    x = torch.tensor([[0, 1], [2, 3]], dtype=torch.uint8).reshape(1, 2, 2, 1)
    y = rs_permute(x, torch.tensor([[3, 0, 2, 1]]), 1)
    assert y.flatten().tolist() == [3, 0, 2, 1]


def test_mi_rounding_rule_half_up():
    x = torch.tensor([[1, 2], [2, 1]], dtype=torch.uint8).reshape(1, 2, 2, 1)  # mean 1.5 -> 2
    assert mi_mix(x, 2).item() == 2
    x = torch.tensor([[1, 1], [1, 2]], dtype=torch.uint8).reshape(1, 2, 2, 1)  # mean 1.25 -> 1
    assert mi_mix(x, 2).item() == 1
    x = torch.full((1, 2, 2, 1), 255, dtype=torch.uint8)  # no overflow
    assert mi_mix(x, 2).item() == 255


shapes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.sampled_from([1, 2, 3, 4, 6]),
                   st.sampled_from([1, 3]))


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(0, 2**32 - 1))
def test_rs_matches_loop_and_inverts(shape, seed):
    b, gh, gw, p, c = shape
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (b, gh * p, gw * p, c), dtype=np.uint8)
    perms = make_permutations(rng.integers(0, 2**63, (b, gh * gw)))
    y = rs_permute(torch.from_numpy(x), torch.from_numpy(perms), p).numpy()
    assert np.array_equal(y, naive_rs(x, perms, p))
    back = rs_unpermute(torch.from_numpy(y), torch.from_numpy(perms), p).numpy()
    assert np.array_equal(back, x)


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(0, 2**32 - 1))
def test_mi_matches_loop(shape, seed):
    b, gh, gw, p, c = shape
    p = p + (p % 2)  # even
    x = np.random.default_rng(seed).integers(0, 256, (b, gh * p, gw * p, c), dtype=np.uint8)
    assert np.array_equal(mi_mix(torch.from_numpy(x), p).numpy(), naive_mi(x, p))


def test_permutations_are_permutations_and_independent():
    keys = np.random.default_rng(0).integers(0, 2**63, (64, 196))
    perms = make_permutations(keys)
    assert perms.shape == (64, 196) and perms.dtype == np.int64
    assert all(sorted(r) == list(range(196)) for r in perms.tolist())
    assert len({tuple(r) for r in perms.tolist()}) == 64
    assert np.array_equal(perms, make_permutations(keys.copy()))
    assert make_permutations(np.array([[30, 10, 20]])).tolist() == [[1, 2, 0]]
    assert torch.equal(make_permutations(torch.from_numpy(keys)), torch.from_numpy(perms))  # numpy == torch


def test_keystream_permutations_are_uniform_and_keyed():
    from himr_pipe.pipeline import sort_keys

    key = "ab" * 32
    a = make_permutations(sort_keys(key, (1, 0), 4000 * 4).reshape(4000, 4))
    # all 24 orderings of 4 patches, each close to 1/24 of the time
    counts = np.unique(a @ np.array([64, 16, 4, 1]), return_counts=True)[1]
    assert len(counts) == 24 and counts.min() > 4000 / 24 * 0.7 and counts.max() < 4000 / 24 * 1.3
    b = make_permutations(sort_keys(key, (1, 1), 16).reshape(4, 4))
    assert not np.array_equal(a[:4], b)  # another shard, another stream
    assert np.array_equal(sort_keys(key, (1, 0), 8), sort_keys(key, (1, 0), 8))
    assert not np.array_equal(sort_keys(key, (1, 0), 8), sort_keys("cd" * 32, (1, 0), 8))


def test_encrypt_dispatch_checks_shapes():
    s = Scheme("rs", 4, 8, 8)
    x = torch.zeros((2, 8, 8, 3), dtype=torch.uint8)
    with pytest.raises(ValueError, match="permutations"):
        encrypt(s, x)
    with pytest.raises(ValueError, match="scheme expects"):
        encrypt(Scheme("rs", 4, 16, 16), x, np.zeros((2, 16), np.int64))
    assert encrypt(Scheme("none", 4, 8, 8), x) is x
    assert encrypt(Scheme("mi", 4, 8, 8), x).shape == (2, 4, 4, 3)
