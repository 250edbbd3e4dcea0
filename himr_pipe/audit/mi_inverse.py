"""Attacks on MI: invert the 2x2 sub-patch mean.

MI keeps, for every PxP patch, the mean of its four (P/2)x(P/2) sub-patches:
four unknowns behind each observed value. Two inverses:

* :func:`naive_inverse`: every sub-patch gets the observed mean (each cell
  tiled 2x2). It reproduces the observation exactly and is blocky.
* :func:`ls_inverse`: regularised least squares: the image x closest to the
  observation under the MI operator A, plus lambda times its squared
  gradients (smoothness across sub-patch and patch borders, where natural
  images are smooth and MI's blocks are not):
  ``min ||A x - m||^2 + lambda ||D x||^2``, solved by conjugate gradients on
  the normal equations, started from the naive inverse.

:func:`downsampled_baseline` is what the numbers are compared with: the plain
image reduced to the same number of values as MI (2x down, bilinear) and
scaled back up.
"""

from __future__ import annotations

import numpy as np


def _A(x: np.ndarray, patch: int) -> np.ndarray:
    """MI operator on float HxWxC: mean of the 2x2 sub-patches (no rounding)."""
    h, w, c = x.shape
    s = patch // 2
    gh, gw = h // patch, w // patch
    return x.reshape(gh, 2, s, gw, 2, s, c).mean(axis=(1, 4)).reshape(gh * s, gw * s, c)


def _At(m: np.ndarray, patch: int) -> np.ndarray:
    """Adjoint of the MI operator: each observed value spread over its four positions, / 4."""
    h2, w2, c = m.shape
    s = patch // 2
    gh, gw = h2 // s, w2 // s
    t = np.broadcast_to(m.reshape(gh, 1, s, gw, 1, s, c), (gh, 2, s, gw, 2, s, c)) / 4.0
    return t.reshape(gh * patch, gw * patch, c)


def naive_inverse(m: np.ndarray, patch: int) -> np.ndarray:
    """Tile every observed cell into the four sub-patch positions (uint8 out)."""
    return np.clip(np.rint(_At(m.astype(np.float64), patch) * 4), 0, 255).astype(np.uint8)


def _laplacian(x: np.ndarray) -> np.ndarray:
    """D^T D x for forward differences with Neumann borders (a positive semi-definite operator)."""
    out = np.zeros_like(x)
    dy = x[1:] - x[:-1]
    dx = x[:, 1:] - x[:, :-1]
    out[1:] += dy
    out[:-1] -= dy
    out[:, 1:] += dx
    out[:, :-1] -= dx
    return out


def ls_inverse(m: np.ndarray, patch: int, lam: float = 0.05, iters: int = 200, tol: float = 1e-6) -> np.ndarray:
    """Regularised least-squares inverse of MI (uint8 out)."""
    mf = m.astype(np.float64)

    def op(x):
        return _At(_A(x, patch), patch) + lam * _laplacian(x)

    b = _At(mf, patch)
    x = _At(mf, patch) * 4  # the naive inverse as a start
    r = b - op(x)
    p = r.copy()
    rs = float((r * r).sum())
    b_norm = float((b * b).sum()) or 1.0
    for _ in range(iters):
        ap = op(p)
        alpha = rs / max(float((p * ap).sum()), 1e-30)
        x += alpha * p
        r -= alpha * ap
        rs_new = float((r * r).sum())
        if rs_new < tol * b_norm:
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def downsampled_baseline(plain: np.ndarray) -> np.ndarray:
    """The plain image with MI's number of values: 2x down and back up (bilinear)."""
    from PIL import Image

    h, w = plain.shape[:2]
    small = Image.fromarray(plain).resize((w // 2, h // 2), Image.BILINEAR)
    return np.asarray(small.resize((w, h), Image.BILINEAR))
