"""Detection augmentation on stored MI images commutes exactly with MI, boxes included (a real photo)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from himr_pipe.kernels.reference import mi_mix
from himr_pipe.train.det_augment import DetectionAugment, hflip, jitter, shift

P = 16


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.fromarray(data.coffee()).resize((256, 192))).copy())  # H=192, W=256


BOXES = torch.tensor([[0.30, 0.40, 0.20, 0.30], [0.90, 0.85, 0.15, 0.20], [0.55, 0.10, 0.40, 0.12]],
                     dtype=torch.float64)
LABELS = torch.tensor([0, 3, 1])


def mi(x: torch.Tensor) -> torch.Tensor:
    return mi_mix(x[None], P)[0]


def test_flip_commutes_with_mi_exactly(photo):
    a, ba = hflip(photo, BOXES)
    b, bb = hflip(mi(photo), BOXES)
    assert torch.equal(mi(a), b) and torch.equal(ba, bb)
    assert torch.allclose(ba[:, 0], 1 - BOXES[:, 0]) and not torch.equal(b, mi(photo))


@pytest.mark.parametrize("cells", [(1, 0), (-2, 3), (5, -4), (0, -1)])
def test_shift_by_whole_cells_commutes_with_mi_exactly(photo, cells):
    cx, cy = cells
    a, ba, la = shift(photo, BOXES, LABELS, cx * P, cy * P, min_px=2.0)          # plain: P pixels per cell
    b, bb, lb = shift(mi(photo), BOXES, LABELS, cx * P // 2, cy * P // 2, min_px=1.0)  # stored: P/2
    assert torch.equal(mi(a), b)
    assert torch.equal(la, lb) and torch.allclose(ba, bb, atol=1e-12)
    # the boxes moved with the pixels and stayed inside the canvas
    assert (bb[:, :2] - bb[:, 2:] / 2 >= -1e-12).all() and (bb[:, :2] + bb[:, 2:] / 2 <= 1 + 1e-12).all()


def test_a_box_shifted_off_the_canvas_is_dropped_with_its_label(photo):
    img, b, lab = shift(mi(photo), BOXES, LABELS, 10 * 8, 0)  # 10 cells right: the right-hand box leaves
    assert lab.tolist() == [0, 1] and len(b) == 2 and img[:, :10 * 8].sum() == 0
    assert (b[:, 0] + b[:, 2] / 2 <= 1 + 1e-12).all()  # the others are clipped to the canvas


def test_jitter_commutes_with_mi_to_within_rounding_where_nothing_clips(photo):
    a = mi(jitter(photo, 0.0, 0.9))  # contrast 0.9 keeps every value inside 0..255: nothing clips
    b = jitter(mi(photo), 0.0, 0.9)
    assert (a.int() - b.int()).abs().max() <= 2


def test_the_random_augment_is_exact_for_flips_and_shifts(photo):
    aug = DetectionAugment(cell=P // 2, brightness=0.0, contrast=0.0)
    seen = set()
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        img, b, lab = aug(mi(photo), BOXES, LABELS, g)
        u = torch.rand(5, generator=torch.Generator().manual_seed(seed)).tolist()
        plain = photo
        pb = BOXES
        if u[0] < 0.5:
            plain, pb = hflip(plain, pb)
        dx = round((2 * u[1] - 1) * (int(0.25 * 128) // 8)) * 8
        dy = round((2 * u[2] - 1) * (int(0.25 * 96) // 8)) * 8
        plain, pb, pl = shift(plain, pb, LABELS, 2 * dx, 2 * dy, min_px=2.0)
        assert torch.equal(mi(plain), img) and torch.equal(pl, lab) and torch.allclose(pb, b, atol=1e-12)
        seen.add((u[0] < 0.5, dx != 0 or dy != 0))
    assert {f for f, _ in seen} == {True, False} and any(m for _, m in seen)  # flips and shifts were drawn
