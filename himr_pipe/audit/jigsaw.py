"""The first jigsaw attack on RS (v1), kept as the baseline the audit's attack must beat.

The audit runs :mod:`.solver` (v4), which reads the stored bytes (JPEG chroma
at its stored resolution) and places far better; ``benchmarks/bench_attack.py``
prints both side by side. :func:`cut` and :func:`assemble` are shared.

The attacker sees only the stored (possibly JPEG-compressed) patches and
knows the grid size (it follows from the image size and P). Two classic
steps:

1. **Compatibility** of every ordered pair of patches in the two relations
   "j right of i" and "j below i": Gallagher's Mahalanobis gradient
   compatibility (MGC, CVPR 2012). The intensity gradient across a true seam
   looks like the gradients just inside each patch; its Mahalanobis distance
   to their distribution, summed both ways, is the dissimilarity.
2. **Greedy placement** in the style of Paikin & Tal (CVPR 2015): turn
   dissimilarities into confidences (1 - best / second best), start from the
   piece with the most best buddies, and repeatedly place the (piece, free
   slot) pair with the highest mean confidence towards its placed neighbours,
   preferring best buddies, inside a frame of the known grid size.

Everything is vectorised over pieces with numpy; a 14x14 puzzle takes well
under a second.
"""

from __future__ import annotations

import numpy as np

RIGHT, DOWN = 0, 1


def cut(img: np.ndarray, patch: int) -> np.ndarray:
    """HxWxC image -> (N, P, P, C) patches in row-major grid order."""
    h, w, c = img.shape
    gh, gw = h // patch, w // patch
    return img[:gh * patch, :gw * patch].reshape(gh, patch, gw, patch, c).transpose(0, 2, 1, 3, 4).reshape(
        gh * gw, patch, patch, c)


def assemble(pieces: np.ndarray, layout: np.ndarray) -> np.ndarray:
    """(N, P, P, C) pieces and a (gh, gw) layout of piece indices (-1: empty) -> image."""
    gh, gw = layout.shape
    _, p, _, c = pieces.shape
    out = np.zeros((gh, gw, p, p, c), pieces.dtype)
    mask = layout >= 0
    out[mask] = pieces[layout[mask]]
    return out.transpose(0, 2, 1, 3, 4).reshape(gh * p, gw * p, c)


def _mgc_one_way(a_in: np.ndarray, a_edge: np.ndarray, b_edge: np.ndarray) -> np.ndarray:
    """Dissimilarity of b placed beyond a's edge, for all pairs: (N, N).

    a_in, a_edge: (N, L, C) the second-to-last and last line of a towards the
    seam; b_edge: (N, L, C) b's first line across the seam.
    """
    g_in = a_edge - a_in                                        # gradients inside a, (N, L, C)
    mu = g_in.mean(axis=1)                                      # (N, C)
    d = g_in - mu[:, None]
    cov = np.einsum("nlc,nld->ncd", d, d) / max(1, g_in.shape[1] - 1)
    cov += np.eye(cov.shape[-1]) * 1e-1                         # regularise flat patches
    inv = np.linalg.inv(cov)                                    # (N, C, C)
    # gradient across the seam for every (a, b): b_edge[b] - a_edge[a], (N, N, L, C)
    g = b_edge[None, :, :, :] - a_edge[:, None, :, :] - mu[:, None, None, :]
    return np.einsum("abli,aij,ablj->ab", g, inv, g)


def compatibility(pieces: np.ndarray) -> np.ndarray:
    """MGC dissimilarity D[r, i, j] for j right of i (r=0) and j below i (r=1); the diagonal is inf."""
    x = pieces.astype(np.float64)
    d = np.empty((2, len(x), len(x)))
    # right: i's last two columns, j's first column (and the mirror for symmetry)
    d[RIGHT] = (_mgc_one_way(x[:, :, -2], x[:, :, -1], x[:, :, 0])
                + _mgc_one_way(x[:, :, 1], x[:, :, 0], x[:, :, -1]).T)
    d[DOWN] = (_mgc_one_way(x[:, -2], x[:, -1], x[:, 0])
               + _mgc_one_way(x[:, 1], x[:, 0], x[:, -1]).T)
    idx = np.arange(len(x))
    d[:, idx, idx] = np.inf
    return d


def confidence(d: np.ndarray) -> np.ndarray:
    """Paikin & Tal's confidence 1 - D / second-smallest D of the row, per relation."""
    srt = np.sort(d, axis=2)
    second = np.where(np.isfinite(srt[:, :, 1]), srt[:, :, 1], srt[:, :, 0])
    return 1.0 - d / np.maximum(second[:, :, None], 1e-9)


def best_buddies(d: np.ndarray) -> np.ndarray:
    """bb[r, i, j]: j is i's best in relation r and i is j's best in the opposite direction."""
    fwd = d.argmin(axis=2)          # best j for each i
    bwd = d.argmin(axis=1)          # best i for each j
    n = d.shape[1]
    bb = np.zeros(d.shape, bool)
    for r in (RIGHT, DOWN):
        i = np.arange(n)
        ok = bwd[r][fwd[r]] == i
        bb[r, i[ok], fwd[r][ok]] = True
    return bb


def solve(pieces: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Place the pieces on a (gh, gw) grid; returns the layout of piece indices."""
    gh, gw = grid
    n = len(pieces)
    if n != gh * gw:
        raise ValueError(f"{n} pieces do not fill a {gh}x{gw} grid")
    if n == 1:
        return np.zeros((1, 1), int)
    d = compatibility(pieces)
    conf = confidence(d)                           # conf[r, q, k]: k as q's right / lower neighbour
    conf_rev = confidence(d.transpose(0, 2, 1))    # conf_rev[r, q, k]: k as q's left / upper neighbour
    bb = best_buddies(d)
    # canvas large enough for any start; the placed bounding box stays within gh x gw
    H, W = 2 * gh - 1, 2 * gw - 1
    canvas = -np.ones((H, W), int)
    placed = np.zeros(n, bool)
    start = int(np.argmax(bb.sum(axis=(0, 2)) + bb.sum(axis=(0, 1))))
    canvas[gh - 1, gw - 1] = start
    placed[start] = True
    box = [gh - 1, gh - 1, gw - 1, gw - 1]  # rmin, rmax, cmin, cmax
    for _ in range(n - 1):
        best = (-np.inf, None, None)
        free = np.argwhere(canvas < 0)
        rows, cols = free[:, 0], free[:, 1]
        # slots next to a placed piece, keeping the bounding box within the grid
        ok = np.zeros(len(free), bool)
        for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            rr, cc = rows + dr, cols + dc
            inside = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
            ok[inside] |= canvas[rr[inside], cc[inside]] >= 0
        ok &= (np.maximum(box[1], rows) - np.minimum(box[0], rows) < gh)
        ok &= (np.maximum(box[3], cols) - np.minimum(box[2], cols) < gw)
        cand = np.flatnonzero(~placed)
        for r, c in free[ok]:
            score = np.zeros(len(cand))
            nb = 0
            buddy = np.zeros(len(cand))
            for dr, dc, rel, k_is_second in ((0, -1, RIGHT, True), (0, 1, RIGHT, False),
                                             (-1, 0, DOWN, True), (1, 0, DOWN, False)):
                rr, cc = r + dr, c + dc
                if 0 <= rr < H and 0 <= cc < W and canvas[rr, cc] >= 0:
                    q = canvas[rr, cc]
                    if k_is_second:   # neighbour q is left of / above the slot: candidate is q's right/down
                        score += conf[rel, q, cand]
                        buddy += bb[rel, q, cand]
                    else:             # neighbour q is right of / below the slot
                        score += conf_rev[rel, q, cand]
                        buddy += bb[rel, cand, q]
                    nb += 1
            s = score / nb + buddy / nb + 0.01 * nb  # best buddies first, then mean confidence
            k = int(np.argmax(s))
            if s[k] > best[0]:
                best = (s[k], (r, c), int(cand[k]))
        _, (r, c), k = best
        canvas[r, c] = k
        placed[k] = True
        box = [min(box[0], r), max(box[1], r), min(box[2], c), max(box[3], c)]
    return canvas[box[0]:box[0] + gh, box[2]:box[2] + gw]
