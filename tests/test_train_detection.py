"""himr-pipe train on detection shards: PEYOLOS learns from MI shards to COCO AP, the evaluation is exact on an
oracle, resume is exact, DDP runs with two CPU processes, and mismatches are clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import cli, encrypt

from himr_pipe.sample_data import make_rect_detection

TINY = ("--embed-dim", "64", "--depth", "2", "--heads", "2", "--det-tokens", "10", "--batch-size", "4",
        "--workers", "0", "--warmup-epochs", "0", "--log-interval", "50", "--lr", "1e-3")


@pytest.fixture(scope="module")
def det_shards(tmp_path_factory):
    base = tmp_path_factory.mktemp("det")
    src = make_rect_detection(base / "coco", 4)
    outs = {}
    for scheme in ("mi", "none"):
        outs[scheme] = base / scheme
        encrypt(src, outs[scheme], "--scheme", scheme, "--size", "128", "--format", "png", "--seed", "1",
                "--shard-size", "3")
    return outs


def test_the_evaluation_scores_the_ground_truth_at_ap_1(det_shards):
    """The loader's targets, turned into perfect predictions, through postprocess and COCOeval: AP 1.000 (the
    frames, image ids and category map of the training path are right)."""
    from himr_pipe.train.detection import coco_evaluate, postprocess
    from himr_pipe.train.loader import eval_loader, read_manifest

    m = read_manifest(str(det_shards["mi"]))
    cats = [c["id"] for c in m["detection"]["categories"]]
    results = []
    for imgs, targets in eval_loader(str(det_shards["mi"]), 3, workers=0):
        assert imgs.shape[1:] == (64, 64, 3)  # MI of the 128 canvas
        q = 5
        logits = torch.full((len(targets), q, len(cats) + 1), -9.0)
        logits[:, :, -1] = 9.0  # no object
        boxes = torch.full((len(targets), q, 4), 0.5)
        for i, t in enumerate(targets):
            n = len(t["labels"])
            logits[i, torch.arange(n), t["labels"]] = 9.0
            logits[i, :n, -1] = -9.0
            boxes[i, :n] = t["boxes"]
        results += postprocess({"pred_logits": logits, "pred_boxes": boxes},
                               [{**t["frame"], "image_id": t["image_id"]} for t in targets], cats, score_threshold=0.5)
    gt = json.loads((det_shards["mi"] / m["detection"]["ground_truth"]["file"]).read_text())
    ap = coco_evaluate(gt, results)
    assert ap["AP"] == pytest.approx(1.0) and ap["AP50"] == pytest.approx(1.0)


def test_peyolos_learns_from_mi_shards(det_shards, tmp_path):
    """A tiny PEYOLOS, trained through himr-pipe train on MI shards, finds the rectangles (AP50 on its own
    4 images: an overfitting check that the whole path learns, not a generalisation claim; seeds 0-2 gave
    AP50 1.0, 0.79 and 0.67)."""
    res = cli("train", det_shards["mi"], "--val", det_shards["mi"], "--out", tmp_path / "run", "--epochs", "1",
              "--samples-per-epoch", "2400", "--no-aug", *TINY, "--drop-path", "0")
    assert "val AP" in res.output and "loader" in res.output
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 600 and {"val_AP", "val_AP50", "val_AP_S", "val_AP_M", "val_AP_L"} <= set(log[-1])
    assert log[-1]["val_AP50"] > 0.5, log[-1]


def test_detection_resume_is_exact(det_shards, tmp_path):
    args = (det_shards["mi"], "--epochs", "3", "--samples-per-epoch", "16", *TINY)  # augmentation on
    cli("train", *args, "--out", tmp_path / "straight")
    cli("train", *args, "--out", tmp_path / "split", "--stop-after", "1")
    assert "resumed" in cli("train", *args, "--out", tmp_path / "split", "--resume").output
    a = torch.load(tmp_path / "straight" / "checkpoint-last.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "checkpoint-last.pt", weights_only=False)
    assert a["step"] == b["step"] == 12
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_detection_ddp_two_cpu_processes(det_shards, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "himr_pipe.cli", "train", str(det_shards["none"]), "--val", str(det_shards["none"]),
           "--out", str(tmp_path / "ddp"), "--epochs", "1", "--device", "cpu", *TINY, "--batch-size", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (rec,) = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert rec["step"] == 1 and 0.0 <= rec["val_AP"] <= 1.0  # 4 samples: 2 per rank, one step of 2 each


def test_detection_mismatches_are_clear_errors(det_shards, sample_src, tmp_path):
    cls_out = tmp_path / "cls"
    encrypt(sample_src, cls_out, "--scheme", "mi", "--size", "128", "--format", "png", "--seed", "1")
    r = cli("train", det_shards["mi"], "--val", cls_out, "--out", tmp_path / "x", "--epochs", "1", *TINY, expect=2)
    assert "another task" in r.output
    r = cli("train", det_shards["mi"], "--val", det_shards["none"], "--out", tmp_path / "y", "--epochs", "1", *TINY,
            expect=2)
    assert "scheme" in r.output


def test_an_ap_without_objects_of_its_size_is_printed_n_a():
    """COCOeval's -1 means no ground-truth object (of that size): the log line and the CLI's last figures say
    n/a, not -1.0000; log.jsonl keeps COCOeval's -1."""
    from himr_pipe.train.tasks import DetectionTraining, ap_text

    assert ap_text(-1.0) == "n/a" and ap_text(None) == "n/a" and ap_text(0.25) == "0.2500" and ap_text(0.0) == "0.0000"
    assert DetectionTraining.describe(None, {"val_AP": -1.0, "val_AP50": 0.5}) == " | val AP n/a, AP50 0.5000"
