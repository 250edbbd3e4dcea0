"""The recognition test: what a model can tell from the attacker's best picture.

A count of rebuilt seams says little about what a person sees in a reconstruction (a fragment in the wrong
pose scores nothing, a smooth sky scores a lot). This test trains a plain model on the shapes proxy's plain
images (:func:`himr_pipe.sample_data.make_shapes_classification`, the images ``himr-pipe sample-data --task
shapes`` writes), then measures its top-1:

* on held-out plain images (what the picture could give at best);
* on the attacker's reconstructions of the same held-out images, each encrypted with a setting and stored as
  the product stores it (:func:`reconstruction`: the audit's own attack and picture, :func:`.attack.attack_sample`:
  the solved layout, for MI-like settings followed by the MI inverse, turned to the best-aligned frame);
* on the same cells at random places and poses (:func:`bag_picture`): what the cells alone tell, no seam solved;
* against chance (1 / classes).

A setting whose reconstructions score near chance (or near the bag of its cells) shows the model nothing of the
class that solving added; near the plain figure, everything. The model is a small CNN trained on the CPU in
about a minute (minutes at 224 px), with the 8 symmetries of the frame as augmentation (the shapes are drawn at any rotation; the attacker's picture is
turned to its best-aligned frame). Deterministic from its seed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..kernels.perm import turn
from ..scheme import Scheme


def shapes_set(per_class: int, size: int, seed, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                          tuple]:
    """The shapes proxy's plain images as ``sample-data --task shapes`` writes them (JPEG q90), read back:
    (N x size x size x 3 uint8, N labels, class names). ``seed``: as for make_shapes_classification."""
    from PIL import Image

    from ..sample_data import SHAPE_CLASSES, make_shapes_classification

    with tempfile.TemporaryDirectory(prefix="himr-shapes-") as tmp:
        root = Path(root or tmp)
        make_shapes_classification(root, per_class=per_class, size=size, seed=seed)
        imgs, labels = [], []
        for k, cls in enumerate(SHAPE_CLASSES):
            for p in sorted((root / cls).iterdir()):
                imgs.append(np.asarray(Image.open(p).convert("RGB")))
                labels.append(k)
    return np.stack(imgs), np.array(labels), SHAPE_CLASSES


def _net(classes: int):
    from torch import nn

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                nn.MaxPool2d(2)]

    return nn.Sequential(*block(3, 16), *block(16, 32), *block(32, 64), *block(64, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, classes))


def _tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0).sub(0.5)


def train_plain(images: np.ndarray, labels: np.ndarray, classes: int, epochs: int = 15, seed: int = 0,
                batch: int = 32, lr: float = 3e-3):
    """A small CNN trained on plain images (N x H x W x 3 uint8), with the frame's 8 symmetries as
    augmentation; returns it in eval mode. Same arguments, same model (CPU)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = _net(classes)
    x, y = _tensor(images), torch.from_numpy(np.asarray(labels)).long()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            xb = x[idx]
            xb = turn(xb, int(torch.randint(0, 8, (1,), generator=g)), 2, 3)  # the frame's 8 symmetries
            loss = torch.nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def top1(net, images: np.ndarray, labels: np.ndarray, batch: int = 64) -> float:
    """Share of ``images`` whose top class is their label."""
    import torch

    x = _tensor(images)
    with torch.no_grad():
        pred = torch.cat([net(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)]).numpy()
    return float((pred == np.asarray(labels)).mean())


def encrypt_stored(scheme: Scheme, img: np.ndarray, fmt: str, seed: int) -> tuple[bytes, str, np.ndarray | None]:
    """One image encrypted by the product's kernels with a seeded key and stored as the product stores it:
    (bytes, extension, the true cells; None for a scheme that keeps positions)."""
    import torch

    from ..encode import choose_format
    from ..kernels import encrypt, make_permutations

    cells = None
    if scheme.shuffled:
        keys = np.random.default_rng(seed).integers(0, 2**63, (1, scheme.num_patches))
        cells = make_permutations(keys, orient=scheme.flip)
    out = encrypt(scheme, torch.from_numpy(img[None].copy()), cells)[0].numpy()
    f = choose_format(fmt, scheme)
    return f.encode(out), f.ext, None if cells is None else cells[0]


def reconstruction(scheme: Scheme, img: np.ndarray, fmt: str, seed: int) -> tuple[np.ndarray, dict]:
    """The audit's attack on ``img`` encrypted with ``scheme``: (the attacker's picture at the plain image's
    size, the audit's figures for it)."""
    from PIL import Image

    from .attack import attack_sample

    blob, ext, cells = encrypt_stored(scheme, img, fmt, seed)
    row, pictures = attack_sample(scheme, blob, ext, cells)
    pic = np.asarray(pictures[-1], np.uint8)
    if pic.shape[:2] != img.shape[:2]:
        pic = np.asarray(Image.fromarray(pic).resize(img.shape[1::-1], Image.BILINEAR))
    return pic, row


def bag_picture(scheme: Scheme, img: np.ndarray, fmt: str, seed: int) -> np.ndarray:
    """The same stored cells at random places (and, with the flip defence, in random poses), drawn as the
    attacker's picture is drawn (MI-like settings: after the MI inverse): what the cells' colours and textures
    alone tell a model, with no seam solved. The reference a reconstruction must beat to show the attack
    recovered anything of the image."""
    from PIL import Image

    from ..shards import decode_image
    from .jigsaw import assemble, cut
    from .mi_inverse import ls_inverse
    from .seams import virtual_pieces

    blob, ext, _ = encrypt_stored(scheme, img, fmt, seed)
    stored = decode_image(blob, ext)
    if not scheme.shuffled:
        pic = stored
    else:
        n = scheme.num_patches
        rng = np.random.default_rng([seed, 1])
        layout = rng.permutation(n).reshape(scheme.grid)
        pieces = cut(stored, scheme.out_cell)
        if scheme.flip:
            pieces = virtual_pieces(pieces)
            layout = layout + n * rng.integers(0, 8, layout.shape)
        pic = assemble(pieces, layout)
    if scheme.definition.mixed:
        pic = ls_inverse(pic, scheme.patch)
    pic = np.asarray(pic, np.uint8)
    if pic.shape[:2] != img.shape[:2]:
        pic = np.asarray(Image.fromarray(pic).resize(img.shape[1::-1], Image.BILINEAR))
    return pic


def recognition_row(net, scheme: Scheme, images: np.ndarray, labels: np.ndarray, fmt: str, seed: int = 0,
                    classes: int = 4) -> dict:
    """Top-1 of ``net`` on the attacker's reconstructions of ``images`` under ``scheme`` stored as ``fmt``,
    with the plain top-1, chance, and the audit's mean figures (neighbour, direct, pose-free neighbour, side by
    side)."""
    pics, bags, rows = [], [], []
    for i, img in enumerate(images):
        pic, row = reconstruction(scheme, img, fmt, seed + i)
        pics.append(pic)
        bags.append(bag_picture(scheme, img, fmt, seed + i))
        rows.append(row)
    out = {"plain_top1": top1(net, images, labels), "recon_top1": top1(net, np.stack(pics), labels),
           "bag_top1": top1(net, np.stack(bags), labels), "chance": 1.0 / classes, "samples": len(images)}
    for k in ("neighbour_accuracy", "direct_accuracy", "pose_free_neighbour", "proximity", "attack_seconds"):
        if all(k in r for r in rows):
            out[k] = float(np.mean([r[k] for r in rows]))
    return out
