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
