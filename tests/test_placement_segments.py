"""Placement that moves and turns whole segments (himr_pipe.audit.segments), the pose-free neighbour and the side-by-side scores."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from himr_pipe.audit.scores import pose_free_neighbour, side_by_side, symmetric_layout_scores
from himr_pipe.audit.seams import COMPOSE, compatibility, load_stored, virtual_pieces
from himr_pipe.audit.segments import move_segment, segment_moves, turn_segment
from himr_pipe.audit.placement import layout_cost


@st.composite
def layout_and_move(draw):
    gh, gw = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    n = gh * gw
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    layout = (rng.permutation(n) + n * rng.integers(0, 8, n)).reshape(gh, gw)
    slots = draw(st.lists(st.tuples(st.integers(0, gh - 1), st.integers(0, gw - 1)), min_size=1, max_size=n,
                          unique=True))
    seg = [(r, c, int(layout[r, c])) for r, c in slots]
    return layout, seg, draw(st.integers(0, 7)), (draw(st.integers(-1, gh)), draw(st.integers(-1, gw)))


@settings(max_examples=150, deadline=None)
@given(layout_and_move())
def test_a_segment_move_keeps_every_piece_once_in_one_orientation(case):
    layout, seg, s, at = case
    n = layout.size
    out = move_segment(layout, seg, s, at, n)
    pts, (h, w) = turn_segment(seg, s, n)
    if out is None:   # only when the turned segment does not fit the frame there
        assert at[0] < 0 or at[1] < 0 or at[0] + h > layout.shape[0] or at[1] + w > layout.shape[1]
        return
    assert out.shape == layout.shape
    assert sorted((out % n).ravel()) == list(range(n))          # every stored piece exactly once
    assert out.min() >= 0 and out.max() < 8 * n                 # each in one of its 8 orientations
    moved = {v % n: v for v in (out[r + at[0], c + at[1]] for r, c, _ in pts)}
    for _, _, v in seg:                                          # the segment's pieces turned by s, all of them
        assert moved[v % n] == COMPOSE[v // n, s] * n + v % n
    others = {v for v in layout.ravel() if v % n not in moved}
    assert {v for v in out.ravel() if v % n not in moved} == others   # the rest only moved, never turned


def _stored_png(img: np.ndarray):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return load_stored(buf.getvalue(), "png")


def test_a_turned_segment_shows_the_same_picture_and_keeps_its_inner_seams():
    """turn_segment turns positions and pieces alike: the assembled picture of the turned segment is the
    segment's picture turned, and every inner seam costs what it cost before (on real orientation-aware costs)."""
    from himr_pipe.audit.jigsaw import assemble, cut
    from himr_pipe.audit.seams import orient_pieces

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    cell, n = 8, 12
    pieces = virtual_pieces(cut(img, cell))
    D = compatibility(_stored_png(img), cell, orient=True)
    C = np.where(np.isfinite(D), D, 0)
    seg = [(r, c, q * n + r * 4 + c) for r, c, q in ((0, 0, 0), (0, 1, 3), (1, 1, 5), (1, 2, 0), (2, 2, 6))]
    grid0 = -np.ones((3, 3), int)
    for r, c, v in seg:
        grid0[r, c] = v

    def picture(pts, shape):
        g = -np.ones(shape, int)
        for r, c, v in pts:
            g[r, c] = v
        full = np.concatenate([pieces, np.zeros((1,) + pieces.shape[1:], pieces.dtype)])
        return assemble(full, np.where(g < 0, len(pieces), g)), g

    def inner(g):
        tot = 0.0
        for a, b in zip(g[:, :-1].ravel(), g[:, 1:].ravel()):
            tot += C[0, a, b] if a >= 0 and b >= 0 else 0.0
        for a, b in zip(g[:-1].ravel(), g[1:].ravel()):
            tot += C[1, a, b] if a >= 0 and b >= 0 else 0.0
        return tot

    pic0, g0 = picture(seg, (3, 3))
    for s in range(8):
        pts, hw = turn_segment(seg, s, n)
        pic, g = picture(pts, hw)
        assert np.array_equal(pic, orient_pieces(pic0[None], s)[0]), s
        assert inner(g) == pytest.approx(inner(g0), rel=1e-5), s


def test_pose_free_neighbour_counts_fragments_in_their_own_pose():
    n = 16
    truth = np.arange(n).reshape(4, 4)                           # stored cell j = plain cell j, not turned
    assert pose_free_neighbour(truth, np.arange(n)) == 1.0
    whole = [(r, c, int(truth[r, c])) for r in range(4) for c in range(4)]
    for s in range(8):   # the whole picture turned any way: every pair in its (common) pose
        lay = move_segment(truth, whole, s, (0, 0), n)
        assert pose_free_neighbour(lay, np.arange(n)) == 1.0
        assert symmetric_layout_scores(lay % n, truth)["neighbour"] == 1.0
    # a 2x2 block turned a half turn in place: its 4 inner pairs still count without a frame symmetry
    block = [(r, c, int(truth[r, c])) for r in range(2) for c in range(2)]
    lay = move_segment(truth, block, 6, (0, 0), n)
    pf = pose_free_neighbour(lay, np.arange(n))
    assert pf == (24 - 4) / 24                                   # only the block's 4 outer seams are lost
    # the same positions with the pieces not turned (positions right, poses wrong) do not count pose-free
    assert pose_free_neighbour(lay % n, np.arange(n)) < pf


def test_side_by_side_counts_neighbours_in_any_pose_and_is_chance_on_a_random_layout():
    n = 196
    rng = np.random.default_rng(0)
    cells = rng.permutation(n) + n * rng.integers(0, 8, n)        # shuffled and turned, as --flip packs them
    truth = np.argsort(cells % n).reshape(14, 14)
    assert side_by_side(truth, cells)["proximity"] == 1.0
    # the plain layout mirrored along its diagonal, each piece left as stored: every true pair still side by
    # side, few in a common pose with the right step (only pairs whose random turns happen to agree)
    assert side_by_side(truth.T.copy(), cells)["proximity"] == 1.0
    assert pose_free_neighbour(truth.T.copy(), cells) < 0.2
    # a random layout scores its chance figure: layout adjacencies over all pairs of pieces
    near = [side_by_side(rng.permutation(n).reshape(14, 14), cells) for _ in range(300)]
    chance = near[0]["proximity_chance"]
    assert chance == pytest.approx(364 / (196 * 195 / 2))
    assert np.mean([r["proximity"] for r in near]) == pytest.approx(chance, rel=0.15)
    # dropped cells are left out of the count, as in the other scores
    blank = np.zeros(n, bool)
    blank[:20] = True
    assert side_by_side(truth, cells, blank)["proximity"] == 1.0


@pytest.fixture(scope="module")
def astronaut_puzzle():
    import skimage.data as data
    import torch

    from himr_pipe.encode import choose_format
    from himr_pipe.kernels import encrypt, make_permutations
    from himr_pipe.scheme import Scheme

    img = np.asarray(Image.fromarray(data.astronaut()).resize((224, 224), Image.BILINEAR))
    s = Scheme.named("rs", 32, 224, 224, flip=True)
    keys = np.random.default_rng(0).integers(0, 2**63, (1, s.num_patches))
    cells = make_permutations(keys, orient=True)
    out = encrypt(s, torch.from_numpy(img[None].copy()), cells)[0].numpy()
    f = choose_format("png", s)
    return s, f.encode(out), f.ext, cells[0]


def test_segment_moves_solve_at_least_as_many_pieces_on_a_lossless_flip_puzzle(astronaut_puzzle):
    """A real photo (astronaut) cut into P=32 pieces, shuffled and turned by the product's kernels, stored as
    PNG: the solver followed by segment moves places at least as many pieces as the solver alone, and its
    layout costs no more."""
    from himr_pipe.audit import solver
    from himr_pipe.audit.seams import load_stored
    s, blob, ext, cells = astronaut_puzzle
    n = s.num_patches
    truth = np.argsort(np.asarray(cells) % n).reshape(s.grid)
    st_ = load_stored(blob, ext)
    today = solver.solve_stored(st_, s.out_cell, s.grid, orient=True)
    new = solver.solve_stored(st_, s.out_cell, s.grid, orient=True, move_segments=True)
    a, b = symmetric_layout_scores(today % n, truth), symmetric_layout_scores(new % n, truth)
    assert sorted((new % n).ravel()) == list(range(n))
    assert b["direct"] >= a["direct"] and b["direct"] > 0.9
    assert pose_free_neighbour(new, cells) >= pose_free_neighbour(today, cells)


def test_segment_moves_never_raise_the_cost():
    rng = np.random.default_rng(1)
    n = 9
    C = rng.random((2, 8 * n, 8 * n))
    lay = (rng.permutation(n) + n * rng.integers(0, 8, n)).reshape(3, 3)
    out = segment_moves(C, lay, params={"thresh": 0.5})
    assert layout_cost(C, out) <= layout_cost(C, lay) + 1e-12
    assert sorted((out % n).ravel()) == list(range(n))


def test_the_capped_seam_cost_solves_at_least_as_many_pieces_on_a_lossless_flip_puzzle(astronaut_puzzle):
    """v4 caps the normalised seam cost (PLACE_DEFAULTS['cap']); on a puzzle whose seams are strong that must not
    lose what the uncapped search (v3) solves."""
    from himr_pipe.audit import solver
    from himr_pipe.audit.placement import PLACE_DEFAULTS
    from himr_pipe.audit.seams import load_stored
    s, blob, ext, cells = astronaut_puzzle
    n = s.num_patches
    truth = np.argsort(np.asarray(cells) % n).reshape(s.grid)
    st_ = load_stored(blob, ext)
    assert PLACE_DEFAULTS["cap"] is not None
    capped = solver.solve_stored(st_, s.out_cell, s.grid, orient=True)
    uncapped = solver.solve_stored(st_, s.out_cell, s.grid, orient=True, params={"cap": None})
    a, b = symmetric_layout_scores(uncapped % n, truth), symmetric_layout_scores(capped % n, truth)
    assert sorted((capped % n).ravel()) == list(range(n))
    assert b["direct"] >= a["direct"] and b["neighbour"] >= a["neighbour"]
    assert pose_free_neighbour(capped, cells) >= pose_free_neighbour(uncapped, cells)
