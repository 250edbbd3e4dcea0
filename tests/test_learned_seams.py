"""The learned seam model of the audit (himr_pipe.audit.learned): deterministic from its seed, never worse than
the hand-crafted measure on a lossless puzzle, and a drop-in for the seam costs of the flip attack."""

from __future__ import annotations

import numpy as np
import pytest

from himr_pipe.audit import learned
from himr_pipe.audit.seams import load_stored
from himr_pipe.audit.solver import solve_stored


def _synthetic(size: int, seed: int) -> np.ndarray:
    """A smooth random colour field (sums of a few random waves): a small lossless puzzle with real seams."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    img = np.zeros((size, size, 3))
    for _ in range(6):
        fy, fx, ph = rng.uniform(-6, 6), rng.uniform(-6, 6), rng.uniform(0, 2 * np.pi)
        img += rng.uniform(10, 40, 3) * np.sin(2 * np.pi * (fy * y + fx * x) + ph)[..., None]
    return np.clip(img + 128, 0, 255).astype(np.uint8)


def test_training_is_deterministic_from_its_seed():
    data = learned.training_set("mi-shuffle", 16, 0, "png", 2, seed=1, size=64)
    a, ra = learned.fit(data, seed=3, steps=4, anchors=16)
    b, rb = learned.fit(data, seed=3, steps=4, anchors=16)
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k
    assert ra == rb
    assert ra["gamma"] == 0 or ra["learned"] - ra["hand"] >= learned.MIN_GAIN    # the audit's gate
    c, _ = learned.fit(data, seed=4, steps=4, anchors=16)
    assert not np.array_equal(a["U"], c["U"])


@pytest.mark.parametrize("name,gap", [("mi-shuffle", 0), ("rs", 1)])
def test_combined_cost_ranks_true_neighbours_at_least_as_well_on_a_lossless_puzzle(name, gap):
    """The shipped model of the lossless setting (or, where none ships, a model fitted here) combined with the
    hand-crafted dissimilarity ranks the true right-of pairs first at least as often as the measure alone."""
    rng = np.random.default_rng(0)
    p = learned.make_training_puzzle(_synthetic(96, 0), name, 16, gap, "png", rng)
    m = learned.load_models().get(p["key"])
    if m is None:
        m, _ = learned.fit(learned.training_set(name, 16, gap, "png", 3, seed=0, size=96), seed=0, steps=30)
    k = float(m["gamma"]) / float(m["alpha"])       # the weight the audit uses (0 below learned.MIN_GAIN)
    combined = p["D"] * np.exp(-k * learned.net_scores(m, p["A"], p["B"], p["cell"]))
    assert learned.top1(combined, p["pairs"]) >= learned.top1(p["D"], p["pairs"])


def test_learned_attack_gives_a_valid_flip_layout():
    """solve_stored(learned=True) on a small mi-shuffle --flip PNG puzzle: every stored piece once, in one
    orientation; and where no model fits a setting, the costs are the hand-crafted ones unchanged."""
    import io

    from PIL import Image

    import torch

    from himr_pipe.encode import choose_format
    from himr_pipe.kernels import encrypt
    from himr_pipe.kernels.perm import make_permutations
    from himr_pipe.scheme import Scheme

    rng = np.random.default_rng(2)
    sch = Scheme.named("mi-shuffle", 16, 64, 64, 0, 0.0, flip=True)
    n = sch.num_patches
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format="png")
    st = load_stored(buf.getvalue(), "png")
    D = np.ones((2, 8 * n, 8 * n), np.float32)
    assert learned.learned_cost(st, 8, 5, D, True, True) is D            # no model for gap 5
    img = _synthetic(64, 1)
    cells = make_permutations(rng.integers(0, 2 ** 62, (1, n), dtype=np.int64), orient=True)
    f = choose_format("png", sch)
    blob = f.encode(encrypt(sch, torch.from_numpy(img[None].copy()), cells)[0].numpy())
    lay = solve_stored(load_stored(blob, f.ext), sch.out_cell, sch.grid, 0, mixed=True, orient=True, learned=True)
    assert sorted((lay % n).ravel().tolist()) == list(range(n))


def test_upright_costs_are_the_upright_block_of_the_oriented_ones():
    """Without --flip the model scores the upright pieces only: the same numbers as the upright block of the
    8N virtual pieces, below-of included (the transposes' right-of)."""
    import io

    from PIL import Image

    img = _synthetic(48, 3)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="png")
    st = load_stored(buf.getvalue(), "png")
    data = learned.training_set("mi-shuffle", 16, 0, "png", 1, seed=0, size=48)
    m, _ = learned.fit(data, seed=0, steps=2, anchors=8)
    m["gamma"] = np.float32(1.0)
    n0 = (48 // 8) ** 2
    up = learned.learned_cost(st, 8, 0, np.ones((2, n0, n0), np.float32), True, False, model=m)
    full = learned.learned_cost(st, 8, 0, np.ones((2, 8 * n0, 8 * n0), np.float32), True, True, model=m)
    assert np.allclose(up, full[:, :n0, :n0], rtol=1e-5)
    assert not np.allclose(up, 1.0)
