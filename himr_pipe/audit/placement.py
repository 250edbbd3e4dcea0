"""Placement of the jigsaw attack: from pairwise costs to a layout inside the known frame.

Paikin & Tal's normalisation and greedy growth from many seeds, Gallagher's constrained Kruskal merge for
seeds, then swap refinement (with in-place turns for the flip defence), regrowth from reliable segments and a
block-exchange local search. Costs come from :mod:`.seams`; :mod:`.solver` runs the whole attack.
"""

from __future__ import annotations

import numpy as np

from .seams import DOWN, RIGHT


def _second(D: np.ndarray, axis: int) -> np.ndarray:
    """Second-smallest finite value along ``axis`` (the Paikin & Tal normaliser)."""
    part = np.partition(D, 1, axis=axis)
    s = np.take(part, 1, axis=axis)
    f = np.take(part, 0, axis=axis)
    s = np.where(np.isfinite(s), s, f)
    return np.maximum(s, 1e-6)


def normalised(D: np.ndarray, real: np.ndarray) -> np.ndarray:
    """D divided by the geometric mean of its row's and column's second-best (real pieces only)."""
    out = np.empty_like(D)
    Dm = D.copy()
    Dm[:, ~real, :] = np.inf
    Dm[:, :, ~real] = np.inf
    for r in range(2):
        sr = _second(Dm[r], 1)   # (N,) second-best successor of i
        sc = _second(Dm[r], 0)   # (N,) second-best predecessor of j
        with np.errstate(invalid="ignore"):             # inf / inf for wildcard rows: set by the caller
            out[r] = D[r] / np.sqrt(sr[:, None] * sc[None, :])
    return out


_NB = ((0, -1, RIGHT, True), (0, 1, RIGHT, False), (-1, 0, DOWN, True), (1, 0, DOWN, False))


def _greedy(C: np.ndarray, grid, seed, real: np.ndarray, bb: np.ndarray, prm: dict) -> np.ndarray:
    """Paikin & Tal-style greedy growth from ``seed`` inside the known frame.

    seed: a piece index, or a list of (dr, dc, piece) placed rigidly first (a
    segment; offsets relative to each other, bounding box within the frame).

    C[r, i, j]: pairwise cost (normalised dissimilarity, lower is better).
    Score of piece k in a free slot: mean over placed real neighbours of
    (1 - C), plus a bonus when k is a best buddy of all of them.
    """
    gh, gw = grid
    n = C.shape[1]
    n0 = gh * gw               # stored pieces; n = 8 * n0 virtual pieces with orientations, one of each used
    H, W = 2 * gh - 1, 2 * gw - 1
    canvas = -np.ones((H, W), int)
    acc = np.zeros((H * W, n), np.float32)
    cnt = np.zeros(H * W, np.int32)
    nbb = np.zeros((H * W, n), np.int16)
    placed = np.zeros(n, bool)
    S = 1.0 - C                                  # similarity
    box = [gh - 1, gh - 1, gw - 1, gw - 1]
    frontier = set()

    def put(r, c, k):
        canvas[r, c] = k
        placed[k % n0::n0] = True
        box[0], box[1] = min(box[0], r), max(box[1], r)
        box[2], box[3] = min(box[2], c), max(box[3], c)
        frontier.discard(r * W + c)
        for dr, dc, rel, k_first in _NB:
            rr, cc = r - dr, c - dc              # slot whose neighbour (dr, dc) is (r, c)
            if 0 <= rr < H and 0 <= cc < W and canvas[rr, cc] < 0:
                s = rr * W + cc
                frontier.add(s)
                if real[k]:
                    if k_first:                  # k is left of / above slot s
                        acc[s] += S[rel, k]
                        nbb[s] += bb[rel, k]
                    else:
                        acc[s] += S[rel, :, k]
                        nbb[s] += bb[rel, :, k]
                    cnt[s] += 1

    if np.isscalar(seed):
        seed = [(0, 0, int(seed))]
    r0, c0 = min(t[0] for t in seed), min(t[1] for t in seed)
    for dr, dc, k in seed:
        put(gh - 1 + dr - r0, gw - 1 + dc - c0, k)
    wild = prm["wild_score"]
    no_info = np.where(real, wild - 1.0, wild)          # slot with only wildcard neighbours
    best_v = np.full(H * W, -np.inf)                     # cached best candidate of every slot
    best_k = np.full(H * W, -1)
    dirty = set(frontier)

    def rescore(sl):
        if cnt[sl] == 0:
            sc = no_info.copy()
        else:
            sc = acc[sl] / cnt[sl] + prm["bb_bonus"] * (nbb[sl] == cnt[sl]) + prm["nb_bonus"] * cnt[sl]
            sc[~real] = wild
        sc[placed] = -np.inf
        k = int(np.argmax(sc))
        best_v[sl], best_k[sl] = sc[k], k

    for _ in range(n0 - len(seed)):
        for sl in dirty:
            rescore(sl)
        fs = np.fromiter(frontier, int)
        rr, cc = fs // W, fs % W
        ok = ((np.maximum(box[1], rr) - np.minimum(box[0], rr) < gh)
              & (np.maximum(box[3], cc) - np.minimum(box[2], cc) < gw))
        fs = fs[ok]
        sl = int(fs[np.argmax(best_v[fs])])
        k = int(best_k[sl])
        r, c = divmod(sl, W)
        put(r, c, k)
        # slots next to the new piece changed; slots whose favourite was k must choose again
        fr = np.fromiter(frontier, int)
        dirty = fr[(best_k[fr] % n0 == k % n0) | (best_k[fr] < 0)
                   | (np.abs(fr // W - r) + np.abs(fr % W - c) == 1)].tolist()
    return canvas[box[0]:box[0] + gh, box[2]:box[2] + gw].copy()


def _kruskal_segments(C: np.ndarray, grid, real: np.ndarray, k_best: int = 8):
    """Gallagher-style constrained merging: take pairs in order of cost, merge their segments
    when the pieces' relative positions do not collide and the union fits in the frame.

    Returns the segments as lists of (row, col, piece), largest first.
    """
    gh, gw = grid
    n = C.shape[1]
    n0 = gh * gw               # virtual pieces (orientations): a segment holds one orientation of a piece at most
    rel_idx, i_idx, j_idx = [], [], []
    k = min(k_best, n - 1)
    for r in range(2):
        Cr = C[r]
        jj = np.argpartition(Cr, k, axis=1)[:, :k]       # best successors of each i
        ii = np.argpartition(Cr, k, axis=0)[:k, :]       # best predecessors of each j
        rel_idx += [np.full(n * k, r), np.full(n * k, r)]
        i_idx += [np.repeat(np.arange(n), k), ii.T.ravel()]
        j_idx += [jj.ravel(), np.repeat(np.arange(n), k)]
    rel, ii, jj = np.concatenate(rel_idx), np.concatenate(i_idx), np.concatenate(j_idx)
    key = (rel * n + ii) * n + jj
    key, first = np.unique(key, return_index=True)
    rel, ii, jj = rel[first], ii[first], jj[first]
    ok = real[ii] & real[jj] & (ii % n0 != jj % n0)
    rel, ii, jj = rel[ok], ii[ok], jj[ok]
    order = np.argsort(C[rel, ii, jj], kind="stable")
    seg = list(range(n))                                   # segment id of each piece
    pos = {p: (0, 0) for p in range(n)}                    # position of each piece in its segment
    members = {p: {(0, 0): p} for p in range(n)}           # segment -> {(r, c): piece}
    box = {p: [0, 0, 0, 0] for p in range(n)}
    used = {p: {p % n0} for p in range(n)} if n > n0 else None   # segment -> its stored pieces
    for e in order:
        r, a, b = int(rel[e]), int(ii[e]), int(jj[e])
        sa, sb = seg[a], seg[b]
        if sa == sb:
            continue
        ra, ca = pos[a]
        rb, cb = pos[b]
        tr, tc = (ra - rb, ca + 1 - cb) if r == RIGHT else (ra + 1 - rb, ca - cb)   # b's segment shift
        if len(members[sa]) < len(members[sb]):           # move the smaller segment
            sa, sb, tr, tc = sb, sa, -tr, -tc
        big, small = members[sa], members[sb]
        bx, sx = box[sa], box[sb]
        nb = [min(bx[0], sx[0] + tr), max(bx[1], sx[1] + tr), min(bx[2], sx[2] + tc), max(bx[3], sx[3] + tc)]
        if nb[1] - nb[0] >= gh or nb[3] - nb[2] >= gw:
            continue
        if any((q[0] + tr, q[1] + tc) in big for q in small):
            continue
        if used is not None:
            if not used[sa].isdisjoint(used[sb]):
                continue
            used[sa] |= used.pop(sb)
        for (qr, qc), p in small.items():
            big[(qr + tr, qc + tc)] = p
            pos[p] = (qr + tr, qc + tc)
            seg[p] = sa
        box[sa] = nb
        del members[sb], box[sb]
    segs = [[(q[0], q[1], p) for q, p in m.items()] for m in members.values()]
    return sorted(segs, key=len, reverse=True)


def _layout_segments(C: np.ndarray, layout: np.ndarray, thresh: float, real: np.ndarray):
    """Connected parts of a layout whose internal adjacencies all cost below ``thresh``,
    as lists of (row, col, piece), largest first."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    gh, gw = layout.shape
    n = layout.size
    slot = np.arange(n).reshape(gh, gw)
    a = [slot[:, :-1].ravel(), slot[:-1].ravel()]
    b = [slot[:, 1:].ravel(), slot[1:].ravel()]
    good = [(C[RIGHT][layout[:, :-1], layout[:, 1:]] < thresh).ravel(),
            (C[DOWN][layout[:-1], layout[1:]] < thresh).ravel()]
    ea = np.concatenate([x[g] for x, g in zip(a, good)])
    eb = np.concatenate([x[g] for x, g in zip(b, good)])
    _, lab = connected_components(coo_matrix((np.ones(len(ea)), (ea, eb)), shape=(n, n)), directed=False)
    lab = lab.reshape(gh, gw)
    segs = []
    for l in np.unique(lab):
        rr, cc = np.nonzero((lab == l) & real[layout])
        if len(rr):
            segs.append([(int(r), int(c), int(layout[r, c])) for r, c in zip(rr, cc)])
    return sorted(segs, key=len, reverse=True)


def layout_cost(C: np.ndarray, layout: np.ndarray) -> float:
    return float(C[RIGHT][layout[:, :-1], layout[:, 1:]].sum() + C[DOWN][layout[:-1], layout[1:]].sum())


def _refine_swaps(C: np.ndarray, layout: np.ndarray, max_iter: int = 500) -> np.ndarray:
    """Hill-climb by swapping pieces: every round computes the cost change of all N^2 swaps at
    once (exact for adjacent slots too) and applies the best improving swaps that do not touch
    each other's neighbourhoods (so their gains add up), until no swap improves the cost.

    With virtual pieces (C over 8N orientations, the flip attack) every round also turns pieces in
    place: each slot's best orientation given its current neighbours."""
    gh, gw = layout.shape
    n = layout.size
    m = C.shape[1]                                       # pieces (8n with orientations)
    L = layout.ravel().copy()
    pos = np.arange(n)
    pr, pc = pos // gw, pos % gw
    left = np.where(pc > 0, pos - 1, n)
    right = np.where(pc < gw - 1, pos + 1, n)
    up = np.where(pr > 0, pos - gw, n)
    down = np.where(pr < gh - 1, pos + gw, n)
    Cp = np.zeros((2, m + 1, m + 1), np.float32)      # piece index m: "outside", cost 0
    Cp[:, :m, :m] = C
    R, Dn = Cp[RIGHT], Cp[DOWN]
    sib = np.arange(8) * n                                # the orientations of a piece: piece % n + sib
    hs = pos[pc < gw - 1]                                # horizontal pairs (s, s + 1)
    vs = pos[pr < gh - 1]                                # vertical pairs (s, s + gw)
    block = np.zeros(n + 1, bool)
    for _ in range(max_iter):
        Lp = np.append(L, m)
        # UL[s, t]: cost of the edges of slot s if piece L[t] sat there, current neighbours
        UL = (R[np.ix_(Lp[left], L)] + R[np.ix_(L, Lp[right])].T + Dn[np.ix_(Lp[up], L)]
              + Dn[np.ix_(L, Lp[down])].T)
        cur = UL[pos, pos]
        delta = UL + UL.T - cur[:, None] - cur[None, :]
        np.fill_diagonal(delta, np.inf)
        # adjacent pairs: the swapped pieces are each other's neighbours, recompute exactly
        a, b = L[hs], L[hs + 1]
        l, r = Lp[left[hs]], Lp[right[hs + 1]]
        ua, da, ub, db = Lp[up[hs]], Lp[down[hs]], Lp[up[hs + 1]], Lp[down[hs + 1]]
        old = R[l, a] + R[a, b] + R[b, r] + Dn[ua, a] + Dn[a, da] + Dn[ub, b] + Dn[b, db]
        new = R[l, b] + R[b, a] + R[a, r] + Dn[ua, b] + Dn[b, da] + Dn[ub, a] + Dn[a, db]
        delta[hs, hs + 1] = delta[hs + 1, hs] = new - old
        a, b = L[vs], L[vs + gw]
        u, d = Lp[up[vs]], Lp[down[vs + gw]]
        la, ra, lb, rb = Lp[left[vs]], Lp[right[vs]], Lp[left[vs + gw]], Lp[right[vs + gw]]
        old = Dn[u, a] + Dn[a, b] + Dn[b, d] + R[la, a] + R[a, ra] + R[lb, b] + R[b, rb]
        new = Dn[u, b] + Dn[b, a] + Dn[a, d] + R[la, b] + R[b, ra] + R[lb, a] + R[a, rb]
        delta[vs, vs + gw] = delta[vs + gw, vs] = new - old
        k = min(n, n * n - 1)
        cand = np.argpartition(delta, k, axis=None)[:k]
        cand = cand[np.argsort(delta.ravel()[cand])]
        block[:] = False
        applied = 0
        for flat in cand:
            s, t = divmod(int(flat), n)
            if delta[s, t] >= -1e-9:
                break
            if block[s] or block[t]:
                continue
            L[s], L[t] = L[t], L[s]
            applied += 1
            for q in (s, t):                            # the swapped slots and their neighbours
                block[[q, left[q], right[q], up[q], down[q]]] = True
        if m > n:
            applied += _turn_pieces(R, Dn, L, n, m, sib, left, right, up, down)
        if not applied:
            break
    return L.reshape(gh, gw)


def _turn_pieces(R, Dn, L, n, m, sib, left, right, up, down) -> int:
    """Turn pieces in place (in ``L``): every slot's best orientation given its neighbours, applied to
    slots that do not touch each other (so the gains add up). Returns the number turned."""
    Lp = np.append(L, m)
    X = (L % n)[:, None] + sib[None, :]                   # (n, 8): the slot's piece in each orientation
    cost = (R[Lp[left][:, None], X] + R[X, Lp[right][:, None]] + Dn[Lp[up][:, None], X]
            + Dn[X, Lp[down][:, None]])
    cur = cost[np.arange(n), L // n]
    best = cost.argmin(1)
    gain = cur - cost[np.arange(n), best]
    block = np.zeros(n + 1, bool)
    turned = 0
    for s in np.argsort(-gain, kind="stable"):
        if gain[s] <= 1e-9:
            break
        if block[s]:
            continue
        L[s] = X[s, best[s]]
        turned += 1
        block[[s, left[s], right[s], up[s], down[s]]] = True
    return turned


# ``cap``: the normalised seam cost is capped there (None: not capped). Most seams of a layout are wrong wherever
# seams are weak; uncapped, the search trades a confident true pair for a few points off the wrong seams around
# it (the layout found then costs less than the truth). Capped, every seam past the cap is as wrong as another, so
# the search keeps confident pairs. Calibrated in the calibration notes of :mod:`.solver`.
PLACE_DEFAULTS = dict(bb_bonus=1.0, nb_bonus=0.01, wild_score=0.0, starts=None, segments=2, refine=1, wild_cost=1.5,
                      regrow_rounds=5, regrow_segs=3, seg_thresh=1.0, ils=0, ils_max_block=0.5, cap=1.5)


def _block_search(C: np.ndarray, layout: np.ndarray, iters: int, max_block: float, seed: int = 0):
    """Iterated local search: exchange two equal, non-overlapping rectangular blocks of the layout
    (moving whole segments rigidly), hill-climb by swaps, keep the result when it lowers the cost."""
    rng = np.random.default_rng(seed)
    gh, gw = layout.shape
    best, best_cost = layout, layout_cost(C, layout)
    for _ in range(iters):
        h = int(rng.integers(1, max(2, int(gh * max_block)) + 1))
        w = int(rng.integers(1, max(2, int(gw * max_block)) + 1))
        r1, c1 = int(rng.integers(0, gh - h + 1)), int(rng.integers(0, gw - w + 1))
        r2, c2 = int(rng.integers(0, gh - h + 1)), int(rng.integers(0, gw - w + 1))
        if abs(r1 - r2) < h and abs(c1 - c2) < w:
            continue
        lay = best.copy()
        lay[r1:r1 + h, c1:c1 + w], lay[r2:r2 + h, c2:c2 + w] = best[r2:r2 + h, c2:c2 + w], best[r1:r1 + h, c1:c1 + w]
        lay = _refine_swaps(C, lay)
        cost = layout_cost(C, lay)
        if cost < best_cost - 1e-9:
            best, best_cost = lay, cost
    return best


def best_buddies(D: np.ndarray) -> np.ndarray:
    n = D.shape[1]
    bb = np.zeros(D.shape, bool)
    i = np.arange(n)
    for r in range(2):
        fwd, bwd = D[r].argmin(1), D[r].argmin(0)
        ok = bwd[fwd] == i
        bb[r, i[ok], fwd[ok]] = True
    return bb

