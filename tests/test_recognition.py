"""The recognition test (himr_pipe.audit.recognition): a plain model's top-1 on the attacker's pictures."""

from __future__ import annotations

import numpy as np
import pytest

SIZE = 32


@pytest.fixture(scope="module")
def model():
    import torch

    from himr_pipe.audit.recognition import shapes_set, train_plain

    torch.set_num_threads(1)   # deterministic and polite on a shared machine
    x, y, classes = shapes_set(50, SIZE, 0)        # one draw (the textures load once), grouped by class
    order = np.arange(len(y)).reshape(len(classes), 50)   # the last 10 of each class are held out
    tr, te = order[:, :40].ravel(), order[:, 40:].ravel()
    xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    return train_plain(xtr, ytr, len(classes), epochs=10, seed=0), xte, yte, len(classes)


def test_the_plain_model_learns_and_is_deterministic(model):
    from himr_pipe.audit.recognition import top1, train_plain

    net, xte, yte, k = model
    assert top1(net, xte, yte) >= 1 / k + 0.1                     # above chance on held-out plain images
    xtr, ytr = xte[::4], yte[::4]
    a, b = (train_plain(xtr, ytr, k, epochs=1, seed=3) for _ in range(2))
    assert all(np.array_equal(p.detach().numpy(), q.detach().numpy()) for p, q in zip(a.parameters(), b.parameters()))


def test_recognition_is_chance_on_noise(model):
    from himr_pipe.audit.recognition import top1

    net, xte, yte, k = model
    noise = np.random.default_rng(0).integers(0, 256, xte.shape, dtype=np.uint8)   # labels balanced: 10 a class
    assert abs(top1(net, noise, yte) - 1 / k) <= 0.1


def test_recognition_on_scheme_none_is_near_the_plain_figure(model):
    """Scheme none keeps the picture: its 'reconstruction' is the stored image itself (JPEG q90), and the model
    recognises it about as well as the plain image."""
    from himr_pipe.audit.recognition import recognition_row
    from himr_pipe.scheme import Scheme

    net, xte, yte, k = model
    row = recognition_row(net, Scheme.named("none", 16, SIZE, SIZE), xte, yte, "jpeg", classes=k)
    assert row["chance"] == 1 / k and row["samples"] == len(xte)
    assert abs(row["recon_top1"] - row["plain_top1"]) <= 0.1
    assert row["bag_top1"] == row["recon_top1"]          # nothing shuffled: the bag of cells is the picture itself
    assert row["neighbour_accuracy"] == row["direct_accuracy"] == 1.0


def test_the_bag_of_cells_is_the_stored_cells_at_random_places_and_poses(model):
    """The reference a reconstruction must beat: the stored image's own cells, moved and turned at random (rs
    --flip, PNG: every pixel kept, so the two hold the same pixels and differ in where they stand)."""
    from himr_pipe.audit.recognition import bag_picture, encrypt_stored
    from himr_pipe.scheme import Scheme
    from himr_pipe.shards import decode_image

    _, xte, _, _ = model
    s = Scheme.named("rs", 16, SIZE, SIZE, flip=True)
    bag = bag_picture(s, xte[0], "png", 3)
    blob, ext, _ = encrypt_stored(s, xte[0], "png", 3)
    stored = decode_image(blob, ext)
    assert bag.shape == stored.shape
    assert np.array_equal(np.sort(bag.reshape(-1, 3), axis=0), np.sort(stored.reshape(-1, 3), axis=0))
    assert not np.array_equal(bag, stored)
    assert np.array_equal(bag, bag_picture(s, xte[0], "png", 3))     # deterministic from its seed


def test_a_reconstruction_is_the_attackers_picture_at_the_plain_size(model):
    """mi-shuffle --flip (the default): the picture the model is shown is the audit's, after the MI inverse, at
    the plain image's size; the row carries the audit's figures beside the top-1."""
    from himr_pipe.audit.recognition import reconstruction
    from himr_pipe.scheme import Scheme

    _, xte, _, _ = model
    pic, row = reconstruction(Scheme.named("mi-shuffle", 16, SIZE, SIZE, flip=True), xte[0], "jpeg", 0)
    assert pic.shape == xte[0].shape and pic.dtype == np.uint8
    assert {"neighbour_accuracy", "direct_accuracy", "pose_free_neighbour"} <= set(row)
