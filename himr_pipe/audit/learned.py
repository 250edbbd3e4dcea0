"""A learned seam model for the jigsaw attack: a small network on the two facing bands of a seam.

What it scores: j right of i for every pair of (virtual) pieces, the relation :func:`.seams.compatibility`
computes (below-of follows by transposing both pieces, as there). Its input is the ``band`` columns of each
piece nearest the seam, read as the audit reads the stored bytes (:func:`.seams.load_stored`: YCbCr; 4:2:0
chroma replicated to full resolution), every piece in its 8 orientations (:func:`.seams.virtual_pieces`).

The model: a one-hidden-layer network slid along the seam, ``net(i, j) = sum_l w . relu(U a_il + V b_jl + c)``
over the rows l of the edge, a_il / b_jl the 3 rows around l of i's / j's band; its first layer splits into a
term of i's band and one of j's, so all (8N)^2 pairs cost one (8N, cell, H) product per side and an
(8N)^2 x cell x H sum (hidden units can take differences across the seam, and relu(x) + relu(-x) is |x|: the
prediction measures are within its reach). It is trained together with the hand-crafted dissimilarity
D (its logit is ``-alpha log D + net``, a softmax over every candidate neighbour of a true pair, both ways), so
it learns what D misses; the audit then uses ``D * exp(-gamma net / alpha)``, with ``gamma_fit`` the best of
{0, 1/4, 1/2, 1} on held-out training puzzles and ``gamma`` that one only where it gains at least
:data:`MIN_GAIN` of held-out top-1 (else 0: D is left alone, as on every setting shipped so far: RESULTS.md).

Training data (Kerckhoffs: the attacker knows the scheme, never the owner's data): public photos that install
with the project and are NOT the bundled sample photos the audit figures are reported on
(:data:`TRAIN_PHOTOS`), random crops in a random orientation, encrypted by the product's own kernels with the
flip defence and stored as the product stores them. One model per setting (:data:`SETTINGS`: scheme, patch,
gap, format); weights in ``learned_weights.npz`` beside this module, made by :func:`train_all`
(``python benchmarks/train_learned_seams.py``). Deterministic from its seed (one torch thread).
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .seams import COMPOSE, MIXED, Stored, compatibility, load_stored, orient_pieces, virtual_pieces

WEIGHTS = Path(__file__).with_name("learned_weights.npz")
BAND = 4
HIDDEN = 16
# the held-out top-1 gain (share of true pairs) the model must bring before the audit uses it: about 1 % of the
# ~1000 held-out pairs, over the noise of 3 held-out puzzles. None of the shipped models reaches it (RESULTS.md).
MIN_GAIN = 0.01
# (scheme name, patch, gap, format): the flip settings the model is fitted to (JPEG: q90, the product's chroma)
SETTINGS = [("mi-shuffle", 16, 0, "jpeg"), ("mi-shuffle", 16, 0, "png"), ("rs", 16, 1, "jpeg"), ("rs", 16, 1, "png")]
# skimage photos not among himr_pipe.sample_data.PHOTOS (which the audit's figures are on), plus scikit-learn's
TRAIN_PHOTOS = ("retina", "stereo_motorcycle", "camera", "grass", "gravel", "brick", "moon", "coins", "cell",
                "sklearn:china", "sklearn:flower")


def key_of(st: Stored, cell: int, gap: int, mixed: bool) -> str:
    return f"{'mixed' if mixed else 'plain'}-c{cell}-g{gap}-{'lossy' if st.lossy else 'lossless'}"


# ------------------------------------------------------------------ inputs
def bands(st: Stored, cell: int, band: int = BAND) -> tuple[np.ndarray, np.ndarray]:
    """(right bands, left bands) of the 8N virtual pieces, (8N, cell * band * 3) float32, scaled to ~unit."""
    planes = [np.repeat(np.repeat(p, s, 0), s, 1) if s > 1 else p for p, s in zip(st.planes, st.scale)]
    h, w = st.shape
    gh, gw = h // cell, w // cell
    X = np.stack([p[:gh * cell, :gw * cell] for p in planes], -1)
    X = X.reshape(gh, cell, gw, cell, 3).transpose(0, 2, 1, 3, 4).reshape(gh * gw, cell, cell, 3)
    V = virtual_pieces(X)
    a = V[:, :, cell - band:][:, :, ::-1]           # i's columns, nearest the seam first
    b = V[:, :, :band]                              # j's columns, nearest the seam first
    f = (lambda z: ((np.ascontiguousarray(z, np.float32) - 128.0) / 64.0).reshape(len(z), -1))
    return f(a), f(b)


def _transpose_index(n0: int) -> np.ndarray:
    v = np.arange(8 * n0)
    return COMPOSE[v // n0, 1] * n0 + v % n0


def rows(A: np.ndarray, cell: int, kr: int = 3) -> np.ndarray:
    """Bands (n, cell * band * 3) as (n, cell, kr * band * 3): each row along the seam with its kr - 1
    neighbouring rows (ends replicated), the window the network slides along the edge."""
    X = A.reshape(len(A), cell, -1)
    h = kr // 2
    P = np.concatenate([X[:, :1]] * h + [X] + [X[:, -1:]] * h, 1)
    return np.ascontiguousarray(np.concatenate([P[:, k:k + cell] for k in range(kr)], -1), np.float32)


def net_scores(m: dict, A: np.ndarray, B: np.ndarray, cell: int, chunk: int = 32) -> np.ndarray:
    """net(i, j) = sum over the rows l along the seam of w . relu(U a_il + V b_jl + c), all pairs, (n, n)."""
    u = rows(A, cell) @ m["U"] + m["c"]            # (n, cell, H)
    v = rows(B, cell) @ m["V"]
    w = m["w"]
    out = np.empty((len(u), len(v)), np.float32)
    for s in range(0, len(u), chunk):
        h = np.maximum(u[s:s + chunk, None] + v[None], 0)
        out[s:s + chunk] = h.sum(axis=2) @ w
    return out


_CACHE: dict = {}
_ON = [False, False]


@contextmanager
def enabled(on: bool = True, force: bool = False):
    """Within the block, :func:`.solver.solve_stored` uses the learned model unless told otherwise (so that a
    benchmark can run the audit, which calls the solver itself, with and without it); ``force``: at its fitted
    weight ``gamma_fit`` even where the held-out gain was too small to switch it on (``gamma`` 0)."""
    old, _ON[:] = list(_ON), [on, force]
    try:
        yield
    finally:
        _ON[:] = old


def learned_on() -> bool:
    return _ON[0]


def load_models(path: Path = WEIGHTS) -> dict:
    """{key: {"U", "V", "c", "w", "alpha", "gamma", "gamma_fit"}} from the shipped weights ({} when there are none)."""
    if path not in _CACHE:
        models = {}
        if path.exists():
            with np.load(path) as z:
                for name in z.files:
                    k, part = name.rsplit("/", 1)
                    models.setdefault(k, {})[part] = z[name].astype(np.float32)
        _CACHE[path] = models
    return _CACHE[path]


def learned_cost(st: Stored, cell: int, gap: int, D: np.ndarray, mixed: bool, orient: bool,
                 model: dict | None = None, force: bool | None = None) -> np.ndarray:
    """The hand-crafted dissimilarity ``D`` (:func:`.seams.compatibility`, same layout) combined with the learned
    model of this setting: ``D * exp(-gamma net / alpha)``; ``D`` unchanged where no model fits the setting or
    its ``gamma`` is 0 (``force``, default as :func:`enabled` says: ``gamma_fit`` instead)."""
    m = model or load_models().get(key_of(st, cell, gap, mixed))
    gamma = None if m is None else float(m["gamma_fit" if (_ON[1] if force is None else force) else "gamma"])
    if not gamma:
        return D
    A, B = bands(st, cell, int(m["U"].shape[0]) // 9)     # U's rows: 3 rows x band columns x 3 channels
    n0 = len(A) // 8
    t = _transpose_index(n0)
    k = gamma / float(m["alpha"])
    out = np.empty_like(D)
    if orient:
        S = net_scores(m, A, B, cell)
        out[0] = D[0] * np.exp(-k * S)
        out[1] = D[1] * np.exp(-k * S[np.ix_(t, t)])
    else:                # the upright pieces; below-of is right-of of their transposes (virtual pieces t[:n0])
        out[0] = D[0] * np.exp(-k * net_scores(m, A[:n0], B[:n0], cell))
        out[1] = D[1] * np.exp(-k * net_scores(m, A[t[:n0]], B[t[:n0]], cell))
    return out.astype(np.float32)


# ------------------------------------------------------------------ training data
def _photos() -> list[np.ndarray]:
    import skimage.data as data

    out = []
    for name in TRAIN_PHOTOS:
        if name.startswith("sklearn:"):
            from sklearn.datasets import load_sample_image

            a = load_sample_image(name.split(":")[1] + ".jpg")
        else:
            a = getattr(data, name)()
            a = a[0] if isinstance(a, tuple) else a
        a = np.asarray(a)
        if a.dtype != np.uint8:
            a = (255 * (a.astype(np.float64) / max(1e-9, float(a.max())))).astype(np.uint8)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(a[..., :3]))
    return out


def _crop(img: np.ndarray, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    s = int(rng.integers(min(size, h, w), min(h, w) + 1))
    y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    im = Image.fromarray(img[y:y + s, x:x + s]).resize((size, size), Image.BILINEAR)
    return np.ascontiguousarray(orient_pieces(np.asarray(im)[None], int(rng.integers(8)))[0])


def make_training_puzzle(img: np.ndarray, name: str, patch: int, gap: int, fmt: str,
                         rng: np.random.Generator) -> dict:
    """One puzzle as the product makes it (its kernels, --flip, its storage); the attacker's inputs and the
    true right-of pairs of virtual pieces (from the permutation and orientations the owner's key gives)."""
    import torch

    from ..kernels import encrypt
    from ..kernels.perm import make_permutations
    from ..encode import choose_format
    from ..scheme import Scheme

    h, w = img.shape[:2]
    sch = Scheme.named(name, patch, h, w, gap, 0.0, flip=True)
    flat = Scheme.named(name, patch, h, w, gap, 0.0, flip=False)
    n = sch.num_patches
    cells = make_permutations(rng.integers(0, 2 ** 62, (1, n), dtype=np.int64), orient=True)
    x = torch.from_numpy(img[None].copy())
    out = encrypt(sch, x, cells)[0].numpy()
    ref = encrypt(flat, x, cells % n)[0].numpy()     # the same cells, unturned
    cell = sch.out_cell
    fmt_ = choose_format(fmt, sch)
    st = load_stored(fmt_.encode(out), fmt_.ext)

    def cut(a):
        gh, gw = a.shape[0] // cell, a.shape[1] // cell
        return a.reshape(gh, cell, gw, cell, -1).transpose(0, 2, 1, 3, 4).reshape(gh * gw, cell, cell, -1)

    P, R = cut(out), cut(ref)
    up = np.array([next((q for q in range(8) if np.array_equal(orient_pieces(P[j:j + 1], q)[0], R[j])), 0)
                   for j in range(n)])          # the orientation that turns stored slot j upright
    slot = np.argsort(cells[0] % n).reshape(sch.grid)     # plain position -> stored slot
    vir = up[slot] * n + slot
    t = _transpose_index(n)
    pairs = np.concatenate([np.stack([vir[:, :-1].ravel(), vir[:, 1:].ravel()], 1),
                            np.stack([t[vir[:-1].ravel()], t[vir[1:].ravel()]], 1)])
    D = compatibility(st, cell, gap, MIXED if sch.definition.mixed else None, orient=True)[0]
    A, B = bands(st, cell)
    return {"A": A, "B": B, "pairs": pairs, "D": D, "n": n, "cell": cell,
            "key": key_of(st, cell, gap, sch.definition.mixed)}


def training_set(name: str, patch: int, gap: int, fmt: str, puzzles: int, seed: int, size: int = 160) -> list[dict]:
    """``puzzles`` training puzzles of ``size`` x ``size`` crops (smaller than the audit's 224: the same seams,
    fewer candidates, so the hand-crafted measure of every pair costs a quarter)."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    return [make_training_puzzle(_crop(photos[k % len(photos)], rng, size), name, patch, gap, fmt, rng)
            for k in range(puzzles)]


# ------------------------------------------------------------------ fitting
def top1(D: np.ndarray, pairs: np.ndarray) -> float:
    """Share of true pairs (i, j) where j is i's best right neighbour and i is j's best left one (means)."""
    r = np.argmin(D[pairs[:, 0]], axis=1) == pairs[:, 1]
    c = np.argmin(D[:, pairs[:, 1]], axis=0) == pairs[:, 0]
    return float((r.mean() + c.mean()) / 2)


def fit(data: list[dict], seed: int = 0, steps: int = 500, anchors: int = 64, val: float = 0.2,
        hidden: int = HIDDEN) -> tuple[dict, dict]:
    """Train one model on ``data`` (:func:`training_set`); returns (weights, {"hand": top-1, "learned": ...} on
    the held-out puzzles, the first ``val`` of them). Deterministic from ``seed`` (one torch thread)."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    nval = max(1, int(round(val * len(data)))) if len(data) > 1 else 0
    tr, va = data[nval:], data[:nval]
    cell = tr[0]["cell"]
    prep = []
    for p in tr:
        lD = np.log(np.where(np.isfinite(p["D"]), p["D"], 1e9) + 1e-6).astype(np.float32)
        prep.append((torch.from_numpy(rows(p["A"], cell)), torch.from_numpy(rows(p["B"], cell)),
                     torch.from_numpy(lD), torch.from_numpy(~np.isfinite(p["D"])), p["pairs"]))
    d_in = prep[0][0].shape[-1]
    g = torch.Generator().manual_seed(seed)
    U = (torch.randn(d_in, hidden, generator=g) / d_in ** 0.5).requires_grad_()
    V = (torch.randn(d_in, hidden, generator=g) / d_in ** 0.5).requires_grad_()
    c = torch.zeros(hidden, requires_grad=True)
    w = (torch.randn(hidden, generator=g) * 0.1).requires_grad_()
    la = torch.zeros((), requires_grad=True)              # alpha = exp(la): the weight of -log D
    opt = torch.optim.Adam([U, V, c, w, la], lr=1e-2)
    for _ in range(steps):
        A, B, lD, bad, pairs = prep[int(rng.integers(len(prep)))]
        pk = pairs[rng.choice(len(pairs), min(anchors, len(pairs)), replace=False)]
        i, j = torch.from_numpy(pk[:, 0]), torch.from_numpy(pk[:, 1])
        a, b = A @ U + c, B @ V                                         # (n, cell, H)
        # rows: i against every candidate right neighbour; columns: j against every candidate left one
        hr = torch.relu(a[i][:, None] + b[None]).sum(2) @ w
        hc = torch.relu(a[None] + b[j][:, None]).sum(2) @ w
        alpha = la.exp()
        lr_ = (-alpha * lD[i] + hr).masked_fill(bad[i], -1e9)
        lc = (-alpha * lD[:, j].T + hc).masked_fill(bad[:, j].T, -1e9)
        loss = torch.nn.functional.cross_entropy(lr_, j) + torch.nn.functional.cross_entropy(lc, i)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m = {"U": U.detach().numpy(), "V": V.detach().numpy(), "c": c.detach().numpy(), "w": w.detach().numpy(),
         "alpha": np.float32(la.exp().item())}
    S = [net_scores(m, p["A"], p["B"], cell) for p in va]
    gains = {}
    for gamma in (0.0, 0.25, 0.5, 1.0):
        k = gamma / float(m["alpha"])
        gains[gamma] = float(np.mean([top1(p["D"] * np.exp(-k * s), p["pairs"]) for p, s in zip(va, S)])) if va else 0.0
    best = max(gains, key=lambda q: (gains[q], -q))
    on = gains[best] - gains[0.0] >= MIN_GAIN
    m["gamma_fit"], m["gamma"] = np.float32(best), np.float32(best if on else 0.0)
    return m, {"hand": gains[0.0], "learned": gains[best], "gamma_fit": best, "gamma": float(m["gamma"]),
               "by_gamma": gains}


def save_models(models: dict, path: Path = WEIGHTS) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{f"{k}/{part}": np.asarray(v, np.float16 if v.ndim else np.float32)
                                for k, m in models.items() for part, v in m.items()})
    path.write_bytes(buf.getvalue())
    _CACHE.pop(path, None)


def train_one(name: str, patch: int, gap: int, fmt: str, puzzles: int = 16, seed: int = 0, steps: int = 500,
              size: int = 160) -> tuple[str, dict, dict]:
    """(key, weights, held-out report) of one setting."""
    data = training_set(name, patch, gap, fmt, puzzles, seed, size)
    m, r = fit(data, seed, steps)
    return data[0]["key"], m, r


def train_all(puzzles: int = 16, seed: int = 0, steps: int = 500, settings=None, log=print,
              path: Path = WEIGHTS) -> dict:
    """Fit the models of ``settings`` (default :data:`SETTINGS`) and write :data:`WEIGHTS` (models of other
    settings already there are kept); returns the held-out top-1 of each (hand-crafted alone and combined)."""
    models, report = dict(load_models(path)), {}
    for name, patch, gap, fmt in settings or SETTINGS:
        k, m, r = train_one(name, patch, gap, fmt, puzzles, seed, steps)
        models[k] = m
        report[f"{name} P={patch} gap {gap} flip {fmt}"] = r
        log(f"{name} P={patch} gap {gap} flip {fmt}: held-out top-1 hand {r['hand']:.3f} -> "
            f"combined {r['learned']:.3f} (fitted gamma {r['gamma_fit']}, used {r['gamma']})")
    save_models(models, path)
    return report
