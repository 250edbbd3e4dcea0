"""Seam measures of the jigsaw attack: how well two stored pieces fit side by side.

What the attacker reads (:func:`load_stored`: the stored bytes as YCbCr planes at their stored resolution),
the dissimilarity of every ordered pair of pieces (:func:`compatibility`: prediction across the seam, MGC,
kriging for MI cells, the gap band's chroma un-mixed), their orientations for the flip defence
(:func:`virtual_pieces`), and which pieces are blank (:func:`detect_blank`). The placement that uses them is
:mod:`.placement`; :mod:`.solver` puts the two together and says how they were calibrated.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from ..kernels.perm import turn

RIGHT, DOWN = 0, 1   # the relations of D[r, i, j]: j right of i, j below i


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


def seam_settings(st: Stored, gap: int, params: dict | None) -> dict:
    """The calibrated parameters for this kind of puzzle, updated by ``params``."""
    if gap:
        base = GAP_LOSSY if st.lossy else GAP_LOSSLESS
    else:
        base = LOSSY if st.lossy else LOSSLESS
    return {**DEFAULTS, **base, **(params or {})}



def orient_pieces(X: np.ndarray, q: int) -> np.ndarray:
    """Pieces (N, c, c, ...) turned by orientation code ``q`` (the kernels' convention: bit 0 transposes,
    then bit 1 reverses the columns, then bit 2 the rows: :func:`himr_pipe.kernels.perm.turn`)."""
    return turn(X, q, 1, 2)


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
    prm = seam_settings(st, gap, params)
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

