"""A strong jigsaw attack on RS: recover the patch layout from the STORED bytes.

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

import io
from dataclasses import dataclass

import numpy as np

ATTACK_NAME = ("jigsaw v3 (stored-YCbCr prediction+MGC, 4:2:0 chroma un-mixed from the gap band, multi-seed greedy, "
               "swap/segment refinement)")
RIGHT, DOWN = 0, 1


@dataclass
class Stored:
    """What the attack reads from the stored bytes.

    planes: float32 planes Y, Cb, Cr (JFIF full-range YCbCr); ``scale[k]`` is
    the down-sampling factor of plane k (2 for the chroma of 4:2:0 JPEG, else 1).
    """

    planes: list
    scale: list
    lossy: bool
    shape: tuple
    subsampling: str = "444"


def _ycbcr(rgb: np.ndarray) -> list:
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return [y, cb, cr]


def load_stored(blob: bytes, ext: str) -> Stored:
    ext = ext.lower().lstrip(".")
    if ext in ("jpg", "jpeg"):
        import simplejpeg

        h, w, _, sub = simplejpeg.decode_jpeg_header(blob)
        rgb = simplejpeg.decode_jpeg(blob, colorspace="RGB", fastupsample=True)
        y, cb, cr = _ycbcr(rgb)
        if sub == "420" and h % 2 == 0 and w % 2 == 0:
            def down(p):
                return p.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
            return Stored([y, down(cb), down(cr)], [1, 2, 2], True, (h, w), "420")
        return Stored([y, cb, cr], [1, 1, 1], True, (h, w), sub)
    if ext == "png":
        from PIL import Image

        rgb = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
    elif ext == "npy":
        rgb = np.load(io.BytesIO(blob), allow_pickle=False)
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=2)
        rgb = rgb[..., :3]
    else:
        raise ValueError(f"unknown stored format {ext!r}")
    return Stored(_ycbcr(rgb), [1, 1, 1], False, rgb.shape[:2])


# ---------------------------------------------------------------- compatibility
DEFAULTS = dict(p=0.3, w_chroma=1.0, smooth=0.0, w_mgc=0.0, mgc_eps=0.1, extra_skip_lossy=0, slope=1.0, fit=2,
                mixed=False, w_pred=1.0, unmix=True, w_krige=0.0, k_alpha=1.0, k_nugget=0.05, k_p=1.0, k_cols=1,
                k_smooth=0.0)


def _unmix_chroma(X: np.ndarray, gap: int) -> np.ndarray:
    """Chroma of 4:2:0 pieces with an odd gap, un-mixed from the blanked band.

    A chroma sample of 4:2:0 is the mean of a 2x2 block of full-resolution pixels. With an odd gap G = 2q + 1,
    the block at chroma index q (and c-1-q) straddles the band: half of it is blanked (black, whose chroma is
    exactly 128) and half is the piece's own visible edge. So its visible half is recoverable,
    (4 x - 128 n) / (4 - n) for n blank pixels of the 4 (2 on an edge, 3 at a corner), and the chroma seam moves
    closer: G + 0.5 chroma pixels apart (the two visible edge pixels stand 2G + 1 full-resolution pixels apart)
    instead of G + 2 (the first wholly visible chroma samples). X: (N, c, c, K) chroma planes of every
    piece, float.

    Measured (bench_attack.py, 24 photos, RS-16 gap 1 JPEG q90 4:2:0): neighbour / direct 0.185 / 0.016 without,
    0.200 / 0.044 with; gap 1 + drop 0.25: 0.217 -> 0.234. Even gaps blank whole chroma blocks (nothing to
    recover), and 4:4:4 (mi-shuffle's 8-px cells) has no mixed samples, so those settings are unchanged."""
    c = X.shape[1]
    q = gap // 2
    nb = np.zeros(c)
    nb[[q, c - 1 - q]] = 2                               # blank full-resolution pixels per block, per axis
    n = nb[:, None] + nb[None, :] - nb[:, None] * nb[None, :] / 4        # 2 on an edge, 3 at a corner
    f, off = 4.0 / (4.0 - n), 128.0 * n / (4.0 - n)
    return (X * f[None, :, :, None] - off[None, :, :, None]).astype(np.float32)


def _pieces(plane: np.ndarray, cell: int) -> np.ndarray:
    h, w = plane.shape
    gh, gw = h // cell, w // cell
    return plane[:gh * cell, :gw * cell].reshape(gh, cell, gw, cell).transpose(0, 2, 1, 3).reshape(gh * gw, cell, cell)


def _smooth(s: np.ndarray, a: float) -> np.ndarray:
    """Light smoothing along the edge: [a, 1-2a, a] with replicated ends; s (..., L)."""
    if a <= 0:
        return s
    pad = np.concatenate([s[..., :1], s, s[..., -1:]], axis=-1)
    return a * pad[..., :-2] + (1 - 2 * a) * pad[..., 1:-1] + a * pad[..., 2:]


def _lp_cross(x: np.ndarray, y: np.ndarray, p: float, chunk_elems: int = 1 << 22) -> np.ndarray:
    """D[a, b] = sum_l |x[a, l] - y[b, l]|^p, in chunks of rows of a to bound memory."""
    n, L = x.shape
    out = np.empty((n, len(y)), np.float32)
    step = max(1, chunk_elems // max(1, len(y) * L))
    for s in range(0, n, step):
        d = np.abs(x[s:s + step, None, :] - y[None, :, :])
        if p == 2:
            d *= d
        elif p != 1:
            d **= p
        out[s:s + step] = d.sum(axis=-1)
    return out


def _extrap_weights(m: int, dist: float, slope: float) -> np.ndarray:
    """Weights of a least-squares line through m columns (x = 0, 1, ..., nearest the seam first)
    evaluated at x = -dist (the first column beyond the seam); the slope is damped by ``slope``."""
    if m == 1:                                   # one visible column: carry it across unchanged
        return np.ones(1)
    x = np.arange(m, dtype=np.float64)
    xb = x.mean()
    sxx = ((x - xb) ** 2).sum()
    return 1.0 / m + slope * (-dist - xb) * (x - xb) / sxx


def _lines(X: np.ndarray, skip: int, m: int):
    """The m visible columns of every piece nearest its right edge (Ar) and its left edge (Bl), (N, L, K, m)."""
    c = X.shape[1]
    lo, hi = skip, c - skip
    Xi = X[:, lo:hi]
    Ar = np.stack([Xi[:, :, hi - 1 - t] for t in range(m)], axis=-1)
    Bl = np.stack([Xi[:, :, lo + t] for t in range(m)], axis=-1)
    return Ar, Bl


def _pred_term(Ar, Bl, dist, prm, wch):
    """Prediction-based dissimilarity (Pomeranz et al.) both ways, fractional Lp, channel weights wch.

    Each side's line is extrapolated across the seam by a least-squares line
    through its ``fit`` nearest columns and compared with the other side's
    first column."""
    a = prm["smooth"]
    Ar, Bl = (_smooth(v.transpose(0, 2, 3, 1), a).transpose(0, 3, 1, 2) for v in (Ar, Bl))
    wt = _extrap_weights(Ar.shape[-1], dist, prm["slope"]).astype(np.float32)
    PA, PB = Ar @ wt, Bl @ wt                # predictions of B0 from i and of A0 from j
    A0, B0 = Ar[..., 0], Bl[..., 0]
    w = (np.asarray(wch, np.float32) ** (1.0 / prm["p"]))[None, None, :]   # so that |w e|^p = wch |e|^p
    n = len(A0)

    def f(v):
        return (v * w).reshape(n, -1)

    p = prm["p"]
    d = _lp_cross(f(PA), f(B0), p) + _lp_cross(f(A0), f(PB), p)
    return d


def _mgc_term(A0, A1, B0, B1, eps):
    """Gallagher's Mahalanobis gradient compatibility both ways (channels K jointly)."""
    d = 0
    for P0, P1, Q0, tr in ((A0, A1, B0, False), (B0, B1, A0, True)):
        g = P0 - P1                                           # (N, L, K) gradients inside the piece
        mu = g.mean(axis=1)
        dv = g - mu[:, None]
        cov = np.einsum("nlc,nld->ncd", dv, dv) / max(1, g.shape[1] - 1) + np.eye(g.shape[2]) * eps
        inv = np.linalg.inv(cov).astype(np.float32)          # (N, K, K)
        x = P0 + mu[:, None]                                  # predicted neighbour line
        # sum_l (Q0[b]-x[a])^T inv[a] (Q0[b]-x[a]) = q inv q - 2 q inv x + x inv x
        xi = np.einsum("alk,akm->alm", x, inv)                # (N, L, K)
        t1 = np.einsum("alm,alm->a", xi, x)
        t2 = np.einsum("alm,blm->ab", xi, Q0)
        # q inv_a q summed over l: sum over channel pairs of inv_a[k,m] * sum_l Q0[b,l,k] Q0[b,l,m]
        qq = np.einsum("blk,blm->bkm", Q0, Q0).reshape(len(Q0), -1)    # (N, K*K)
        t3 = inv.reshape(len(inv), -1) @ qq.T                          # (N_a, N_b)
        dd = t1[:, None] - 2 * t2 + t3
        d = d + (dd.T if tr else dd)
    return d


def _mi_krige_weights(s: int, alpha: float, nugget: float, cols: int) -> np.ndarray:
    """Best linear (kriging) predictor of the first ``cols`` columns of the right neighbour of an
    MI cell from the whole cell, (cols * s, s * s).

    Plain pixels follow an intrinsic random field with variogram |d|^alpha
    (covariance K0 - |d|^alpha, K0 large: the local mean is unknown); an MI
    cell pixel (y, x) is the mean of the plain pixels (y + s i, x + s j), i, j
    in {0, 1}, of its 2s x 2s patch; the right neighbour's patch starts 2s
    plain pixels further right. ``nugget`` (in units of the variogram at 1 px)
    is independent noise on every observed cell pixel.
    """
    yy, xx = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    off = np.array([(0, 0), (0, s), (s, 0), (s, s)], np.float64)

    def plain(y, x, dx0=0):
        return np.stack([np.stack([y + o[0], x + o[1] + dx0], -1) for o in off], 1)   # (M, 4, 2)

    obs = plain(yy.ravel().astype(float), xx.ravel().astype(float))
    ty, tx = np.meshgrid(np.arange(s), np.arange(cols), indexing="ij")
    tgt = plain(ty.T.ravel().astype(float), tx.T.ravel().astype(float), 2 * s)     # column-major: col, row
    k0 = 1e3 * (4 * s) ** alpha

    def cov(a, b):
        d = np.sqrt(((a[:, None, :, None, :] - b[None, :, None, :, :]) ** 2).sum(-1))
        return k0 - (d ** alpha).mean(axis=(2, 3))

    Coo = cov(obs, obs) + nugget * np.eye(len(obs))
    Cot = cov(obs, tgt)
    w = np.linalg.solve(Coo, Cot)                                                  # (M, T)
    return w.T.astype(np.float32)


def _krige_term(Y, prm, wch):
    """MI prediction term: each cell predicts the first ``k_cols`` columns of its right neighbour
    from all its pixels (and mirrored, the neighbour predicts the cell's last columns); fractional Lp."""
    n, s, _, K = Y.shape
    cols = prm["k_cols"]
    W = _mi_krige_weights(s, prm["k_alpha"], prm["k_nugget"], cols)               # (cols*s, s*s)
    A = Y.reshape(n, s * s, K)
    Bm = Y[:, :, ::-1].reshape(n, s * s, K)                                       # mirrored: predicts leftwards
    PA = np.einsum("tm,nmk->ntk", W, A)                                           # pred of B's cols 0.. (col-major)
    PB = np.einsum("tm,nmk->ntk", W, Bm)                                          # pred of A's cols s-1, s-2, ..
    B0 = np.concatenate([Y[:, :, t] for t in range(cols)], axis=1)               # (n, cols*s, K)
    A0 = np.concatenate([Y[:, :, s - 1 - t] for t in range(cols)], axis=1)
    a = prm["k_smooth"]
    if a:
        PA, PB, B0, A0 = (_smooth(v.transpose(0, 2, 1), a).transpose(0, 2, 1) for v in (PA, PB, B0, A0))
    p = prm["k_p"]
    w = (np.asarray(wch, np.float32) ** (1.0 / p))[None, None, :]

    def f(v):
        return (v * w).reshape(n, -1)

    return _lp_cross(f(PA), f(B0), p) + _lp_cross(f(A0), f(PB), p)


LOSSY = dict(p=1.0, w_mgc=0.0)
LOSSLESS = dict(p=0.3, w_mgc=1.0)
GAP_LOSSY = dict(p=1.0, w_mgc=0.0, slope=0.5, fit=3, smooth=0.3)
GAP_LOSSLESS = dict(p=0.3, w_mgc=1.0, slope=0.8)
# MI cells (mi-shuffle): the extrapolation reaches across cell + 1 pixels (see compatibility), from a
# 6-column fit damped to 0.7, plus (weight 0.5) a kriging prediction of the neighbour's first column from
# the whole cell compared in L0.5 (_krige_term); the layout is then improved by 200 rounds of block-exchange
# local search (_block_search). On the first 12 photos, MI P=16 JPEG q90 (neighbour/direct): 0.086/0.01
# without any of it, 0.113/0.008 with the extrapolation distance alone (2-column fit, slope 0.5),
# 0.122/0.005 with a 4-column fit, 0.138/0.012 adding kriging, 0.139/0.013 at fit 6 slope 0.7,
# 0.145/0.016 adding the block search. On 24 photos (bench_attack.py): JPEG 0.103/0.009 (previous MIXED)
# -> 0.124/0.009 (new compatibility) -> 0.128/0.007 (+ block search, 1.8 s/image); PNG 0.133/0.012 ->
# 0.168/0.021 (2.2 s/image).
MIXED = dict(mixed=True, fit=6, slope=0.7, w_krige=0.5, k_p=0.5, ils=200)
# Turned pieces (the flip defence): 8N virtual pieces make the greedy's local optima many, so more of the search
# pays. On 6 bundled photos, mi-shuffle --flip P=16 JPEG q90, neighbour accuracy: 0.041 at the default search (2.5 s
# an image), 0.042 at 32 starts / 4 segments / 10 x 6 regrowths, 0.052 at 48 / 6 / 10 x 6 (8 s), 0.055 with 3000
# block-search rounds on top (more block search alone: 0.040). So the audit takes the 48 / 6 / 10 x 6 search.
FLIP_SEARCH = dict(starts=48, segments=6, regrow_rounds=10, regrow_segs=6)


def _settings(st: Stored, gap: int, params: dict | None) -> dict:
    """The calibrated parameters for this kind of puzzle, updated by ``params``."""
    if gap:
        base = GAP_LOSSY if st.lossy else GAP_LOSSLESS
    else:
        base = LOSSY if st.lossy else LOSSLESS
    return {**DEFAULTS, **PLACE_DEFAULTS, **base, **(params or {})}


def orient_pieces(X: np.ndarray, q: int) -> np.ndarray:
    """Pieces (N, c, c, ...) turned by orientation code ``q`` (the kernels' convention: bit 0 transposes,
    then bit 1 reverses the columns, then bit 2 the rows)."""
    if q & 1:
        X = X.swapaxes(1, 2)
    if q & 2:
        X = X[:, :, ::-1]
    if q & 4:
        X = X[:, ::-1]
    return X


def _compose_table() -> np.ndarray:
    """T[a, b]: the orientation code of 'turn by a, then by b'."""
    ref = np.arange(9).reshape(1, 3, 3)
    codes = [orient_pieces(ref, q).ravel().tolist() for q in range(8)]
    return np.array([[codes.index(orient_pieces(orient_pieces(ref, a), b).ravel().tolist()) for b in range(8)]
                     for a in range(8)])


COMPOSE = _compose_table()


def virtual_pieces(X: np.ndarray) -> np.ndarray:
    """The eight orientations of every piece, (8N, c, c, ...): virtual piece ``q * N + i`` is piece ``i``
    turned by ``q``. The flip attack solves the puzzle of these, one orientation per piece."""
    return np.concatenate([orient_pieces(X, q) for q in range(8)])


def compatibility(st: Stored, cell: int, gap: int = 0, params: dict | None = None,
                  orient: bool = False) -> np.ndarray:
    """Dissimilarity D[r, i, j] of j right of i (r=0) / below i (r=1), diagonal inf.

    ``orient`` (the flip defence): D is over the 8N virtual pieces (:func:`virtual_pieces`); a piece is
    never its own neighbour in any orientation. Only the right-of relation is computed: j below i is j'
    right of i' for the transposes i', j' of the two virtual pieces, which are virtual pieces too."""
    prm = _settings(st, gap, params)
    groups = {}
    for k, s in enumerate(st.scale):
        groups.setdefault(s, []).append(k)
    n0 = (st.shape[0] // cell) * (st.shape[1] // cell)
    n = 8 * n0 if orient else n0
    pred = np.zeros((2, n, n), np.float32)
    mgc = np.zeros((2, n, n), np.float32)
    krig = np.zeros((2, n, n), np.float32)
    use_krige = prm["mixed"] and prm["w_krige"] and not gap
    for s, ks in groups.items():
        c = cell // s
        X = np.stack([_pieces(st.planes[k], c) for k in ks], axis=-1)     # (N, c, c, K)
        skip = -(-gap // s) if gap else 0
        dist = (2 * skip + 1) if gap else 1.0
        if s == 2 and gap % 2 and prm["unmix"]:
            X = _unmix_chroma(X, gap)
            skip = gap // 2
            dist = gap + 0.5
        if gap and st.lossy:
            skip += prm["extra_skip_lossy"]
            dist += 2 * prm["extra_skip_lossy"]
        if prm["mixed"]:
            # MI cells: a cell column is the mean of two plain columns s = cell apart, so under a locally
            # linear image the last column of a cell and the first of its right neighbour stand s + 1
            # plain pixels apart, while neighbouring columns inside a cell stand 1 apart
            dist += c
        wch = [1.0 if k == 0 else prm["w_chroma"] for k in ks]
        if orient:
            X = np.ascontiguousarray(virtual_pieces(X))
        for rel, Y in ((RIGHT, X),) if orient else ((RIGHT, X), (DOWN, X.transpose(0, 2, 1, 3))):
            # the fit never reaches past a piece's visible columns (mi-shuffle at P=8 has 4-px cells, MIXED
            # asks for 6)
            vis = c - 2 * skip
            fit = min(prm["fit"], vis)
            Ar, Bl = _lines(Y, skip, max(min(2, vis), fit))
            if prm["w_pred"]:
                pred[rel] += _pred_term(Ar[..., :fit], Bl[..., :fit], dist, prm, wch)
            if use_krige:
                krig[rel] += _krige_term(Y, prm, wch)
            if prm["w_mgc"] and Ar.shape[-1] >= 2:
                mgc[rel] += _mgc_term(Ar[..., 0], Ar[..., 1], Bl[..., 0], Bl[..., 1], prm["mgc_eps"])
    if orient:
        # below: transpose both virtual pieces, then right-of (the code of 'q, then transpose' is COMPOSE[q, 1])
        v = np.arange(n)
        t = COMPOSE[v // n0, 1] * n0 + v % n0
        for term in (pred, mgc, krig):
            term[DOWN] = term[RIGHT][np.ix_(t, t)]
    # each term in units of its median over all pairs, so that the weights are comparable
    same = np.arange(n) % n0
    off = same[:, None] != same[None, :]
    D = np.zeros((2, n, n), np.float32)
    if prm["w_pred"]:
        D = D + prm["w_pred"] * pred / max(1e-9, float(np.median(pred[:, off])))
    if use_krige:
        D = D + prm["w_krige"] * krig / max(1e-9, float(np.median(krig[:, off])))
    if prm["w_mgc"]:
        m = np.maximum(mgc, 0)
        D = D + prm["w_mgc"] * m / max(1e-9, float(np.median(m[:, off])))
    D = D.astype(np.float32)
    D[:, ~off] = np.inf
    return D


# ---------------------------------------------------------------- placement
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


PLACE_DEFAULTS = dict(bb_bonus=1.0, nb_bonus=0.01, wild_score=0.0, starts=None, segments=2, refine=1, wild_cost=1.5,
                      regrow_rounds=5, regrow_segs=3, seg_thresh=1.0, ils=0, ils_max_block=0.5)


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


def detect_blank(st: Stored, cell: int) -> np.ndarray:
    """Pieces that are black everywhere (dropped): exactly for lossless, within JPEG's error otherwise.

    A dropped piece is all zero before encoding; JPEG q>=50 decodes it to
    within a few levels of 0 everywhere (blocks do not overlap pieces). A real
    piece that is black everywhere carries no edge information either, so
    treating it as a wildcard loses nothing.
    """
    X = _pieces(st.planes[0], cell).reshape(-1, cell * cell)
    tol = 4.0 if st.lossy else 0.5
    return np.abs(X).max(axis=1) <= tol


def solve_stored(st: Stored, cell: int, grid: tuple, gap: int = 0, blank: np.ndarray | None = None,
                 params: dict | None = None, mixed: bool = False, orient: bool = False) -> np.ndarray:
    """The attacker's layout: ``layout[r, c]`` = the stored piece placed at grid position (r, c).

    ``mixed``: the pieces are MI cells (mi-shuffle), whose seams are read with the longer
    extrapolation of :data:`MIXED` (a cell column mixes two plain columns half a patch apart).
    ``orient`` (the flip defence): every piece may be turned; the layout then holds virtual pieces
    ``q * N + i`` (stored piece ``i`` turned by ``q``, :func:`virtual_pieces`), one orientation of each
    piece, and the whole picture is found up to a symmetry of the frame (scores take the best one)."""
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
    D[:, ~real, :] = np.inf
    D[:, :, ~real] = np.inf
    C = normalised(D, real)
    finite = np.isfinite(C)
    wc = prm["wild_cost"]
    if wc is None:
        wc = 1.0
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
    return best
