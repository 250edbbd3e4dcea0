"""Placement that moves and turns whole segments: Gallagher's type-2 tree merge with rotation, run as a local
search inside the known frame after :mod:`.placement`'s greedy growth and swaps (:func:`segment_moves`).

Why this and not Sholomon's genetic solver: a GA's crossover keeps segments shared by its parents, but it needs
a population of full layouts per generation (each a greedy growth over 8N virtual pieces, about a tenth of a
second for the default's 1568) and hundreds of generations; a direct search over every place and symmetry of
the few largest reliable segments costs a few refinements per segment and fits the audit's seconds per image.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from .placement import _layout_segments, _refine_swaps, layout_cost
from .seams import COMPOSE, DOWN, RIGHT

def turn_segment(seg, s: int, n0: int):
    """Segment ``seg`` (a list of (row, col, virtual piece)) under frame symmetry ``s`` (the code of
    :func:`.seams.orient_pieces`: bit 0 transposes, then bit 1 reverses the columns, then bit 2 the rows),
    each piece turned alike (virtual piece ``q * n0 + i`` becomes ``COMPOSE[q, s] * n0 + i``): the picture
    the segment shows, turned by ``s``. Returns it with its bounding box at (0, 0), and the box (h, w)."""
    r0, c0 = min(t[0] for t in seg), min(t[1] for t in seg)
    pts = [(r - r0, c - c0, v) for r, c, v in seg]
    h, w = max(t[0] for t in pts) + 1, max(t[1] for t in pts) + 1
    if s & 1:
        pts, h, w = [(c, r, v) for r, c, v in pts], w, h
    if s & 2:
        pts = [(r, w - 1 - c, v) for r, c, v in pts]
    if s & 4:
        pts = [(h - 1 - r, c, v) for r, c, v in pts]
    if n0:
        pts = [(r, c, int(COMPOSE[v // n0, s]) * n0 + v % n0) for r, c, v in pts]
    return pts, (h, w)


def move_segment(layout: np.ndarray, seg, s: int, at: tuple, n0: int) -> np.ndarray | None:
    """``layout`` with segment ``seg`` (its pieces at their slots in ``layout``) turned by ``s``
    (:func:`turn_segment`) and put with its bounding box's corner at ``at``; the pieces it covers move, as they
    are, into the slots it left (in raster order). None when it does not fit the frame. Every piece stays once,
    in one orientation. ``n0``: the stored pieces (virtual pieces ``q * n0 + i``), or 0 when pieces are not
    turned (then ``s`` must keep every piece's orientation: only ``s = 0`` is meaningful)."""
    gh, gw = layout.shape
    pts, (h, w) = turn_segment(seg, s, n0)
    if at[0] < 0 or at[1] < 0 or at[0] + h > gh or at[1] + w > gw:
        return None
    src = [(r, c) for r, c, _ in seg]
    tgt = [(r + at[0], c + at[1]) for r, c, _ in pts]
    s_src, s_tgt = set(src), set(tgt)
    covered = [layout[t] for t in sorted(s_tgt - s_src)]
    freed = sorted(s_src - s_tgt)
    out = layout.copy()
    for (r, c), (_, _, v) in zip(tgt, pts):
        out[r, c] = v
    for slot, v in zip(freed, covered):
        out[slot] = v
    return out


def _boundary_fit(C: np.ndarray, lay: np.ndarray, mask: np.ndarray) -> float:
    """Mean cost of the edges between the slots in ``mask`` and the others (inf when there are none)."""
    h = mask[:, :-1] != mask[:, 1:]
    v = mask[:-1] != mask[1:]
    k = int(h.sum() + v.sum())
    if not k:
        return np.inf
    return float((C[RIGHT][lay[:, :-1], lay[:, 1:]][h].sum() + C[DOWN][lay[:-1], lay[1:]][v].sum()) / k)


SEGMENT_MOVES = dict(rounds=3, segs=6, keep=3, thresh=1.0, min_size=2)


def segment_moves(C: np.ndarray, layout: np.ndarray, real: np.ndarray | None = None, params: dict | None = None,
                  ) -> np.ndarray:
    """Move and turn whole reliable segments (Gallagher's type-2 tree merge with rotation, as a local search
    inside the known frame).

    A segment is a connected part of the layout whose inner seams all cost below ``thresh``
    (:func:`_layout_segments`). Each of the ``segs`` largest is tried in each of its 8 symmetries (pieces turned
    with it, :func:`turn_segment`; only the identity when ``C`` is over stored pieces) at every place in the
    frame (:func:`move_segment`). The ``keep`` places where it fits its new surroundings best (mean cost of its
    boundary seams) and the ``keep`` of lowest total cost are hill-climbed by swaps and turns
    (:func:`_refine_swaps`); the best is kept when it lowers the layout's total cost. Up to ``rounds`` rounds,
    until no move helps. Returns a layout of the same pieces, each once in one orientation."""
    prm = {**SEGMENT_MOVES, **(params or {})}
    gh, gw = layout.shape
    n = layout.size
    n0 = n if C.shape[1] > n else 0
    syms = range(8 if n0 else 1)
    real = np.ones(C.shape[1], bool) if real is None else np.asarray(real, bool)
    best, best_cost = layout, layout_cost(C, layout)
    tried = set()
    for _ in range(prm["rounds"]):
        improved = False
        for seg in _layout_segments(C, best, prm["thresh"], real)[:prm["segs"]]:
            key = frozenset(v % n if n0 else v for _, _, v in seg)
            if len(seg) < prm["min_size"] or len(seg) >= n - 1 or (key, best_cost) in tried:
                continue
            tried.add((key, best_cost))
            cands = []
            for s in syms:
                pts, (h, w) = turn_segment(seg, s, n0)
                for r0 in range(gh - h + 1):
                    for c0 in range(gw - w + 1):
                        lay = move_segment(best, seg, s, (r0, c0), n0)
                        if lay is None or np.array_equal(lay, best):
                            continue
                        mask = np.zeros((gh, gw), bool)
                        for r, c, _ in pts:
                            mask[r + r0, c + c0] = True
                        cands.append((_boundary_fit(C, lay, mask), layout_cost(C, lay), lay))
            if not cands:
                continue
            short = sorted(range(len(cands)), key=lambda i: cands[i][0])[:prm["keep"]]
            short += sorted(range(len(cands)), key=lambda i: cands[i][1])[:prm["keep"]]
            for i in dict.fromkeys(short):
                lay = _refine_swaps(C, cands[i][2])
                cost = layout_cost(C, lay)
                if cost < best_cost - 1e-9:
                    best, best_cost, improved = lay, cost, True
            if improved:
                break
        if not improved:
            break
    return best


_ON = [False]


@contextmanager
def enabled(on: bool = True):
    """Within the block, :func:`.solver.solve_stored` ends with :func:`segment_moves` unless told otherwise (so
    that a benchmark can run the audit, which calls the solver itself, with and without them)."""
    old, _ON[0] = _ON[0], on
    try:
        yield
    finally:
        _ON[0] = old


def segments_on() -> bool:
    return _ON[0]
