"""Pretrained starts (train/pretrained.py): a plain timm ViT / DeiT checkpoint, or one of ours, adapted to every
registered model through timm's own loading, ``himr-pipe train --init`` and timm's ``train.py --pretrained-path``."""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path

import pytest
import timm
import torch

import himr_pipe.train.models  # noqa: F401 (registers the models)
import himr_pipe.train.peyolos  # noqa: F401
from conftest import cli, encrypt, manifest
from himr_pipe.train.models import model_scheme
from himr_pipe.train.pretrained import (LINEAR_MARGIN, PretrainedAdapted, adapt_state_dict, fold_mi_kernel,
                                        read_source)

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)

REGISTERED = ["pevit_tiny_patch16_224", "pevit_tiny_flip_patch16_224", "mivit_tiny_patch16_224",
              "mivit_tiny_shuffle_patch16_224", "mivit_tiny_shuffle_flip_patch16_224", "peyolos_tiny_patch16_512",
              "peyolos_tiny_none_patch16_512"]


@pytest.fixture(scope="module")
def timm_ckpts(tmp_path_factory):
    """timm's plain vit_tiny / deit_tiny layouts with random weights, in the three forms a user downloads."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224").state_dict()
    deit = timm.create_model("deit_tiny_patch16_224").state_dict()
    torch.save(vit, d / "vit_tiny.pth")                    # a bare state dict
    torch.save({"model": deit}, d / "deit_tiny.pth")       # DeiT's release: {"model": ...}
    save_file({k: v.contiguous() for k, v in vit.items()}, d / "vit_tiny.safetensors")
    return {"vit": d / "vit_tiny.pth", "deit": d / "deit_tiny.pth", "st": d / "vit_tiny.safetensors", "sd": vit,
            "sds": {"vit": vit, "deit": deit, "st": vit}}


def _load(name, path, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kw)
    said = [str(w.message) for w in caught if issubclass(w.category, PretrainedAdapted)]
    assert len(said) == 1, said
    return m, said[0]


# -- the exact maps, against hand computations ------------------------------------------------------------
def test_mi_fold_is_the_sum_of_the_four_quarters():
    w = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    # quarters [[0,1],[4,5]] + [[2,3],[6,7]] + [[8,9],[12,13]] + [[10,11],[14,15]]
    assert fold_mi_kernel(w).view(2, 2).tolist() == [[20.0, 24.0], [36.0, 40.0]]
    # and it is what the conv sees: <W, x'> = <fold(W), m> when every sub-patch of x' is m
    w, m = torch.randn(5, 3, 16, 16, dtype=torch.float64), torch.randn(1, 3, 8, 8, dtype=torch.float64)
    x = m.repeat(1, 1, 2, 2)
    torch.testing.assert_close(torch.nn.functional.conv2d(x, w), torch.nn.functional.conv2d(m, fold_mi_kernel(w)))


def test_plain_vit_on_the_mean_image_equals_the_adapted_mi_model_on_the_mi_image(timm_ckpts):
    plain = timm.create_model("vit_tiny_patch16_224")
    plain.load_state_dict(timm_ckpts["sd"])
    mi, said = _load("mivit_tiny_patch16_224", timm_ckpts["vit"], num_classes=1000)
    plain.eval(), mi.eval()
    torch.manual_seed(1)
    img = torch.rand(2, 3, 224, 224)
    cells = img.view(2, 3, 14, 2, 8, 14, 2, 8).mean(dim=(3, 6))          # (2, 3, 14, 8, 14, 8)
    mi_img = cells.reshape(2, 3, 112, 112)                                 # the MI image
    mean_img = cells[:, :, :, None, :, :, None].expand(2, 3, 14, 2, 8, 14, 2, 8).reshape(2, 3, 224, 224)
    with torch.no_grad():
        a, b = plain((mean_img - MEAN) / STD), mi((mi_img - MEAN) / STD)
    torch.testing.assert_close(b, a, atol=2e-4, rtol=1e-4)
    # the GELU really is held in its linear range for every valid image: the bound, checked on the extremes
    pe = mi.patch_embed.proj
    for v in (0.0, 1.0):
        x = (torch.full((1, 3, 8, 8), v) - MEAN) / STD
        assert pe[0](x).min() >= LINEAR_MARGIN - 1e-3
    assert "summed over its four quarters" in said and "linear range" in said


def test_position_embedding_resampled_to_the_detection_canvas(timm_ckpts):
    sd = dict(timm_ckpts["sd"])
    pe = sd["pos_embed"].clone()
    pe[:, 1:] = torch.linspace(-1, 1, 192)  # every patch row the same: any resampling keeps it (by hand)
    sd["pos_embed"] = pe
    det = timm.create_model("peyolos_tiny_patch16_512", num_classes=3, det_tokens=5)
    before = det.state_dict()
    out = adapt_state_dict(sd, det, describe=model_scheme)
    got = out["pos_embed"]
    assert got.shape == (1, 1 + 5 + 32 * 32, 192)
    torch.testing.assert_close(got[:, 0], pe[:, 0])                        # the class token's row, kept
    torch.testing.assert_close(got[:, 1:6], before["pos_embed"][:, 1:6])   # detection tokens: new
    torch.testing.assert_close(got[:, 6:], pe[:, 1:2].expand(1, 1024, 192), atol=1e-5, rtol=0)
    # and a real one through timm's resample (bicubic), not a hand-written interpolation
    from timm.layers import resample_abs_pos_embed

    out = adapt_state_dict(timm_ckpts["sd"], det, describe=model_scheme)
    ref = resample_abs_pos_embed(timm_ckpts["sd"]["pos_embed"][:, 1:], new_size=[32, 32], old_size=[14, 14],
                                 num_prefix_tokens=0)
    torch.testing.assert_close(out["pos_embed"][:, 6:], ref)
    assert "14x14 grid to 32x32" in det.himr_init["adapted"][-1]


# -- every registered model, through timm's create_model --------------------------------------------------
@pytest.mark.parametrize("name", REGISTERED)
def test_each_registered_model_loads_a_timm_checkpoint_and_says_what_it_did(name, timm_ckpts):
    for form in ("vit", "deit", "st"):
        m, said = _load(name, timm_ckpts[form], num_classes=7)
        sd = timm_ckpts["sds"][form]
        own = m.state_dict()
        for k in ("blocks.0.attn.qkv.weight", "blocks.11.mlp.fc2.bias", "norm.weight", "cls_token"):
            assert torch.equal(own[k], sd[k]), k
        r = m.himr_init
        assert f"started from {Path(timm_ckpts[form]).name} (a plain ViT checkpoint)" in said
        assert len(r["loaded"]) >= 147  # cls_token, 12 blocks, norm (and what the scheme keeps)
        shuffled = "pevit" in name or "shuffle" in name
        if shuffled:
            assert "pos_embed" not in own and any("pos_embed dropped" in a for a in r["adapted"])
            assert any(k.startswith("patch_embed.ref") for k in r["new"]) and "newly initialised" in said
        else:
            assert "pos_embed" in r["loaded"]
        if "mivit" in name or name == "peyolos_tiny_patch16_512":
            assert any("summed over its four quarters" in a for a in r["adapted"])
        if "flip" in name:
            assert any("orbit-pooled first conv" in a for a in r["adapted"])
        if "peyolos" in name:
            assert "reg_token" in r["new"] and any(k.startswith("class_embed") for k in r["new"])
            assert "head.weight" in r["unused"]
        else:  # 7 classes against the checkpoint's 1000: a new head
            assert any(k.startswith("head.weight") for k in r["new"])


def test_a_checkpoint_of_another_width_or_patch_is_refused_in_one_line(tmp_path, timm_ckpts):
    small = tmp_path / "vit_small.pth"
    torch.save(timm.create_model("vit_small_patch16_224", depth=2).state_dict(), small)
    with pytest.raises(ValueError, match=r"^cannot start .* a ViT of width 384 and depth 2, the model has width "
                                         r"192 and depth 12") as e:
        timm.create_model("mivit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(small)))
    assert "\n" not in str(e.value)
    p8 = tmp_path / "vit_p8.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", patch_size=8).state_dict(), p8)
    with pytest.raises(ValueError, match="its patches are 8x8, the shards' P is 16"):
        timm.create_model("mivit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(p8)))
    with pytest.raises(ValueError, match="no published weights .* --pretrained-path"):
        timm.create_model("pevit_tiny_patch16_224", pretrained=True)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        read_source(junk)


# -- our own checkpoints: himr-pipe train --init ----------------------------------------------------------
SMALL = ("--embed-dim", "32", "--depth", "1", "--heads", "2", "--epochs", "1", "--batch-size", "4", "--workers", "0",
         "--log-interval", "0", "--no-aug")


@pytest.fixture(scope="module")
def ours(sample_src, tmp_path_factory):
    d = tmp_path_factory.mktemp("ours")
    outs = {}
    for name, extra in (("none", ("--scheme", "none")), ("default", ())):
        outs[name] = d / f"out-{name}"
        encrypt(sample_src, outs[name], "--size", "64", "--seed", "1", *extra)
    cli("train", outs["none"], "--out", d / "run-none", *SMALL)
    return {**outs, "ckpt": d / "run-none" / "checkpoint-last.pt", "dir": d}


def test_our_checkpoint_starts_another_scheme_and_says_so(ours, tmp_path):
    run = tmp_path / "run"
    res = cli("train", ours["default"], "--out", run, "--init", ours["ckpt"], *SMALL)
    line = next(ln for ln in res.output.splitlines() if "init:" in ln)
    assert "(a classifier, scheme none" in line and "summed over its four quarters" in line
    assert "pos_embed dropped" in line and "newly initialised" in line
    ck = torch.load(run / "checkpoint-last.pt", map_location="cpu", weights_only=False)
    assert ck["config"]["init"] == str(ours["ckpt"])
    # --resume takes the run's own checkpoint, not --init again
    res = cli("train", ours["default"], "--out", run, "--init", ours["ckpt"], "--resume", *SMALL, expect=None)
    assert "init:" not in res.output


def test_our_classifier_starts_peyolos_with_positions_resampled(ours, tmp_path):
    from himr_pipe.sample_data import make_detection_sample

    make_detection_sample(tmp_path / "coco", train_images=4, val_images=0, seed=3)
    det = tmp_path / "det"
    encrypt(tmp_path / "coco" / "train2017", det, "--size", "128", "--seed", "1")
    assert manifest(det)["job"]["scheme"]["kind"] == "mi"
    res = cli("train", det, "--out", tmp_path / "run", "--init", ours["ckpt"], "--det-tokens", "4", *SMALL)
    line = next(ln for ln in res.output.splitlines() if "init:" in ln)
    assert "pos_embed: the patch rows resampled from the 4x4 grid to 8x8" in line
    assert "detection tokens" in line and "class_embed" in line
    ck = torch.load(tmp_path / "run" / "checkpoint-last.pt", map_location="cpu", weights_only=False)
    src = torch.load(ours["ckpt"], map_location="cpu", weights_only=False)["model"]
    assert ck["model"]["blocks.0.attn.qkv.weight"].shape == src["blocks.0.attn.qkv.weight"].shape


def test_a_mismatched_checkpoint_is_refused_with_one_line_naming_both(ours, tmp_path):
    ck = torch.load(ours["ckpt"], map_location="cpu", weights_only=False)
    ck["scheme"] = {**ck["scheme"], "kind": "rs"}
    bad = tmp_path / "checkpoint-rs.pt"
    torch.save(ck, bad)
    res = cli("train", ours["default"], "--out", tmp_path / "run", "--init", bad, *SMALL, expect=2)
    err = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(err) == 1, res.output
    assert "checkpoint-rs.pt (a classifier, scheme rs" in err[0] and "scheme mi-shuffle" in err[0]
    assert not (tmp_path / "run" / "checkpoint-last.pt").exists()


# -- timm's own train.py: --pretrained --pretrained-path ---------------------------------------------------
# train.py's model creation, verbatim in its arguments: factory_kwargs['pretrained_cfg_overlay'] =
# dict(file=args.pretrained_path, num_classes=-1); create_model(args.model, pretrained=args.pretrained,
# in_chans=..., num_classes=args.num_classes, ..., **factory_kwargs, **args.model_kwargs)
STAND_IN = textwrap.dedent('''
    import argparse, json
    import timm, torch
    from timm.utils import ParseKwargs

    p = argparse.ArgumentParser()
    for f in ("--data-dir", "--dataset", "--train-split", "--val-split", "--model", "--output", "--pretrained-path"):
        p.add_argument(f)
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--no-aug", action="store_true")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs)
    a = p.parse_args()
    factory_kwargs = {}
    if a.pretrained_path:
        factory_kwargs["pretrained_cfg_overlay"] = dict(file=a.pretrained_path, num_classes=-1)
    model = timm.create_model(a.model, pretrained=a.pretrained, in_chans=3, num_classes=a.num_classes,
                              drop_rate=0.0, drop_path_rate=None, **factory_kwargs, **a.model_kwargs)
    json.dump({"model": a.model, "init": getattr(model, "himr_init", None),
               "qkv": model.state_dict()["blocks.0.attn.qkv.weight"].flatten()[:8].tolist()}, open(a.output, "w"))
''')


def test_timm_train_py_pretrained_path_loads_a_timm_checkpoint(ours, timm_ckpts, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(STAND_IN)
    res_file = tmp_path / "r.json"
    cli("timm-train", script, "--data-dir", ours["default"], "--pretrained", "--pretrained-path", timm_ckpts["vit"],
        "--output", res_file)
    r = json.loads(res_file.read_text())
    assert r["model"] == manifest(ours["default"])["model"]["timm"][0]
    assert r["qkv"] == pytest.approx(timm_ckpts["sd"]["blocks.0.attn.qkv.weight"].flatten()[:8].tolist())
    assert any(k.startswith("head.") for k in r["init"]["new"])  # train.py's num_classes=-1: a new head
