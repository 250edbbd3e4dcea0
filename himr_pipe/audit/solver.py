"""A strong jigsaw attack on RS: recover the patch layout from the STORED bytes.

The parts: :mod:`.seams` (reading the stored bytes, the seam measures) and :mod:`.placement` (from costs to a
layout), after Gallagher's and Paikin & Tal's own division; this module runs them (:func:`solve_stored`) and
records how they were calibrated.

The attacker knows the cell size and the grid (they follow from the image
size and the scheme), the gap G, and reads the stored file. Three stages:

1. **Reading** (:func:`load_stored`). JPEG is decoded without fancy chroma
   upsampling (``fastupsample=True`` replicates each chroma sample; fancy
   upsampling would smear chroma across patch borders), converted to float
   YCbCr, and for 4:2:0 the chroma is averaged back to its stored resolution
   (each 2x2 block is constant, so this is exact). PNG/raw are read as is.
2. **Compatibility** (:func:`compatibility`), per plane group (luma and
   chroma at their own resolution, chroma weighted by ``w_chroma``):

   * prediction-based dissimilarity (Pomeranz et al. 2011) both ways: each
     side's line is extrapolated across the seam (least-squares line through
     its ``fit`` nearest visible columns, slope damped by ``slope``, across
     ``2*skip+1`` pixels when a gap of G px blanks ``skip`` = ceil(G/s) px
     per side) and compared with the other side's first visible line in a
     fractional Lp norm (``p``), optionally after smoothing along the edge;
   * Gallagher's Mahalanobis gradient compatibility (MGC) on the YCbCr
     vectors (``w_mgc``), each term in units of its median over all pairs;
   * then Paikin & Tal-style normalisation: the placement cost of a pair is
     D / sqrt(second best of i's row * second best of j's column).
3. **Placement** (:func:`solve_stored`) inside the known gh x gw frame:
   greedy growth (best-buddy pairs first, then the highest mean confidence
   towards placed neighbours; Paikin & Tal) from several seeds (the pieces
   with most best buddies, and the largest segments of a Gallagher-style
   constrained Kruskal merge); the layout with the lowest total cost is
   hill-climbed by swapping pieces (all N^2 swap gains at once, vectorised,
   many independent swaps per round), then re-grown from its largest
   reliable segments (adjacencies cheaper than ``seg_thresh``) while that
   lowers the total cost.

**The cap (v4).** Every normalised seam cost is capped at ``cap`` = 1.5 (:data:`.placement.PLACE_DEFAULTS`), a
robust cost: wherever seams are weak most seams of any layout are wrong, and the uncapped search traded confident
true pairs for a few points off the wrong seams around them (on the default, v3's layouts cost *less* than the true
layout). Calibrated on 8 puzzles of the public photos that are not in the bundled sample
(:data:`.learned.TRAIN_PHOTOS`, random 224x224 crops), cap in {none, 1.1, 1.2, 1.3, 1.5}; neighbour / direct /
pose-free neighbour (:func:`.scores.pose_free_neighbour`), none -> 1.5:
mi-shuffle --flip JPEG q90 (5 puzzles) 0.037 / 0.005 / 0.025 -> 0.051 / 0.004 / 0.047; the same as PNG
0.039 / 0.008 / 0.027 -> 0.055 / 0.008 / 0.053; rs --gap 1 --flip JPEG 0.043 / 0.009 / 0.050 -> 0.045 / 0.008 /
0.074; rs JPEG q90 (6 puzzles) 0.661 / 0.507 -> 0.747 / 0.642. Caps from 1.1 to 1.5 were within noise of each other on the flip
settings; 1.5 was best without flip and on neighbour accuracy.

**The gap band's chroma.** With an odd gap and 4:2:0 JPEG (RS at P=16 or 32),
the chroma sample straddling the band is half blank (black: chroma 128) and
half the piece's visible edge, so the attack un-mixes it
(:func:`_unmix_chroma`) and matches chroma 1.5 instead of 3 chroma pixels
across the seam (gap 1). The defence is weaker than its luma suggests.

Dropped pieces (all-black; detected, or passed as ``blank``) are wildcards:
they are excluded from the compatibility normalisation, score a neutral
``wild_score`` in the greedy, cost ``wild_cost`` next to anything in the
refinement, and never attract real pieces through an edge.

Calibration. The weights were chosen by grid search on the first 12 images
of ``benchmarks/bench_attack.py``'s test set (one setting at a time),
maximising the share of true pairs that are each other's best match (for
the compatibility parameters) and then neighbour/direct accuracy of the
whole attack (placement parameters). Findings: JPEG wants p=1 without MGC
(p=0.3 +MGC is best lossless), chroma weight 1 (0.5..1 equal, 2+ worse);
longer least-squares fits and edge smoothing do not help without a gap;
with a gap the extrapolation must be damped (slope 0.5 JPEG, 0.8 lossless)
and JPEG prefers a 3-column fit with smoothing 0.3; MI-then-shuffle puzzles
are best served by the lossless defaults. A whole-piece plane-fit term for
smooth regions was tried and did not help (RS). MI cells (``mixed``, see
``MIXED``): a 6-column fit extrapolated across cell + 1 px with slope 0.7,
plus a kriging prediction of the neighbour's first column from the whole
cell (variogram |d|, L0.5, weight 0.5), then a block-exchange local search.
Top-1 accuracy of the true neighbour, MI16 JPEG, 12 images: 0.18 (2-column
fit) -> 0.21 (4-6 columns) -> 0.22 (+kriging); kriging alone 0.20; chroma
weight 0.5/2/4, edge smoothing, MGC, 2-3 predicted columns, a whitened
(Mahalanobis) kriging error were all equal or worse. Placement parameters
(starts, best-buddy bonus, segments, regrowth) did not matter; on 8 of 12
images the true layout costs less than the one found, so search is a limit.
On 24 images: MI16 JPEG q90 4:4:4 neighbour 0.128 / direct 0.007, MI16 PNG
0.168 / 0.021. These are few, coarse
parameters; they are stated in ``LOSSY``, ``LOSSLESS``, ``GAP_LOSSY``,
``GAP_LOSSLESS`` and ``PLACE_DEFAULTS``, and ``params`` overrides them.

Cost: vectorised numpy, N x N x L work in bounded chunks; ~0.5 s for 196
pieces and ~2-10 s for 784 pieces on one CPU core (MI: ~2 s for 196 cells,
mostly the block search).
"""

from __future__ import annotations

import numpy as np

from .placement import (PLACE_DEFAULTS, _block_search, _greedy, _kruskal_segments, _layout_segments,
                        _refine_swaps, best_buddies, layout_cost, normalised)
from .learned import learned_cost, learned_on
from .segments import segment_moves, segments_on
from .seams import MIXED, Stored, compatibility, detect_blank, seam_settings

ATTACK_NAME = ("jigsaw v4 (stored-YCbCr prediction+MGC, 4:2:0 chroma un-mixed from the gap band, seam costs capped, "
               "multi-seed greedy, swap/segment refinement)")
# Turned pieces (the flip defence): 8N virtual pieces make the greedy's local optima many, so more of the search
# pays. On 6 bundled photos, mi-shuffle --flip P=16 JPEG q90, neighbour accuracy: 0.041 at the default search (2.5 s
# an image), 0.042 at 32 starts / 4 segments / 10 x 6 regrowths, 0.052 at 48 / 6 / 10 x 6 (8 s), 0.055 with 3000
# block-search rounds on top (more block search alone: 0.040). So the audit takes the 48 / 6 / 10 x 6 search.
FLIP_SEARCH = dict(starts=48, segments=6, regrow_rounds=10, regrow_segs=6)


def _settings(st: Stored, gap: int, params: dict | None) -> dict:
    """The calibrated seam and placement parameters for this kind of puzzle, updated by ``params``."""
    return {**PLACE_DEFAULTS, **seam_settings(st, gap, params)}


def solve_stored(st: Stored, cell: int, grid: tuple, gap: int = 0, blank: np.ndarray | None = None,
                 params: dict | None = None, mixed: bool = False, orient: bool = False,
                 learned: bool | None = None, move_segments: bool | None = None) -> np.ndarray:
    """The attacker's layout: ``layout[r, c]`` = the stored piece placed at grid position (r, c).

    ``mixed``: the pieces are MI cells (mi-shuffle), whose seams are read with the longer
    extrapolation of :data:`MIXED` (a cell column mixes two plain columns half a patch apart).
    ``orient`` (the flip defence): every piece may be turned; the layout then holds virtual pieces
    ``q * N + i`` (stored piece ``i`` turned by ``q``, :func:`virtual_pieces`), one orientation of each
    piece, and the whole picture is found up to a symmetry of the frame (scores take the best one).
    ``learned``: combine the seam measures with the learned seam model of this setting (:mod:`.learned`; off
    by default, so the quick audit stays as fast; None: as :func:`.learned.enabled` says, for the benchmarks).
    ``move_segments``: end with :func:`.segments.segment_moves` (whole segments moved and turned in the frame; off
    by default: measured to add nothing on today's seam scores; None: as :func:`.segments.enabled` says)."""
    params = {**(MIXED if mixed else {}), **(FLIP_SEARCH if orient else {}), **(params or {})}
    prm = _settings(st, gap, params)
    gh, gw = grid
    n = gh * gw
    if n == 1:
        return np.zeros((1, 1), int)
    blank = detect_blank(st, cell) if blank is None else np.asarray(blank, bool)
    if orient:
        blank = np.tile(blank, 8)
    real = ~blank
    D = compatibility(st, cell, gap, prm, orient=orient)
    if learned or (learned is None and learned_on()):
        D = learned_cost(st, cell, gap, D, mixed, orient)
    D[:, ~real, :] = np.inf
    D[:, :, ~real] = np.inf
    C = normalised(D, real)
    finite = np.isfinite(C)
    wc = prm["wild_cost"]
    if wc is None:
        wc = 1.0
    if prm["cap"]:   # a robust seam cost: every seam past the cap is as wrong as any other (see PLACE_DEFAULTS)
        C = np.where(finite, np.minimum(C, prm["cap"]), C)
        wc = min(wc, prm["cap"])
    C = np.where(finite, C, wc).astype(np.float64)
    grp = np.arange(C.shape[1]) % n
    C[:, grp[:, None] == grp[None, :]] = 1e3            # a piece is never its own neighbour, in any orientation
    Dm = np.where(finite, D, np.inf)
    bb = best_buddies(Dm) & real[None, :, None] & real[None, None, :]
    score = bb.sum(axis=(0, 2)) + bb.sum(axis=(0, 1))
    starts = prm["starts"] if prm["starts"] is not None else int(np.clip(3200 // n, 3, 16))
    seeds = [int(s) for s in np.argsort(-score, kind="stable")[:starts]]
    if prm["segments"]:
        seeds += [sg for sg in _kruskal_segments(C, grid, real)[:prm["segments"]] if len(sg) > 1]
    cands = sorted(((layout_cost(C, lay), i, lay) for i, lay in
                    enumerate(_greedy(C, grid, sd, real, bb, prm) for sd in seeds)), key=lambda t: t[:2])
    best, best_cost = cands[0][2], cands[0][0]
    if prm["refine"]:
        for _, _, lay in cands[:prm["refine"]]:
            lay = _refine_swaps(C, lay)
            cost = layout_cost(C, lay)
            if cost < best_cost:
                best, best_cost = lay, cost
    # regrow from the largest reliable segments of the best layout while that lowers the cost
    tried = set()
    for _ in range(prm["regrow_rounds"]):
        improved = False
        for sg in _layout_segments(C, best, prm["seg_thresh"], real)[:prm["regrow_segs"]]:
            key = frozenset(p for _, _, p in sg)
            if len(sg) < 2 or len(sg) == real.sum() or key in tried:
                continue
            tried.add(key)
            lay = _greedy(C, grid, sg, real, bb, prm)
            if prm["refine"]:
                lay = _refine_swaps(C, lay)
            cost = layout_cost(C, lay)
            if cost < best_cost - 1e-9:
                best, best_cost, improved = lay, cost, True
                break
        if not improved:
            break
    if prm["ils"]:
        best = _block_search(C, best, prm["ils"], prm["ils_max_block"])
    if move_segments or (move_segments is None and segments_on()):
        best = segment_moves(C, best, real)
    return best
