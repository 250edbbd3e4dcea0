"""himr-pipe predict: a trained model on new plain images, transformed exactly as their shards were.

(1) the keyless transform is enough: the order- and flip-invariant models give the same logits on a fresh
encryption (cells shuffled and turned by the reference kernels) as on the unshuffled MI / plain image;
(2) predict on the plain photos agrees with the model's evaluation on the encrypted shards of the same photos;
(3) the CLI: text, --json, bad inputs skipped one line each, a bad checkpoint exit 2;
(4) detection: boxes in each image's own frame (the letterbox undone), equal to the shards' evaluation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import cli, encrypt, manifest

from himr_pipe.kernels import make_permutations
from himr_pipe.kernels.api import encrypt as encrypt_batch
from himr_pipe.scheme import Scheme
from himr_pipe.shards import decode_image, iter_samples
from himr_pipe.train.models import build_model
from himr_pipe.train.predict import (PredictError, Predictor, checkpoint_record, find_checkpoint, list_inputs,
                                     predict)

TINY = {"model": "tiny", "embed_dim": 32, "depth": 1, "num_heads": 2, "rpe": True}
TRAIN_TINY = ("--embed-dim", "32", "--depth", "1", "--heads", "2", "--batch-size", "6", "--workers", "0",
              "--warmup-epochs", "0", "--log-interval", "50", "--epochs", "1")


def save_checkpoint(path: Path, model, scheme: Scheme, num_classes: int, record: dict, config: dict = TINY) -> Path:
    """A checkpoint as the trainer writes it (the parts predict reads)."""
    torch.save({"model": model.state_dict(), "scheme": scheme.to_dict(), "num_classes": num_classes,
                "config": dict(config), "epoch": 1, "step": 1, **record}, path)
    return path


def random_classifier(scheme: Scheme, num_classes: int, seed: int = 0):
    """A tiny model with random weights whose logits are spread (a scaled head), so top-1 is never a near tie
    by accident."""
    torch.manual_seed(seed)
    model = build_model(scheme, num_classes, **{k: v for k, v in TINY.items() if k != "model"}).eval()
    with torch.no_grad():
        model.head.weight.mul_(30)
    return model


def shard_samples(out: Path, src: Path):
    """(source path, stored image as the training loader decodes it) of every sample of OUT (--include-paths)."""
    m = manifest(out)
    ext = m["job"]["format"]["ext"]
    for sh in m["shards"]:
        for _, s in iter_samples(str(out / sh["name"])):
            meta = json.loads(s["json"])
            yield str(src / meta["source"]), torch.from_numpy(decode_image(s[ext], ext)), meta


# ---------------------------------------------------------------- (1) invariance at inference
@pytest.mark.parametrize("name,patch,flip", [("mi-shuffle", 16, True), ("rs", 8, False), ("rs", 8, True),
                                             ("mi-shuffle", 16, False)])
def test_the_invariant_models_need_no_key(tmp_path, name, patch, flip):
    """A fresh encryption (a random permutation and orientation of every cell, the reference kernels) and the
    keyless transform predict uses (MI only, or nothing) give the same logits."""
    scheme = Scheme.named(name, patch, 64, 64, flip=flip)
    model = random_classifier(scheme, 5)
    ck = save_checkpoint(tmp_path / "ck.pt", model, scheme, 5, {"task": "classification", "resize": "crop",
                                                                 "codec": {"name": "png", "ext": "png"}})
    p = Predictor(ck, device="cpu")
    g = torch.Generator().manual_seed(1)
    plain = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8, generator=g)
    keys = torch.randint(0, 2**62, (4, scheme.num_patches), generator=g)
    perms = make_permutations(keys, orient=scheme.flip)
    stored = encrypt_batch(scheme, plain, perms, impl="torch")      # what a shard holds (before its codec)
    keyless = p.encrypt(plain)                                       # what predict feeds the model
    assert stored.shape == keyless.shape and not torch.equal(stored, keyless)  # the cells did move
    a, b = p.forward(stored), p.forward(keyless)
    assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()


# ---------------------------------------------------------------- (2) agreement with the shards' evaluation
@pytest.fixture(scope="module")
def outs(sample_src, tmp_path_factory):
    base = tmp_path_factory.mktemp("predict")
    made = {}
    for tag, args in {"mi-shuffle": ("--scheme", "mi-shuffle", "--patch", "16"),   # the default: --flip
                      "rs8": ("--scheme", "rs", "--patch", "8"),
                      "mi": ("--scheme", "mi", "--patch", "16")}.items():
        made[tag] = base / tag
        encrypt(sample_src, made[tag], *args, "--size", "64", "--seed", "1", "--include-paths", "--shard-size", "8")
    return made


@pytest.mark.parametrize("tag", ["mi-shuffle", "rs8", "mi"])
def test_predict_on_plain_photos_agrees_with_the_shards(outs, sample_src, tmp_path, tag):
    """Predict on each plain photo against the model on that photo's shard sample (decoded as the loader does).

    mi and rs at P=8 (JPEG 4:4:4, every 8x8 block inside one cell): the same logits, to float rounding, so
    the same top-1. mi-shuffle --flip: a turned cell quantises a little differently under JPEG (its tables are
    not symmetric under a transpose), so the logits agree closely, not exactly, and top-1 must agree wherever
    the shard's top-1 margin exceeds twice the largest logit difference (here: every photo)."""
    out = outs[tag]
    m = manifest(out)
    scheme = Scheme.from_dict(m["job"]["scheme"])
    model = random_classifier(scheme, m["num_classes"])
    ck = save_checkpoint(tmp_path / "ck.pt", model, scheme, m["num_classes"], checkpoint_record(m))
    p = Predictor(ck, device="cpu")
    samples = list(shard_samples(out, sample_src))
    assert len(samples) == 18
    paths = [s[0] for s in samples]
    shard_logits = p.forward(torch.stack([s[1] for s in samples]))
    plain, kept, _ = p.load(paths)
    assert kept == list(range(18))
    pred_logits = p.forward(p.encrypt(plain))
    diff = (shard_logits - pred_logits).abs().max().item()
    top2 = shard_logits.topk(2, -1).values
    margin = top2[:, 0] - top2[:, 1]
    same = shard_logits.argmax(-1) == pred_logits.argmax(-1)
    if tag == "mi-shuffle":
        assert diff < 0.1
        assert bool(same[margin > 2 * diff].all()) and int((margin > 2 * diff).sum()) >= 16
    else:
        assert diff < 1e-4
        assert bool(same.all())
    # the public function: the same top-1, with the manifest's class names
    recs = predict(ck, paths, top_k=2, device="cpu")
    assert [r["image"] for r in recs] == paths and [r["index"] for r in recs] == list(range(18))
    top1 = pred_logits.argmax(-1)
    assert [r["top_k"][0]["label"] for r in recs] == top1.tolist()
    assert all(r["top_k"][0]["class"] == m["classes"][r["top_k"][0]["label"]] for r in recs)
    assert all(len(r["top_k"]) == 2 and r["top_k"][0]["prob"] >= r["top_k"][1]["prob"] for r in recs)


def test_the_codec_round_trip_is_what_makes_them_agree(outs, sample_src, tmp_path):
    """Without the shards' JPEG round trip the logits move by far more than rounding (why predict applies it)."""
    out = outs["rs8"]
    m = manifest(out)
    scheme = Scheme.from_dict(m["job"]["scheme"])
    ck = save_checkpoint(tmp_path / "ck.pt", random_classifier(scheme, m["num_classes"]), scheme, m["num_classes"],
                         checkpoint_record(m))
    samples = list(shard_samples(out, sample_src))[:6]
    shard_logits = Predictor(ck, device="cpu").forward(torch.stack([s[1] for s in samples]))
    p = Predictor(ck, device="cpu", round_trip=False)
    plain, _, _ = p.load([s[0] for s in samples])
    assert (shard_logits - p.forward(p.encrypt(plain))).abs().max() > 1e-2


def test_a_trained_run_holds_what_predict_needs(outs, sample_src, tmp_path):
    """himr-pipe train's checkpoint holds the task, class names, resize mode, decoder and codec; predict on the
    run folder uses them."""
    run = tmp_path / "run"
    cli("train", outs["mi-shuffle"], "--out", run, *TRAIN_TINY)
    ck = torch.load(run / "checkpoint-last.pt", weights_only=False)
    m = manifest(outs["mi-shuffle"])
    assert ck["classes"] == m["classes"] and ck["task"] == "classification" and ck["categories"] is None
    assert ck["resize"] == "crop" and ck["decoder"] == m["job"]["decoder"] and ck["codec"] == m["job"]["format"]
    recs = predict(run, sample_src / "cat", top_k=3, device="cpu")
    assert [Path(r["image"]).name for r in recs] == sorted(os.listdir(sample_src / "cat"))
    assert all({t["class"] for t in r["top_k"]} <= set(m["classes"]) for r in recs)
    assert all(sum(t["prob"] for t in r["top_k"]) <= 1.0 + 1e-6 for r in recs)
    # a checkpoint from before the record: read from its shards' manifest while they are there, and said so
    old = {k: v for k, v in ck.items() if k not in checkpoint_record(m)}
    torch.save(old, tmp_path / "old.pt")
    p = Predictor(tmp_path / "old.pt", device="cpu")
    assert p.classes == m["classes"] and p.codec is not None and "manifest" in p.notes[0]
    old["config"]["shards"] = str(tmp_path / "gone")
    torch.save(old, tmp_path / "old.pt")
    p = Predictor(tmp_path / "old.pt", device="cpu")
    assert p.classes is None and p.resize == "crop" and p.codec.quality == 90 and "defaults" in p.notes[0]
    assert p.predict(sample_src / "cat", top_k=1, on_skip=pytest.fail)[0]["top_k"][0]["class"] is None


def test_the_best_checkpoint_is_preferred_and_inputs_are_listed(tmp_path, sample_src):
    (tmp_path / "checkpoint-last.pt").write_bytes(b"x")
    assert find_checkpoint(tmp_path).name == "checkpoint-last.pt"
    (tmp_path / "checkpoint-best.pt").write_bytes(b"x")
    assert find_checkpoint(tmp_path).name == "checkpoint-best.pt"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.PNG").write_bytes(b"")
    (tmp_path / "sub" / "a.jpg").write_bytes(b"")
    (tmp_path / "sub" / "notes.txt").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    listed = list_inputs([tmp_path / "sub", tmp_path / "nope.jpg", tmp_path / "empty"])
    assert [(Path(p).name, why is None) for p, why in listed] == [
        ("a.jpg", True), ("b.PNG", True), ("nope.jpg", False), ("empty", False)]


def test_exif_orientation_as_encrypt_shards_applies_it(tmp_path):
    """A JPEG stored on its side with an EXIF orientation: classification (crop) sees it upright, as
    encrypt-shards' decoders turn it; detection (letterbox) sees the stored frame, the frame of COCO's boxes."""
    from PIL import ImageOps

    stored = Image.new("RGB", (80, 40), (20, 20, 200))
    stored.paste((230, 30, 30), (0, 0, 40, 20))
    stored.paste((30, 220, 30), (40, 20, 80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    stored.save(tmp_path / "turned.jpg", quality=100, exif=exif.tobytes())
    ImageOps.exif_transpose(Image.open(tmp_path / "turned.jpg")).save(tmp_path / "upright.jpg", quality=100)
    stored.save(tmp_path / "as-stored.jpg", quality=100)
    names = ["turned.jpg", "upright.jpg", "as-stored.jpg"]
    scheme = Scheme("none", 8, 32, 32)
    cls = save_checkpoint(tmp_path / "cls.pt", random_classifier(scheme, 2), scheme, 2,
                          {"task": "classification", "resize": "crop", "decoder": "dali", "codec": None})
    imgs, kept, _ = Predictor(cls, device="cpu").load([tmp_path / n for n in names])
    assert kept == [0, 1, 2]
    d = lambda a, b: (imgs[a].float() - imgs[b].float()).abs().mean().item()  # noqa: E731
    assert d(0, 1) < 4 < 40 < d(0, 2)
    from himr_pipe.train.peyolos import build_detector

    torch.manual_seed(0)
    det = build_detector(Scheme("mi", 8, 64, 64), 2, det_tokens=5, embed_dim=32, depth=1, num_heads=2)
    ck = save_checkpoint(tmp_path / "det.pt", det, Scheme("mi", 8, 64, 64), 2, DET_RECORD, DET_CONFIG)
    imgs, kept, frames = Predictor(ck, device="cpu").load([tmp_path / n for n in names])
    assert d(0, 2) < 4 < 40 < d(0, 1)
    assert frames[0].orig == (40, 80) and frames[0].resized == (64, 32)


# ---------------------------------------------------------------- (3) the command line
@pytest.fixture(scope="module")
def mi_checkpoint(outs, tmp_path_factory):
    m = manifest(outs["mi"])
    scheme = Scheme.from_dict(m["job"]["scheme"])
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "checkpoint-last.pt",
                           random_classifier(scheme, m["num_classes"]), scheme, m["num_classes"],
                           checkpoint_record(m))


def test_cli_text_and_json(mi_checkpoint, sample_src, tmp_path):
    cats = sorted((sample_src / "cat").iterdir())
    res = cli("predict", mi_checkpoint.parent, *cats, "--top-k", "2", "--device", "cpu")
    lines = res.output.strip().splitlines()
    assert len(lines) == len(cats)
    for line, f in zip(lines, cats):
        head, tops = line.split(": ", 1)
        assert head == str(f) and len(tops.split(", ")) == 2
        name, prob = tops.split(", ")[0].rsplit(" ", 1)
        assert name in manifest_classes(sample_src) and 0 < float(prob) <= 1
    res = cli("predict", mi_checkpoint, sample_src / "cat", "--json", "-", "--device", "cpu")
    recs = json.loads(res.stdout)
    assert [r["image"] for r in recs] == [str(f) for f in cats] and all(len(r["top_k"]) == 5 for r in recs)
    dest = tmp_path / "p.json"
    res = cli("predict", mi_checkpoint, sample_src / "cat", "--json", dest, "--top-k", "1")
    assert json.loads(dest.read_text()) == [{**r, "top_k": r["top_k"][:1]} for r in recs]
    assert f"-> {dest}" in res.output


def manifest_classes(src: Path) -> list[str]:
    return sorted(d.name for d in src.iterdir() if d.is_dir())


def test_cli_skips_bad_inputs_one_line_each(mi_checkpoint, sample_src, tmp_path):
    good = sorted((sample_src / "cat").iterdir())[0]
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:2000])
    (tmp_path / "empty.png").write_bytes(b"")
    res = cli("predict", mi_checkpoint, good, tmp_path / "notes.jpg", tmp_path / "missing.jpg", tmp_path / "cut.jpg",
              tmp_path / "empty.png", good, "--top-k", "1", expect=3)
    assert "Traceback" not in res.output
    out = res.stdout.strip().splitlines()
    assert len(out) == 2 and all(line.startswith(f"{good}: ") for line in out)
    skips = [ln for ln in res.stderr.splitlines() if ln.startswith("himr-pipe predict: skipped")]
    assert len(skips) == 4
    for name, why in (("notes.jpg", "not-an-image"), ("missing.jpg", "no such file"), ("cut.jpg", "decode-error"),
                      ("empty.png", "empty-file")):
        assert any(f"{tmp_path / name}: {why}" in ln for ln in skips), (name, skips)


def test_cli_refuses_a_bad_checkpoint_in_one_line(tmp_path, sample_src, mi_checkpoint):
    img = sorted((sample_src / "cat").iterdir())[0]
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 10)
    whole = mi_checkpoint.read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")  # it was exit 1 and only "Aborted!" (EOFError) for train --resume
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    torch.save({"model": {"x": torch.zeros(2)}, "scheme": Scheme("mi", 16, 64, 64).to_dict(), "num_classes": 3,
                "config": TINY}, tmp_path / "mismatched.pt")
    (tmp_path / "run").mkdir()
    for bad, why in (("garbage.pt", "not a readable checkpoint"), ("cut.pt", "not a readable checkpoint"),
                     ("empty.pt", "not a readable checkpoint (empty: 0 bytes); point predict at a whole checkpoint"),
                     ("other.pt", "not a himr-pipe train checkpoint"),
                     ("mismatched.pt", "can't be rebuilt"), ("run", "no checkpoint-best.pt or checkpoint-last.pt"),
                     ("nothing.pt", "no such checkpoint")):
        res = cli("predict", tmp_path / bad, img, expect=2)
        assert "Traceback" not in res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("himr-pipe: error: ") and why in lines[0], res.output
    with pytest.raises(PredictError):
        predict(tmp_path / "other.pt", [img])


# ---------------------------------------------------------------- (4) detection
class FixedDetector(torch.nn.Module):
    """Stands in for PEYOLOS: fixed boxes and scores; records what it was fed."""

    def __init__(self, boxes, labels, num_classes):
        super().__init__()
        self.boxes, self.labels, self.k, self.seen = torch.tensor(boxes), labels, num_classes, []

    def forward(self, x):
        self.seen.append(x)
        q = len(self.labels)
        logits = torch.full((len(x), q, self.k + 1), -9.0)
        logits[:, torch.arange(q), torch.tensor(self.labels)] = 9.0
        return {"pred_logits": logits, "pred_boxes": self.boxes.expand(len(x), q, 4)}


DET_RECORD = {"task": "detection", "resize": "letterbox", "decoder": "dali",
              "categories": [{"label": 0, "id": 3, "name": "red"}, {"label": 1, "id": 7, "name": "green"}],
              "codec": {"name": "png", "ext": "png", "compress_level": 1}}
DET_CONFIG = {**TINY, "det_tokens": 5}


def test_detection_boxes_come_back_in_the_image_frame(tmp_path):
    """A 96x48 photo letterboxed into the 64x64 canvas (resized 64x32, top-left, black below): a box on the
    canvas maps back through the frame to the image's own pixels, and a box in the padding is clipped to it."""
    from himr_pipe.train.peyolos import build_detector

    scheme = Scheme("mi", 8, 64, 64)
    torch.manual_seed(0)
    det = build_detector(scheme, 2, size="tiny", det_tokens=5, embed_dim=32, depth=1, num_heads=2)
    ck = save_checkpoint(tmp_path / "det.pt", det, scheme, 2, DET_RECORD, DET_CONFIG)
    img = tmp_path / "wide.png"
    Image.new("RGB", (96, 48), (200, 120, 40)).save(img)
    p = Predictor(ck, device="cpu")
    # the real tiny detector: every box inside the image, ids from the category map, its file named
    res = p.predict([img], top_k=5)
    assert len(res) == 5 and {r["category_id"] for r in res} <= {3, 7}
    assert all(r["image_id"] == 0 and r["file_name"] == str(img) for r in res)
    for r in res:
        x, y, w, h = r["bbox"]
        assert 0 <= x and x + w <= 96 + 1e-6 and 0 <= y and y + h <= 48 + 1e-6
    # fixed boxes: [cx, cy, w, h] normalised on the canvas
    p.model = FixedDetector([[0.25, 0.25, 0.5, 0.5],      # canvas 0..32 x 0..32 -> image 0..48 x 0..48
                             [0.75, 0.125, 0.25, 0.25],   # canvas 40..56 x 0..16 -> image 60..84 x 0..24
                             [0.5, 0.75, 0.2, 0.2]],      # in the black padding below the image: clipped, 0 high
                            [0, 1, 0], 2)
    res = p.predict([img], top_k=5)
    fed = p.model.seen[0]
    assert fed.shape == (1, 3, 32, 32)   # the MI image of the 64 canvas
    mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    pixels = fed[0] * std + mean
    assert torch.allclose(pixels[:, 16:], torch.zeros(3, 16, 32), atol=1e-6)   # the letterbox's black rows
    assert torch.allclose(pixels[:, :16], torch.tensor((200, 120, 40)).view(3, 1, 1) / 255, atol=2e-3)
    by_cat = sorted((r["category_id"], [round(v, 4) for v in r["bbox"]]) for r in res)
    assert by_cat == [(3, [0.0, 0.0, 48.0, 48.0]), (3, [38.4, 48.0, 19.2, 0.0]), (7, [60.0, 0.0, 24.0, 24.0])]


def test_detection_predict_agrees_with_the_shards(tmp_path):
    """A detector trained for an epoch by himr-pipe train on MI shards of landscape and portrait images: its
    checkpoint holds the category map, and predict on the plain images gives the COCO results that the shards'
    evaluation (postprocess through each sample's frame) gives for the same images."""
    from himr_pipe.sample_data import make_rect_detection
    from himr_pipe.train.detection import postprocess

    src = make_rect_detection(tmp_path / "coco", 4)
    out = tmp_path / "det"
    encrypt(src, out, "--scheme", "mi", "--size", "64", "--patch", "8", "--seed", "1", "--include-paths")
    run = tmp_path / "run"
    cli("train", out, "--out", run, *TRAIN_TINY, "--det-tokens", "5", "--no-aug")
    ck = torch.load(run / "checkpoint-last.pt", weights_only=False)
    assert [c["id"] for c in ck["categories"]] == [3, 7] and ck["resize"] == "letterbox"
    p = Predictor(run, device="cpu")
    samples = sorted(shard_samples(out, src), key=lambda s: s[0])
    paths = [s[0] for s in samples]
    want = postprocess(p.forward(torch.stack([s[1] for s in samples])),
                       [{**s[2]["frame"], "image_id": i} for i, s in enumerate(samples)], [3, 7], max_dets=5)
    got = p.predict(paths, top_k=5)
    assert len(got) == len(want) == 20
    for g, w in zip(got, want):
        assert g["image_id"] == w["image_id"] and g["category_id"] == w["category_id"]
        assert g["file_name"] == paths[g["image_id"]]
        assert g["bbox"] == pytest.approx(w["bbox"], abs=1e-3) and g["score"] == pytest.approx(w["score"], abs=1e-5)
    sizes = {str(src / f"{i:05d}.png"): Image.open(src / f"{i:05d}.png").size for i in range(4)}
    for g in got:
        x, y, w, h = g["bbox"]
        W, H = sizes[g["file_name"]]
        assert 0 <= x and x + w <= W + 1e-6 and 0 <= y and y + h <= H + 1e-6
    # the CLI's COCO results JSON
    res = cli("predict", run, src, "--json", "-", "--top-k", "2")
    coco = json.loads(res.stdout)
    assert len(coco) == 8 and {r["image_id"] for r in coco} == {0, 1, 2, 3}
    assert set(coco[0]) == {"image_id", "category_id", "bbox", "score", "file_name"}
