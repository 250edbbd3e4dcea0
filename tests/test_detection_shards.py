"""encrypt-shards on a COCO source: boxes through letterbox, views and MI, a sanitised ground truth, and every
hostile annotation accounted for. The oracle: ground truth read back from the shards scores COCO AP 1.000."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import cli, encrypt, manifest

from himr_pipe.boxes import canvas_to_orig
from himr_pipe.sample_data import make_detection_sample
from himr_pipe.shards import decode_image, iter_shard


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    make_detection_sample(root, train_images=12, val_images=4, seed=3)
    return root


def read_samples(out) -> list[dict]:
    m = manifest(out)
    rows = []
    for s in m["shards"]:
        for key, mem in iter_shard(str(out), s["name"]):
            rows.append({"key": key, **json.loads(mem["json"]), "members": set(mem), "blob": mem.get(m["job"]["format"]["ext"])})
    return rows


def coco_ap(gt: dict, results: list[dict]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO()
        g.dataset = gt
        g.createIndex()
        e = COCOeval(g, g.loadRes(results), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def test_ground_truth_read_back_from_the_shards_scores_ap_1(coco, tmp_path):
    out = tmp_path / "out"
    r = encrypt(coco / "val2017", out, "--seed", "1", "--shard-size", "3", "--size", "256")
    assert "detection:" in r.output
    m = manifest(out)
    assert m["job"]["task"] == "detection" and m["job"]["scheme"]["kind"] == "mi"  # mi: the detection default
    assert m["job"]["resize"] == "letterbox" and m["job"]["image_ids"] == "opaque"
    cats = {c["label"]: c["id"] for c in m["detection"]["categories"]}
    assert sorted(cats.values()) == [3, 7, 12, 20]  # contiguous labels onto COCO's non-contiguous ids
    gt = json.loads((out / m["detection"]["ground_truth"]["file"]).read_text())
    results = []
    for s in read_samples(out):
        assert s["members"] == {"jpg", "json"} and s["size"] == [128, 128]  # MI halves the 256 canvas
        for box, label in zip(canvas_to_orig(s["boxes"], s["frame"]), s["labels"]):
            results.append({"image_id": s["image_id"], "category_id": cats[label], "bbox": [float(v) for v in box],
                            "score": 1.0})
    stats = coco_ap(gt, results)
    assert stats[0] == pytest.approx(1.0) and stats[1] == pytest.approx(1.0)  # AP, AP50 (ids, cats, frames right)
    assert "0 problem(s)" in cli("verify", out, "--decode").output


def test_the_ground_truth_is_sanitised_and_ids_are_opaque(coco, tmp_path):
    out = tmp_path / "out"
    encrypt(coco / "train2017", out, "--seed", "1", "--size", "256")
    m = manifest(out)
    gt = json.loads((out / m["detection"]["ground_truth"]["file"]).read_text())
    src = json.loads((coco / "annotations" / "instances_train2017.json").read_text())
    assert set(gt) == {"info", "images", "annotations", "categories"}
    assert all(set(i) == {"id", "width", "height"} for i in gt["images"])
    assert all(set(a) == {"id", "image_id", "bbox", "area", "iscrowd", "category_id"} for a in gt["annotations"])
    assert sum(a["iscrowd"] for a in gt["annotations"]) == 1  # the crowd region stays in the ground truth...
    assert len(gt["annotations"]) == len(src["annotations"])
    train_boxes = sum(len(s["labels"]) for s in read_samples(out))
    assert train_boxes == len(src["annotations"]) - 1  # ...and out of the training targets
    src_ids = {i["id"] for i in src["images"]}
    assert {i["id"] for i in gt["images"]} == set(range(1, len(src_ids) + 1)) and not src_ids & set(range(1, 13))
    # nothing in OUT names a source file or carries a polygon or URL
    names = [i["file_name"] for i in src["images"]] + [Path(i["file_name"]).stem for i in src["images"]]
    for f in out.iterdir():
        text = f.read_bytes()
        for n in names:
            assert n.encode() not in text, (f.name, n)
        assert b"segmentation" not in text and b"http" not in text and b"coco_url" not in text
    # the owner's state maps the opaque ids back to the source
    owner = json.loads((Path(f"{out}.state") / "image_ids.json").read_text())
    assert {o["source_id"] for o in owner} == src_ids and {o["file"] for o in owner} == set(names[:len(src_ids)])
    # --keep-image-ids keeps the source's ids
    encrypt(coco / "train2017", tmp_path / "keep", "--seed", "1", "--size", "256", "--keep-image-ids")
    gt2 = json.loads((tmp_path / "keep" / "ground-truth-train.json").read_text())
    assert {i["id"] for i in gt2["images"]} == src_ids


def _hostile_coco(root: Path) -> Path:
    """A COCO set with one of every problem, on three real images."""
    (root / "imgs").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg", "c.jpg", "stray.jpg"):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), np.uint8)).save(root / "imgs" / name, quality=90)
    images = [
        {"id": 10, "file_name": "a.jpg", "width": 160, "height": 120},
        {"id": 10, "file_name": "b.jpg", "width": 160, "height": 120},         # duplicate image id
        {"id": 11, "file_name": "c.jpg", "width": 100, "height": 120},         # size mismatch (file is 160 wide)
        {"id": 12, "file_name": "gone.jpg", "width": 160, "height": 120},      # missing file
        {"id": 13, "file_name": "../etc/passwd.jpg", "width": 160, "height": 120},  # unsafe name
    ]
    ann = [
        {"id": 1, "image_id": 10, "category_id": 5, "bbox": [10, 10, 40, 30], "area": 1200, "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 5, "bbox": [150, 100, 40, 40], "area": 100, "iscrowd": 0},  # clipped
        {"id": 3, "image_id": 10, "category_id": 5, "bbox": [200, 10, 10, 10], "area": 100, "iscrowd": 0},  # outside
        {"id": 4, "image_id": 10, "category_id": 5, "bbox": [5, 5, 0, 10], "area": 0, "iscrowd": 0},  # zero area
        {"id": 5, "image_id": 10, "category_id": 99, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0},  # unknown cat
        {"id": 5, "image_id": 10, "category_id": 5, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0},  # duplicate id
        {"id": 6, "image_id": 77, "category_id": 5, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0},  # unknown image
        {"id": 7, "image_id": 10, "category_id": 5, "bbox": [1, 2, "x", 4], "area": 8, "iscrowd": 0},  # malformed
        {"id": 8, "image_id": 10, "category_id": 5, "bbox": [60, 40, 50, 50], "area": 2500, "iscrowd": 1},  # crowd
        {"id": 9, "image_id": 11, "category_id": 5, "bbox": [1, 1, 20, 20], "area": 400, "iscrowd": 0},  # of c.jpg
    ]
    p = root / "annotations" / "instances_imgs.json"
    p.write_text(json.dumps({"images": images, "annotations": ann, "categories": [{"id": 5, "name": "thing"}]}))
    return root / "imgs"


def test_hostile_coco_inputs_are_each_accounted_for(tmp_path):
    src = _hostile_coco(tmp_path / "h")
    out = tmp_path / "out"
    encrypt(src, out, "--seed", "1", "--size", "128", "--scheme", "none", "--format", "png", expect=3)
    m = manifest(out)
    reasons = sorted(s["reason"].split(":")[0] for s in m["skipped"])
    assert reasons == ["duplicate-image-id", "missing-file", "not-in-annotations", "size-mismatch", "unsafe-file-name"]
    assert m["totals"]["inputs_written"] == 1 and m["totals"]["inputs"] == 6
    a = m["detection"]["annotations"]
    assert a["drop_reasons"] == {"box-outside-image": 1, "duplicate-annotation-id": 1, "malformed-box": 1,
                                 "unknown-category": 1, "unknown-image": 1, "zero-area-box": 1}
    assert a["in_source"] == a["dropped"] + a["of_skipped_images"] + a["in_ground_truth"] == 10
    gt = json.loads((out / "ground-truth-train.json").read_text())
    assert sorted((g["bbox"], g["iscrowd"]) for g in gt["annotations"]) == [
        ([10.0, 10.0, 40.0, 30.0], 0), ([60.0, 40.0, 50.0, 50.0], 1), ([150.0, 100.0, 10.0, 20.0], 0)]  # clipped
    (s,) = read_samples(out)
    assert len(s["boxes"]) == 2  # the crowd box is not a training target
    dropped = json.loads((Path(f"{out}.state") / "dropped_annotations.json").read_text())
    assert len(dropped) == 6 and all(d["reason"] for d in dropped)


def test_malformed_json_rs_and_crop_are_refused_before_any_work(coco, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = encrypt(coco / "val2017", tmp_path / "o1", "--annotations", bad, expect=2)
    assert "not valid JSON" in r.output and not (tmp_path / "o1").exists()
    bad.write_text(json.dumps({"images": []}))
    r = encrypt(coco / "val2017", tmp_path / "o1", "--annotations", bad, expect=2)
    assert "not a COCO instances file" in r.output
    r = encrypt(coco / "val2017", tmp_path / "o2", "--scheme", "rs", expect=2)
    assert "refused for detection" in r.output
    r = encrypt(coco / "val2017", tmp_path / "o3", "--scheme", "mi-shuffle", expect=2)
    assert "refused for detection" in r.output
    r = encrypt(coco / "val2017", tmp_path / "o4", "--resize", "crop", expect=2)
    assert "cuts objects away" in r.output


def test_views_move_boxes_with_the_pixels(tmp_path):
    """Each view is a random crop + flip, letterboxed: a solid rectangle's box must frame its pixels on the canvas."""
    root = tmp_path / "v"
    (root / "imgs").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, ann = [], []
    for i, (w, h, box) in enumerate([(320, 200, (40, 30, 120, 90)), (200, 300, (60, 150, 100, 80)),
                                     (256, 256, (150, 20, 60, 200))]):
        a = np.full((h, w, 3), 40, np.uint8)
        x, y, bw, bh = box
        a[y:y + bh, x:x + bw] = (250, 20, 20)
        Image.fromarray(a).save(root / "imgs" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
        ann.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": list(box), "area": bw * bh, "iscrowd": 0})
    (root / "annotations" / "instances_imgs.json").write_text(json.dumps(
        {"images": images, "annotations": ann, "categories": [{"id": 1, "name": "red"}]}))
    out = tmp_path / "out"
    encrypt(root / "imgs", out, "--seed", "4", "--size", "128", "--scheme", "none", "--format", "png", "--views", "6")
    flips = 0
    for s in read_samples(out):
        img = decode_image(s["blob"], "png").astype(int)
        red = (img[..., 0] > 150) & (img[..., 1] < 100)
        flips += s["frame"]["flip"]
        if not s["boxes"]:
            assert red.sum() <= 2 * 128  # the view cut the object away: at most a sliver of resampled edge remains
            continue
        (cx, cy, bw, bh), = s["boxes"]
        x0, x1, y0, y1 = (cx - bw / 2) * 128, (cx + bw / 2) * 128, (cy - bh / 2) * 128, (cy + bh / 2) * 128
        ys, xs = np.nonzero(red)
        # the box frames the red pixels to within the resampling blur (one or two canvas pixels)
        assert abs(xs.min() - x0) <= 2 and abs(xs.max() + 1 - x1) <= 2, (s["frame"], (x0, x1), (xs.min(), xs.max()))
        assert abs(ys.min() - y0) <= 2 and abs(ys.max() + 1 - y1) <= 2
    assert 0 < flips < 18  # both flipped and unflipped views were drawn


def test_the_torchvision_decoder_letterboxes_to_the_same_geometry(coco, tmp_path):
    """The GPU decoder (torchvision/nvJPEG; here on the CPU) follows the same per-sample geometry as DALI:
    identical targets, pixels within resampling differences."""
    args = ("--seed", "2", "--size", "192", "--scheme", "none", "--format", "png")
    encrypt(coco / "val2017", tmp_path / "dali", *args)
    encrypt(coco / "val2017", tmp_path / "tv", *args, "--decoder", "torchvision")
    a, b = read_samples(tmp_path / "dali"), read_samples(tmp_path / "tv")
    assert [(s["key"], s["boxes"], s["labels"], s["frame"]) for s in a] == \
           [(s["key"], s["boxes"], s["labels"], s["frame"]) for s in b]
    for x, y in zip(a, b):
        d = np.abs(decode_image(x["blob"], "png").astype(int) - decode_image(y["blob"], "png").astype(int))
        assert d.mean() < 3.0
        rw, rh = x["frame"]["resized"]
        assert d[rh:].max(initial=0) == 0 and d[:, rw:].max(initial=0) == 0  # the same black padding


def test_the_quick_audit_runs_on_detection_and_says_mi_keeps_a_picture(coco, tmp_path):
    """The audit rebuilds the plain images through the COCO source and the letterbox geometry; MI keeps every
    patch in place, so the attacker's picture comes back and the setting is over the leak budget."""
    out = tmp_path / "out"
    r = encrypt(coco / "val2017", out, "--seed", "1", "--size", "256", audit=True)
    a = manifest(out)["audit"]
    assert "error" not in a and a["samples"] == 4 and a["meets_budget"] is False
    assert a["mean"]["direct_accuracy"] == 1.0  # positions kept
    assert "OVER the leak budget" in r.output
    rep = cli("audit", out, "--report", tmp_path / "rep", "--samples", "4", "--state-dir", f"{out}.state").output
    assert "mi P=16" in rep  # himr-pipe audit finds the COCO annotations from the owner state
