"""himr-pipe sample-data --task detection: a small COCO-format set of shapes drawn on real photos."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from himr_pipe.cli import main
from himr_pipe.sample_data import (DETECTION_CATEGORIES, make_detection_sample, mask_box, mask_to_rle,
                                   render_shape)

SPLITS = ("train2017", "val2017")


@pytest.fixture(scope="module")
def det(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("det") / "coco"
    return root, make_detection_sample(root, train_images=12, val_images=6, seed=3)


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_pycocotools_loads_both(det):
    from pycocotools.coco import COCO

    root, r = det
    assert sorted(p.name for p in root.iterdir()) == ["annotations", "train2017", "val2017"]
    assert r["train_images"] == 12 and r["val_images"] == 6 and r["categories"] == 4
    ann_ids, img_ids = set(), set()
    for split in SPLITS:
        d = _load(root, split)
        assert set(d) == {"info", "licenses", "images", "annotations", "categories"}
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(i["file_name"] for i in d["images"])
        assert len(d["annotations"]) == r[f"{split[:-4]}_annotations"]
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(root / "annotations" / f"instances_{split}.json"))
        assert sorted(coco.getImgIds()) == sorted(i["id"] for i in d["images"])
        licenses = {lic["id"] for lic in d["licenses"]}
        for im in d["images"]:
            assert {"id", "file_name", "width", "height", "coco_url", "license", "date_captured"} <= set(im)
            assert im["coco_url"].startswith("http") and im["license"] in licenses
            with Image.open(root / split / im["file_name"]) as f:
                assert f.format == "JPEG" and f.size == (im["width"], im["height"])
            assert 240 <= min(f.size) and max(f.size) <= 640
        # every shape annotation's mask (pycocotools, from the polygon or RLE) is non-empty
        for a in d["annotations"]:
            assert coco.annToMask(a).sum() > 0
            if a["iscrowd"]:  # the crowd RLE is exactly its visible pixels
                assert coco.annToMask(a).sum() == a["area"]
        ids = [i["id"] for i in d["images"]]
        assert sorted(ids) != list(range(min(ids), min(ids) + len(ids)))  # not sequential, as in COCO
        img_ids |= set(ids)
        ann_ids |= {a["id"] for a in d["annotations"]}
    assert len(img_ids) == r["images"] and len(ann_ids) == r["annotations"]  # distinct across both splits
    sizes = set()
    for split in SPLITS:
        sizes |= {(i["width"], i["height"]) for i in _load(root, split)["images"]}
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)  # both orientations


def test_mask_box_is_tight_with_inclusive_coordinates():
    m = Image.new("L", (64, 48), 0)
    ImageDraw.Draw(m).rectangle([10, 20, 29, 44], fill=255)  # PIL: both corners inclusive
    assert mask_box(m) == ([10, 20, 20, 25], 20 * 25)
    one = np.zeros((5, 7), bool)
    one[3, 6] = True
    assert mask_box(one) == ([6, 3, 1, 1], 1)
    assert mask_box(np.zeros((4, 4), bool)) == ([0, 0, 0, 0], 0)


def test_render_shape_box_area_and_polygon():
    square = np.array([[-5.0, -5.0], [5.0, -5.0], [5.0, 5.0], [-5.0, 5.0]])
    mask, poly = render_shape("square", square, (20, 30), (64, 64))
    assert mask_box(mask) == ([15, 25, 11, 11], 121)  # vertices 15..25 inclusive
    assert poly == [15.5, 25.5, 25.5, 25.5, 25.5, 35.5, 15.5, 35.5]  # pixel centres, COCO coordinates
    t = np.linspace(0, 2 * np.pi, 33)[:-1]
    circle = np.stack([8 * np.cos(t), 8 * np.sin(t)], 1)
    mask, poly = render_shape("disc", circle, (32, 32), (64, 64))
    box, area = mask_box(mask)
    assert box == [24, 24, 17, 17] and 0.9 * np.pi * 8.5 ** 2 < area < 1.1 * np.pi * 8.5 ** 2
    xs, ys = poly[0::2], poly[1::2]
    assert (min(xs), min(ys), max(xs), max(ys)) == pytest.approx((24, 24, 41, 41), abs=0.05)


def test_rle_roundtrips_through_pycocotools():
    from pycocotools import mask as mask_util

    m = np.zeros((9, 13), bool)
    m[0, 0] = m[2:5, 3:8] = m[8, 12] = True
    rle = mask_to_rle(m)
    back = mask_util.decode(mask_util.frPyObjects(rle, *rle["size"]))
    assert np.array_equal(back.astype(bool), m)


def test_boxes_inside_images_and_areas_sane(det):
    root, _ = det
    for split in SPLITS:
        d = _load(root, split)
        ims = {i["id"]: i for i in d["images"]}
        per_image = {}
        for a in d["annotations"]:
            im = ims[a["image_id"]]
            x, y, w, h = a["bbox"]
            assert all(isinstance(v, int) for v in a["bbox"])
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= im["width"] and y + h <= im["height"]
            assert 0 < a["area"] <= w * h <= im["width"] * im["height"]
            assert a["category_id"] in DETECTION_CATEGORIES
            if a["iscrowd"] == 0:
                (poly,) = a["segmentation"]
                assert len(poly) >= 6 and len(poly) % 2 == 0
            per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + (a["iscrowd"] == 0)
        assert set(per_image) == set(ims) and all(1 <= n <= 4 for n in per_image.values())


def test_sizes_span_small_medium_large(det):
    root, _ = det
    areas = [a["area"] for s in SPLITS for a in _load(root, s)["annotations"] if not a["iscrowd"]]
    assert any(a < 32 ** 2 for a in areas)
    assert any(32 ** 2 <= a <= 96 ** 2 for a in areas)
    assert any(a > 96 ** 2 for a in areas)


def test_noncontiguous_categories_and_one_crowd(det):
    root, _ = det
    for split in SPLITS:
        cats = _load(root, split)["categories"]
        ids = sorted(c["id"] for c in cats)
        assert ids == sorted(DETECTION_CATEGORIES) and ids != list(range(ids[0], ids[0] + len(ids)))
        assert {c["name"] for c in cats} == {"square", "disc", "triangle", "bar"}
        assert all(c["supercategory"] == "shape" for c in cats)
    train, val = _load(root, "train2017"), _load(root, "val2017")
    crowd = [a for a in train["annotations"] if a["iscrowd"] == 1]
    assert len(crowd) == 1 and not any(a["iscrowd"] for a in val["annotations"])
    (c,) = crowd
    assert isinstance(c["segmentation"], dict) and c["segmentation"]["counts"]
    im = next(i for i in train["images"] if i["id"] == c["image_id"])
    assert c["segmentation"]["size"] == [im["height"], im["width"]]
    assert sum(c["segmentation"]["counts"][1::2]) == c["area"]  # RLE foreground runs = the pixel count


def test_same_seed_same_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_detection_sample(a, train_images=3, val_images=2, seed=7)
    make_detection_sample(b, train_images=3, val_images=2, seed=7)
    make_detection_sample(c, train_images=3, val_images=2, seed=8)
    fa = _files(a)
    assert fa == _files(b)
    assert fa != _files(c)


def test_cli_detection_and_refuses_nonempty(tmp_path):
    dest = tmp_path / "coco"
    runner = CliRunner()
    res = runner.invoke(main, ["sample-data", "--task", "detection", "--train-images", "3", "--val-images", "2",
                               str(dest)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "3 train, 2 val" in res.output and "COCO detection" in res.output
    assert len(_load(dest, "train2017")["images"]) == 3 and len(_load(dest, "val2017")["images"]) == 2
    res = runner.invoke(main, ["sample-data", "--task", "detection", str(dest)])
    assert res.exit_code == 2 and "not empty" in res.output
    res = runner.invoke(main, ["sample-data", "--task", "detection", "--per-class", "3", str(tmp_path / "x")])
    assert res.exit_code == 2 and not (tmp_path / "x").exists()


def test_cli_rects_kind_is_deterministic_with_distinct_splits(tmp_path):
    """--kind rects: the learnable set of the README's detection path. Same seed, same bytes; the two splits
    are distinct draws; every box is a solid rectangle of its class's colour, inside its image."""
    runner = CliRunner()
    args = ["sample-data", "--task", "detection", "--kind", "rects", "--train-images", "6", "--val-images", "3"]
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        res = runner.invoke(main, [*args, "--seed", str(seed), str(tmp_path / name)], catch_exceptions=False)
        assert res.exit_code == 0 and "6 train, 3 val" in res.output, res.output
    fa = _files(tmp_path / "a")
    assert fa == _files(tmp_path / "b") and fa != _files(tmp_path / "c")
    a = tmp_path / "a"
    train, val = _load(a, "train2017"), _load(a, "val2017")
    assert len(train["images"]) == 6 and len(val["images"]) == 3
    assert fa["train2017/00000.png"] != fa["val2017/00000.png"]
    colour = {3: (240, 30, 30), 7: (30, 230, 30)}
    for split, gt in (("train2017", train), ("val2017", val)):
        files = {im["id"]: im for im in gt["images"]}
        last = {}  # the last-drawn rectangle of each image is wholly visible
        for ann in gt["annotations"]:
            last[ann["image_id"]] = ann
        for ann in last.values():
            im = files[ann["image_id"]]
            px = np.asarray(Image.open(a / split / im["file_name"]))
            x, y, w, h = ann["bbox"]
            assert 0 <= x and x + w <= im["width"] and 0 <= y and y + h <= im["height"]
            assert (px[y:y + h, x:x + w] == colour[ann["category_id"]]).all()
    res = runner.invoke(main, ["sample-data", "--kind", "rects", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--task detection" in res.output and not (tmp_path / "x").exists()
