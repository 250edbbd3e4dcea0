"""Scores of a jigsaw reconstruction against the truth."""

from __future__ import annotations

import numpy as np


def direct_accuracy(layout: np.ndarray, truth: np.ndarray) -> float:
    """Share of pieces placed at their true position (layouts of piece indices, same shape)."""
    return float((layout == truth).mean())


def _adjacent(layout: np.ndarray) -> set[tuple[int, int, int]]:
    right = {(int(a), int(b), 0) for a, b in zip(layout[:, :-1].ravel(), layout[:, 1:].ravel())}
    down = {(int(a), int(b), 1) for a, b in zip(layout[:-1].ravel(), layout[1:].ravel())}
    return right | down


def neighbour_accuracy(layout: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true adjacencies (right and down pairs) that the reconstruction also has."""
    true_pairs = _adjacent(truth)
    return len(true_pairs & _adjacent(layout)) / max(1, len(true_pairs))


def image_quality(recon: np.ndarray, plain: np.ndarray) -> dict:
    """PSNR (dB) and SSIM of a reconstruction against the plain image (uint8 HxWxC)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    exact = np.array_equal(recon, plain)  # skimage would divide by a zero error
    return {"psnr": float("inf") if exact else float(peak_signal_noise_ratio(plain, recon, data_range=255)),
            "ssim": float(structural_similarity(plain, recon, channel_axis=-1, data_range=255))}


def layout_scores(layout: np.ndarray, truth: np.ndarray, blank: np.ndarray | None = None) -> dict:
    """Direct and neighbour accuracy of ``layout`` against ``truth``, ignoring blank (dropped) pieces.

    ``layout`` and ``truth`` are (gh, gw) arrays of piece indices; ``blank`` is
    a bool (N,) array of pieces that carry nothing (dropped: all wildcards).

    * direct: share of the true positions holding a non-blank piece that the
      layout fills with that same piece;
    * neighbour: share of the true adjacent pairs (right and down) of two
      non-blank pieces that the layout also has (same pieces, same relation).

    Without blank pieces these equal :func:`direct_accuracy` and
    :func:`neighbour_accuracy`.
    """
    layout, truth = np.asarray(layout), np.asarray(truth)
    if layout.shape != truth.shape:
        raise ValueError(f"layout {layout.shape} and truth {truth.shape} differ in shape")
    n = truth.size
    blank = np.zeros(n, bool) if blank is None else np.asarray(blank, bool)
    real = ~blank[truth]
    direct = float((layout == truth)[real].sum() / max(1, real.sum()))
    # successor of every piece in the layout, per relation (-1: none)
    succ = -np.ones((2, n), int)
    succ[0, layout[:, :-1].ravel()] = layout[:, 1:].ravel()
    succ[1, layout[:-1].ravel()] = layout[1:].ravel()
    hits, total = 0, 0
    for rel, (a, b) in enumerate(((truth[:, :-1], truth[:, 1:]), (truth[:-1], truth[1:]))):
        a, b = a.ravel(), b.ravel()
        keep = ~blank[a] & ~blank[b]
        total += int(keep.sum())
        hits += int((succ[rel, a[keep]] == b[keep]).sum())
    return {"direct": direct, "neighbour": hits / max(1, total)}


def frame_symmetries(a: np.ndarray) -> list[np.ndarray]:
    """A layout (or an image: the first two axes) under every symmetry of its frame: 8 for a square
    frame, 4 (identity, mirrors, half turn) otherwise. With turned pieces (the flip defence) a solver
    finds the picture only up to one of them; the same index turns the layout and its picture alike."""
    a = np.asarray(a)
    out = [a, a[:, ::-1], a[::-1], a[::-1, ::-1]]
    if a.shape[0] == a.shape[1]:
        out += [x.swapaxes(0, 1) for x in out]
    return out


def symmetric_layout_scores(layout: np.ndarray, truth: np.ndarray, blank: np.ndarray | None = None) -> dict:
    """:func:`layout_scores` of the best-aligned symmetry of ``layout`` (:func:`frame_symmetries`), with
    its index as ``symmetry``: the attacker's picture counts as found however it is turned (a slight favour
    to the attacker: at chance the best of 8 alignments scores a little above one)."""
    scored = [{**layout_scores(x, truth, blank), "symmetry": k} for k, x in enumerate(frame_symmetries(layout))]
    return max(scored, key=lambda d: (d["neighbour"], d["direct"], -d["symmetry"]))


def _turn_step(dr: int, dc: int, g: int) -> tuple[int, int]:
    """The step (dr, dc) between two cells after the picture is turned by orientation code ``g``
    (:func:`.seams.orient_pieces`: bit 0 transposes, then bit 1 reverses the columns, then bit 2 the rows)."""
    if g & 1:
        dr, dc = dc, dr
    if g & 2:
        dc = -dc
    if g & 4:
        dr = -dr
    return dr, dc


def pose_free_neighbour(layout: np.ndarray, cells: np.ndarray, blank: np.ndarray | None = None) -> float:
    """Share of the true adjacencies that the layout rebuilds in some common pose: the two pieces are turned
    alike (the same net turn of their plain content) and stand as the plain picture turned that way would have
    them, whatever that turn is. Each recovered pair may keep its own pose, so fragments found in the wrong
    orientation count (the frame-symmetric :func:`symmetric_layout_scores` counts only the best one pose).

    ``layout``: (gh, gw) of pieces, virtual pieces ``q * N + i`` (stored piece ``i`` turned by ``q``) with the
    flip defence; ``cells``: the truth, stored cell ``j`` = plain cell ``cells[j] % N`` turned by
    ``cells[j] // N`` (the product's packed permutation); ``blank``: stored cells that carry nothing."""
    from .seams import COMPOSE

    layout, cells = np.asarray(layout), np.asarray(cells).ravel()
    gh, gw = layout.shape
    n = layout.size
    blank = np.zeros(n, bool) if blank is None else np.asarray(blank, bool)
    v = layout.ravel()
    stored, q = v % n, v // n
    plain = cells[stored] % n
    pos = np.empty((n, 2), int)
    pos[plain] = np.stack(np.divmod(np.arange(n), gw), 1)
    turn = np.empty(n, int)
    turn[plain] = COMPOSE[cells[stored] // n, q]
    void = np.zeros(n, bool)
    void[cells[np.nonzero(blank)[0]] % n] = True
    hits = total = 0
    for step in ((0, 1), (1, 0)):
        for r in range(gh - step[0]):
            for c in range(gw - step[1]):
                a, b = r * gw + c, (r + step[0]) * gw + c + step[1]
                if void[a] or void[b]:
                    continue
                total += 1
                g = int(turn[a])
                hits += bool(turn[b] == g and tuple(pos[b] - pos[a]) == _turn_step(*step, g))
    return hits / max(1, total)


def side_by_side(layout: np.ndarray, cells: np.ndarray, blank: np.ndarray | None = None) -> dict:
    """The loosest count of what a layout rebuilds: the share of the true adjacencies whose two pieces stand
    side by side in the layout, whatever their poses and whichever side (``proximity``), and that share for a
    layout drawn at random (``proximity_chance``: layout adjacencies over all pairs of real pieces).

    It counts what the attacker knows of *where* a piece belongs (near which others), not whether the seam
    joins: a pair found on the wrong side or turned apart counts here and not in :func:`pose_free_neighbour`.
    ``layout``, ``cells`` and ``blank`` as there (virtual pieces ``q * N + i`` with the flip defence, plain
    stored indices without it; ``cells`` the packed permutation)."""
    layout, cells = np.asarray(layout), np.asarray(cells).ravel()
    gh, gw = layout.shape
    n = layout.size
    blank = np.zeros(n, bool) if blank is None else np.asarray(blank, bool)
    plain = (cells[layout.ravel() % n] % n).reshape(gh, gw)    # the plain cell each slot shows
    void = np.zeros(n, bool)
    void[cells[np.nonzero(blank)[0]] % n] = True
    hits = 0
    for a, b in ((plain[:, :-1], plain[:, 1:]), (plain[:-1], plain[1:])):
        ra, rb = np.stack(np.divmod(a, gw), -1), np.stack(np.divmod(b, gw), -1)
        keep = ~void[a] & ~void[b]
        hits += int(((np.abs(ra - rb).sum(-1) == 1) & keep).sum())
    total = (gh - 1) * gw + gh * (gw - 1) - _void_edges(void, gh, gw)
    m = int((~void).sum())
    slots = (gh - 1) * gw + gh * (gw - 1)
    return {"proximity": hits / max(1, total), "proximity_chance": slots / max(1, m * (m - 1) / 2)}


def _void_edges(void: np.ndarray, gh: int, gw: int) -> int:
    """True adjacencies that touch a blank (dropped) plain cell: they are not counted."""
    v = void.reshape(gh, gw)
    return int((v[:, :-1] | v[:, 1:]).sum() + (v[:-1] | v[1:]).sum())
