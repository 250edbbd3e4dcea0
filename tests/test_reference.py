"""The torch reference kernels: exact against plain loops, property-based over shapes."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from himr_pipe.kernels import decrypt, encrypt, make_permutations, mi_mix, rs_permute, rs_unpermute
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
    from himr_pipe.keys import permutation_keys

    key = "ab" * 32
    a = make_permutations(permutation_keys(key, 0, 4000, 4))
    # all 24 orderings of 4 patches, each close to 1/24 of the time
    counts = np.unique(a @ np.array([64, 16, 4, 1]), return_counts=True)[1]
    assert len(counts) == 24 and counts.min() > 4000 / 24 * 0.7 and counts.max() < 4000 / 24 * 1.3
    b = make_permutations(permutation_keys(key, 1, 4, 4))
    assert not np.array_equal(a[:4], b)  # another shard, another stream
    assert np.array_equal(permutation_keys(key, 0, 2, 4), permutation_keys(key, 0, 2, 4))
    assert not np.array_equal(permutation_keys(key, 0, 2, 4), permutation_keys("cd" * 32, 0, 2, 4))


def test_key_streams_are_the_ones_every_existing_output_was_made_with():
    """The named streams reproduce, value for value, what the pipeline drew before they had names (the stream
    contexts are part of the output's definition: a change would change every shard of a seeded job)."""
    import hashlib

    from himr_pipe import keys

    k = keys.key_from_seed(7)
    assert k[:16] == "578ab8ed713dec0f"
    assert keys.sample_order(k, 12).tolist() == [10, 8, 4, 11, 1, 7, 5, 2, 9, 6, 3, 0]
    assert keys.permutation_keys(k, 3, 2, 4).tolist() == [
        [2778922032070096471, 747538780792956532, 5969390369646693092, 7108599857316342819],
        [6893716494819273074, 1454269947286082596, 4253383430452024785, 5280328972334158814]]
    assert hashlib.sha256(keys.permutation_keys(k, 0, 1000, 196).tobytes()).hexdigest() == \
        "6e089f9fa9591a735d344bd87011492db7469bf86cf286a47e54ce2ae44958af"
    assert hashlib.sha256(keys.view_draws(k, 5, 7).tobytes()).hexdigest() == \
        "d43178438277fd3bfa356ee14e128ac7e7f5cd9caeea98932649172ea64240ca"
    assert keys.seed_digest(7, k) != keys.seed_digest(8, k) and len(keys.new_key()) == 64

def test_encrypt_dispatch_checks_shapes():
    s = Scheme("rs", 4, 8, 8)
    x = torch.zeros((2, 8, 8, 3), dtype=torch.uint8)
    with pytest.raises(ValueError, match="permutations"):
        encrypt(s, x)
    with pytest.raises(ValueError, match="scheme expects"):
        encrypt(Scheme("rs", 4, 16, 16), x, np.zeros((2, 16), np.int64))
    assert encrypt(Scheme("none", 4, 8, 8), x) is x
    assert encrypt(Scheme("mi", 4, 8, 8), x).shape == (2, 4, 4, 3)


def _turn(cell: np.ndarray, o: int) -> np.ndarray:
    """Orientation o by hand: transpose (bit 0), then reverse the columns (bit 1), then the rows (bit 2)."""
    if o & 1:
        cell = cell.transpose(1, 0, 2)
    if o & 2:
        cell = cell[:, ::-1]
    if o & 4:
        cell = cell[::-1]
    return cell


@pytest.mark.parametrize("patch,c", [(4, 3), (5, 1), (8, 3)])
def test_flip_turns_every_cell_as_the_convention_says_and_inverts(patch, c):
    from himr_pipe.kernels.reference import INVERSE_ORIENTATION, rs_permute, rs_unpermute

    rng = np.random.default_rng(patch)
    x = torch.from_numpy(rng.integers(0, 256, (3, 2 * patch, 3 * patch, c), dtype=np.uint8))
    perms = torch.from_numpy(np.stack([rng.permutation(6) for _ in range(3)]))
    orient = torch.from_numpy(rng.integers(0, 8, (3, 6)))
    orient[0] = torch.arange(6)      # every code appears
    orient[1, :2] = torch.tensor([6, 7])
    y = rs_permute(x, perms, patch, orient=orient).numpy()
    xs = x.numpy()
    for b in range(3):
        for j in range(6):
            s = int(perms[b, j])
            src = xs[b, (s // 3) * patch:(s // 3 + 1) * patch, (s % 3) * patch:(s % 3 + 1) * patch]
            out = y[b, (j // 3) * patch:(j // 3 + 1) * patch, (j % 3) * patch:(j % 3 + 1) * patch]
            assert np.array_equal(out, _turn(src, int(orient[b, j]))), (b, j)
    assert torch.equal(rs_unpermute(torch.from_numpy(y), perms, patch, orient=orient), x)
    assert torch.equal(rs_permute(x, perms, patch, orient=torch.zeros_like(orient)), rs_permute(x, perms, patch))
    cell = np.arange(patch * patch).reshape(patch, patch, 1)
    for o in range(8):
        assert np.array_equal(_turn(_turn(cell, o), INVERSE_ORIENTATION[o]), cell)


def test_flip_orientations_come_with_the_permutation_from_the_same_keys():
    """make_permutations(keys, orient=True) packs perm + N * o: the permutation is the one without flip, the
    orientation the low 3 bits of the landing cell's key (uniform over the 8), numpy == torch."""
    from himr_pipe.kernels.perm import split_cells

    keys = np.random.default_rng(3).integers(0, 2**63, (500, 16))
    cells = make_permutations(keys, orient=True)
    perm, o = split_cells(cells, 16)
    assert np.array_equal(perm, make_permutations(keys))
    assert np.array_equal(o, np.take_along_axis(keys, perm, 1) & 7)
    counts = np.bincount(o.ravel(), minlength=8)
    assert counts.min() > 1000 * 0.85 and counts.max() < 1000 * 1.15   # 8000 draws, 1000 expected each
    assert torch.equal(make_permutations(torch.from_numpy(keys), orient=True), torch.from_numpy(cells))
    s = Scheme("rs", 4, 16, 16, flip=True)
    x = torch.from_numpy(np.random.default_rng(4).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    y = encrypt(s, x, cells[:2])
    assert not torch.equal(y, encrypt(Scheme("rs", 4, 16, 16), x, perm[:2]))
    assert torch.equal(decrypt(s, y, cells[:2]), x)
