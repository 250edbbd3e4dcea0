"""The user's path, finished (issue 19): a COCO root is refused with the folder to pass, every scheme's shards
have a timm model by name that keeps the stored grid, and timm's train.py is driven with the flags that keep it.

timm's own train.py is not shipped with timm's wheel, so the suite runs a stand-in that calls the same timm
functions train.py calls (create_model with --model-kwargs, resolve_data_config, create_dataset wds/,
create_loader with --no-aug) on a real OUT; ``benchmarks/timm_train_check.py --train-py PATH`` runs the real
script (its result is in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import io
import json
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import himr_pipe.train.models  # noqa: F401 (registers the models)
import himr_pipe.train.peyolos  # noqa: F401
from conftest import cli, encrypt, manifest
from himr_pipe.scheme import Scheme

# --------------------------------------------------------------------------- COCO roots and non-datasets


def _coco_root(root: Path, splits=("val2017",), photos=2) -> Path:
    from himr_pipe.sample_data import make_sample_folder

    (root / "annotations").mkdir(parents=True)
    tmp = root.parent / f"{root.name}-photos"
    make_sample_folder(tmp, per_class=1, seed=0)
    files = sorted(tmp.rglob("*.jpg"))[:photos]
    for split in splits:
        (root / split).mkdir()
        for i, f in enumerate(files):
            (root / split / f"{i:012d}.jpg").write_bytes(f.read_bytes())
        images = [{"id": i + 1, "file_name": f"{i:012d}.jpg", "width": Image.open(f).width,
                   "height": Image.open(f).height} for i, f in enumerate(files)]
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": [], "categories": [{"id": 1, "name": "thing"}]}))
    (root / "annotations" / "captions_val2017.json").write_text("{}")
    return root


def test_a_coco_root_is_refused_naming_the_images_folder(tmp_path):
    root = _coco_root(tmp_path / "coco")
    out = tmp_path / "out"
    res = encrypt(root, out, expect=2)
    assert "root of a COCO-format dataset" in res.output and "not a folder of classes" in res.output
    assert f"himr-pipe encrypt-shards {root}/val2017 OUT_val --split val" in res.output
    assert "annotations/instances_val2017.json is found beside it" in res.output
    assert not out.exists()  # refused before any work
    # --task detection on the root: the same message (it was "pass --annotations")
    res = encrypt(root, out, "--task", "detection", expect=2)
    assert f"{root}/val2017 OUT_val --split val" in res.output and not out.exists()
    # and the folder it names is the one that works: a detection run, its ground truth found beside it
    encrypt(root / "val2017", out, "--split", "val", "--size", "64", "--shard-size", "4")
    assert manifest(out)["job"]["task"] == "detection" and manifest(out)["job"]["split"] == "val"
    assert manifest(out)["model"]["timm"][0] == "peyolos_tiny_patch16_512"
    # timm's train.py trains classifiers: the wrapper says how the detector trains instead
    res = cli("timm-train", __file__, "--data-dir", out, expect=2)
    assert "holds detection shards: timm's train.py trains classifiers" in res.output


def test_a_coco_root_with_two_splits_names_both(tmp_path):
    root = _coco_root(tmp_path / "coco", splits=("train2017", "val2017"))
    res = encrypt(root, tmp_path / "out", expect=2)
    assert f"{root}/train2017 OUT_train --split train" in res.output
    assert f"{root}/val2017 OUT_val --split val" in res.output


def test_a_coco_root_without_instances_says_what_is_missing(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "person_keypoints_x.json").write_text("{}")
    (root / "images").mkdir()
    Image.new("RGB", (8, 8)).save(root / "images" / "a.jpg")
    res = encrypt(root, tmp_path / "out", expect=2)
    assert "--annotations" in res.output and "holds no instances_*.json" in res.output


def test_a_folder_that_is_neither_is_refused_with_the_reason(tmp_path):
    # YOLO-style images/ + labels/: labels/ is no class of images
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.new("RGB", (8, 8)).save(root / "images" / "a.jpg")
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    res = encrypt(root, tmp_path / "out", expect=2)
    assert "labels/ (1 files: .txt)" in res.output and "with files but no image" in res.output
    assert not (tmp_path / "out").exists()
    # a folder of text files only
    root = tmp_path / "text"
    (root / "a").mkdir(parents=True)
    (root / "a" / "notes.txt").write_text("x")
    res = encrypt(root, tmp_path / "out2", expect=2)
    assert "holds no image in any sub-folder" in res.output and not (tmp_path / "out2").exists()
    # an empty class folder beside real ones stays an empty class (not refused)
    root = tmp_path / "classes"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
    Image.new("RGB", (32, 32), (9, 9, 9)).save(root / "cat" / "a.jpg")
    encrypt(root, tmp_path / "out3", "--size", "32")
    assert manifest(tmp_path / "out3")["empty_classes"] == ["dog"]


# --------------------------------------------------------------------------- every scheme by timm name

SCHEMES = {
    "none": ("--scheme", "none"),
    "rs": ("--scheme", "rs", "--no-flip"),
    "rs-flip": ("--scheme", "rs", "--flip"),
    "mi": ("--scheme", "mi"),
    "mi-shuffle": ("--scheme", "mi-shuffle", "--no-flip"),
    "mi-shuffle-flip": (),  # the default
}
FAMILY = {"none": "vit", "rs": "pevit", "rs-flip": "pevit_flip", "mi": "mivit", "mi-shuffle": "mivit_shuffle",
          "mi-shuffle-flip": "mivit_shuffle_flip"}


@pytest.fixture(scope="module")
def outs(sample_src, tmp_path_factory):
    root = tmp_path_factory.mktemp("schemes")
    res = {}
    for name, args in SCHEMES.items():
        encrypt(sample_src, root / name, "--size", "64", "--seed", "3", "--shard-size", "9", *args)
        res[name] = root / name
    return res


def stored_images(out: Path, n: int = 2) -> list[Image.Image]:
    """The first n stored images of OUT's first shard, as PIL decodes them (what timm's reader gives)."""
    imgs = []
    with tarfile.open(sorted(out.glob("*.tar"))[0]) as tf:
        for mem in tf.getmembers():
            if mem.name.endswith((".jpg", ".png")):
                imgs.append(Image.open(io.BytesIO(tf.extractfile(mem).read())).convert("RGB"))
            if len(imgs) == n:
                break
    return imgs


def plain_tensor(img: Image.Image, cfg: dict) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(cfg["mean"])[:, None, None]) / torch.tensor(cfg["std"])[:, None, None]


def permute_cells(x: torch.Tensor, cell: int, seed: int = 0) -> torch.Tensor:
    b, c, h, w = x.shape
    gh, gw = h // cell, w // cell
    cells = x.reshape(b, c, gh, cell, gw, cell).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c, cell, cell)
    perm = torch.randperm(gh * gw, generator=torch.Generator().manual_seed(seed))
    cells = cells[:, perm]
    return cells.reshape(b, gh, gw, c, cell, cell).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_every_schemes_model_builds_by_name_from_the_manifest_and_keeps_the_grid(outs, name):
    out = outs[name]
    m = manifest(out)
    rec = m["model"]
    scheme = Scheme.from_dict(m["job"]["scheme"])
    assert rec["family"] == FAMILY[name] and rec["input_size"] == [3, *scheme.out_size] and rec["crop_pct"] == 1.0
    assert json.loads((out / "_info.json").read_text())["model"] == rec  # the file timm reads says it too
    assert set(rec["timm"]) <= set(timm.list_models())  # every size is registered
    if name == "none":  # plain images: timm's own ViT at the stored size
        model = timm.create_model(rec["timm"][0], num_classes=m["num_classes"], **rec["kwargs"])
        assert model.patch_embed.img_size == tuple(scheme.out_size)
        return
    model = timm.create_model(rec["timm"][0], shards=str(out)).eval()
    assert model.num_classes == m["num_classes"] and model.himr_scheme == scheme.to_dict()
    # the same model from the name and the manifest's kwargs alone (what a user without shards= passes)
    timm.create_model(rec["timm"][0], num_classes=m["num_classes"], **rec["kwargs"])
    assert model.pretrained_cfg["input_size"] == (3, *scheme.out_size) and model.pretrained_cfg["crop_pct"] == 1.0
    # timm's own transforms for this model (eval, and train with --no-aug) leave a stored image as stored
    cfg = timm.data.resolve_data_config({}, model=model)
    imgs = stored_images(out)
    for t in (timm.data.create_transform(**cfg, is_training=False),
              timm.data.create_transform(**cfg, is_training=True, no_aug=True)):
        for img in imgs:
            torch.testing.assert_close(t(img), plain_tensor(img, cfg), atol=1e-6, rtol=0)
    x = torch.stack([plain_tensor(i, cfg) for i in imgs])
    with torch.no_grad():
        a = model(x)
        assert a.shape == (2, m["num_classes"])
        if scheme.shuffled:  # the shuffled schemes' models do not see the order of the cells
            b = model(permute_cells(x, scheme.out_cell))
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_a_model_that_does_not_fit_the_shards_is_a_clear_error(outs):
    with pytest.raises(ValueError, match=r"pevit_tiny_patch16_224 does not fit these shards \(scheme mi-shuffle"
                                         r"[\s\S]*the model for them: mivit_tiny_shuffle_flip_patch16_224"):
        timm.create_model("pevit_tiny_patch16_224", shards=str(outs["mi-shuffle-flip"]))
    with pytest.raises(ValueError, match="the model for them: mivit_tiny_patch16_224"):
        timm.create_model("mivit_tiny_shuffle_patch16_224", shards=str(outs["mi"]))
    # a variant's fixed defence can't be turned off by a kwarg
    with pytest.raises(ValueError, match="is the model with"):
        timm.create_model("mivit_tiny_shuffle_flip_patch16_224", flip=False)
    # detection shards and a classifier
    m = manifest(outs["mi"])
    det = {**m, "job": {**m["job"], "task": "detection"}, "detection": {"categories": [{"id": 1, "name": "a"}]}}
    with pytest.raises(ValueError, match="classification model and these are detection shards.*peyolos_tiny"):
        timm.create_model("mivit_tiny_patch16_224", shards=det)


# --------------------------------------------------------------------------- timm's train.py

# The calls timm's train.py makes with the flags the wrapper adds (train.py: create_model(args.model, ...,
# **args.model_kwargs); resolve_data_config(vars(args), model=model); create_dataset(args.dataset,
# root=args.data_dir, split=args.train_split, ...); create_loader(..., no_aug=args.no_aug)): one step on OUT.
STAND_IN = textwrap.dedent('''
    import argparse, glob, io, json, tarfile, sys
    import numpy as np, timm, torch
    from PIL import Image
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.utils import ParseKwargs

    p = argparse.ArgumentParser()
    for f in ("--data-dir", "--dataset", "--train-split", "--val-split", "--model", "--output"):
        p.add_argument(f)
    p.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs)
    p.add_argument("--no-aug", action="store_true")
    p.add_argument("--scale", type=float, nargs="+", default=[0.08, 1.0])
    p.add_argument("--input-size", nargs=3, type=int, default=None)
    p.add_argument("--crop-pct", type=float, default=None)
    p.add_argument("--num-classes", type=int, default=None)
    a = p.parse_args()
    model = timm.create_model(a.model, num_classes=a.num_classes, **a.model_kwargs)
    cfg = resolve_data_config(vars(a), model=model)
    ds = create_dataset(a.dataset, root=a.data_dir, split=a.train_split, is_training=True, batch_size=4)
    loader = create_loader(ds, input_size=cfg["input_size"], batch_size=4, is_training=True, no_aug=a.no_aug,
                           scale=a.scale, interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"],
                           crop_pct=cfg["crop_pct"], num_workers=0, use_prefetcher=False)
    x, y = next(iter(loader))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    # the loader's transform on a stored image, against the image as stored
    with tarfile.open(sorted(glob.glob(a.data_dir + "/*.tar"))[0]) as tf:
        m = next(m for m in tf.getmembers() if m.name.endswith((".jpg", ".png")))
        img = Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")
    t = ds.transform
    ref = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    ref = (ref - torch.tensor(cfg["mean"])[:, None, None]) / torch.tensor(cfg["std"])[:, None, None]
    json.dump({"model": a.model, "num_classes": model.num_classes, "x": list(x.shape), "labels": y.tolist(),
               "loss": float(loss.detach()), "cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
               "transform_diff": float((t(img) - ref).abs().max()), "val_split": a.val_split,
               "argv": sys.argv[1:]}, open(a.output, "w"))
''')


def test_timm_train_gets_the_flags_that_keep_the_grid(outs, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(STAND_IN)
    for name in ("mi-shuffle-flip", "rs", "none"):
        out, res_file = outs[name], tmp_path / f"{name}.json"
        run = cli("timm-train", script, "--data-dir", out, "--output", res_file)
        r = json.loads(res_file.read_text())
        m = manifest(out)
        assert r["model"] == m["model"]["timm"][0] if name != "none" else True
        assert r["num_classes"] == m["num_classes"] and np.isfinite(r["loss"])
        assert r["x"] == [4, *m["model"]["input_size"]] and r["cfg"]["crop_pct"] == 1.0
        assert r["transform_diff"] < 1e-6  # every cell arrives as stored
        assert "--no-aug" in r["argv"] and r["val_split"] == "" and "--dataset" in r["argv"]
        assert "timm will not evaluate" in run.output
    # a plain model on encrypted shards is passed through with a warning naming the model that fits
    said = []
    from himr_pipe.train.timm_script import timm_train_argv

    timm_train_argv(["--data-dir", str(outs["rs"]), "--model", "vit_tiny_patch16_224"], warn=said.append)
    assert any("OUT stores 64x64 images: a model with a fixed input size needs --model-kwargs img_size=(64, 64)"
               in s for s in said)
    run = cli("timm-train", script, "--data-dir", outs["rs"], "--model", "vit_tiny_patch16_224", "--output",
              tmp_path / "plain.json", "--model-kwargs", "img_size=64")
    assert "is not a model for rs shards: their model is pevit_tiny_patch16_224" in run.output
    assert json.loads((tmp_path / "plain.json").read_text())["num_classes"] == manifest(outs["rs"])["num_classes"]


def test_timm_train_warns_on_flags_that_break_the_grid(outs):
    from himr_pipe.train.timm_script import TimmTrainError, timm_train_argv

    said = []
    argv = timm_train_argv(["--data-dir", str(outs["rs"]), "--scale", "0.08", "1", "--model-kwargs", "rpe=False"],
                           warn=said.append)
    assert "--no-aug" not in argv and argv[argv.index("--model-kwargs") + 1] == f"shards={outs['rs']}"
    assert any("--scale 0.08 1 breaks the stored grid" in s for s in said)
    assert any("--ratio not given: timm's default breaks the stored grid" in s for s in said)
    said.clear()
    argv = timm_train_argv(["--data-dir", str(outs["rs"]), "--scale", "1", "1", "--ratio", "1", "1", "--hflip",
                            "0", "--val-split", "val", "--dataset", "wds/x"], warn=said.append)
    assert not any("breaks" in s for s in said) and argv.count("--dataset") == 1 and "--no-aug" not in argv
    # not a himr-pipe OUT: train.py's arguments as they are
    assert timm_train_argv(["--data-dir", "/nonexistent", "--model", "resnet50"]) == \
        ["--data-dir", "/nonexistent", "--model", "resnet50"]
    with pytest.raises(TimmTrainError, match="--dataset wds/"):
        timm_train_argv(["--data-dir", str(outs["mi"]), "--dataset", "imagefolder"], warn=said.append)
