"""The structured accuracy proxy: large photo-textured shapes (himr-pipe sample-data --task shapes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from himr_pipe.cli import main
from himr_pipe.sample_data import SHAPE_CLASSES, load_textures, make_shapes_classification, shapes_image


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_layout(tmp_path):
    a = make_shapes_classification(tmp_path / "a", per_class=3, size=64, seed=7)
    make_shapes_classification(tmp_path / "b", per_class=3, size=64, seed=7)
    make_shapes_classification(tmp_path / "c", per_class=3, size=64, seed=8)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == {"classes": len(SHAPE_CLASSES), "images": 3 * len(SHAPE_CLASSES), "size": 64}
    assert fa == fb
    assert sorted(fa) == sorted(fc) and fa != fc
    assert sorted(fa) == [f"{c}/{i:05d}.jpg" for c in SHAPE_CLASSES for i in range(3)]
    im = Image.open(tmp_path / "a" / "disc" / "00000.jpg")
    assert im.size == (64, 64) and im.mode == "RGB"


def test_png_and_a_smaller_run_is_a_prefix(tmp_path):
    make_shapes_classification(tmp_path / "big", per_class=3, size=48, seed=1, fmt="png")
    make_shapes_classification(tmp_path / "small", per_class=2, size=48, seed=1, fmt="png")
    big, small = _files(tmp_path / "big"), _files(tmp_path / "small")
    assert small and all(big[k] == v for k, v in small.items())
    assert all(k.endswith(".png") for k in big)


def test_objects_span_many_patches_whole_textured_and_brighter():
    """At 128 px every object crosses at least 4 of the 16-px cells (most cross far more), never touches
    the border (it is whole), and has photo texture inside and around it."""
    textures = load_textures()
    rng = np.random.default_rng(0)
    cells_seen = []
    for _ in range(10):
        for kind in SHAPE_CLASSES:
            img, mask = shapes_image(kind, rng, 128, textures)
            assert img.shape == (128, 128, 3) and img.dtype == np.uint8
            cells = int(mask.reshape(8, 16, 8, 16).any(axis=(1, 3)).sum())
            cells_seen.append(cells)
            assert cells >= 4, (kind, cells)
            assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
            lum = img.astype(float).mean(axis=2)
            inside, outside = lum[mask], lum[~mask]
            assert inside.std() > 3 and outside.std() > 3  # texture, not a flat fill
            assert inside.mean() > outside.mean() + 40     # the object is the bright one: a clear outline
    assert np.median(cells_seen) >= 16


def test_textures_are_drawn_independently_of_the_class():
    """From the same generator state, every class gets the same fill and background: the pixels outside
    both objects are equal, and so are those inside both. The class is carried by the outline alone."""
    textures = load_textures()
    draws = {k: shapes_image(k, np.random.default_rng(3), 128, textures) for k in SHAPE_CLASSES}
    (ia, ma), (ib, mb) = draws["disc"], draws["triangle"]
    assert (ma != mb).any()
    assert np.array_equal(ia[~ma & ~mb], ib[~ma & ~mb])
    assert (ma & mb).any() and np.array_equal(ia[ma & mb], ib[ma & mb])


def test_cli_writes_train_and_val(tmp_path):
    r = CliRunner().invoke(main, ["sample-data", "--task", "shapes", "--per-class", "4", "--size", "32",
                                  str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    for split, n in (("train", 4), ("val", 2)):
        for c in SHAPE_CLASSES:
            assert len(list((tmp_path / "s" / split / c).glob("*.jpg"))) == n
    tr, va = _files(tmp_path / "s" / "train"), _files(tmp_path / "s" / "val")
    assert not set(tr.values()) & set(va.values())  # independent draws
    r = CliRunner().invoke(main, ["sample-data", "--size", "32", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--size is for --task shapes" in r.output
