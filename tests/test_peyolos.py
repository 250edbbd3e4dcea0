"""PEYOLOS (himr_pipe.train.peyolos) and its set loss / COCO evaluation (himr_pipe.train.detection).

* MI patch embedding: conv on the float MI image == the released PEYOLOS
  code's conv on the plain image followed by 2x2 average pooling.
* The detector for mi and none (square and non-square canvases), refusing
  rs and mi-shuffle; the timm registry names; check_detector_matches.
* Hungarian matching, DETR's losses, post-processing back to the original
  frame, COCO AP on hand-made ground truth.
* A tiny PEYOLOS overfits four synthetic MI images (and plain ones) to
  AP50 > 0.5 in a few seconds on CPU.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F

from himr_pipe.boxes import letterbox_frame
from himr_pipe.kernels import mi_mix
from himr_pipe.scheme import Scheme
from himr_pipe.train.detection import (HungarianMatcher, SetCriterion, coco_evaluate, dense_loss, dense_targets,
                                      gather_results, postprocess)
from himr_pipe.train.models import MIPatchEmbed, build_model
from himr_pipe.train.peyolos import PEYOLOS, build_detector, check_detector_matches, sincos_2d

TINY = dict(embed_dim=32, depth=2, num_heads=2, det_tokens=5)


def to_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW."""
    return (x.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25


def cxcywh(x, y, w, h, canvas_w, canvas_h) -> list[float]:
    """A pixel box (x, y, w, h) as normalised (cx, cy, w, h)."""
    return [(x + w / 2) / canvas_w, (y + h / 2) / canvas_h, w / canvas_w, h / canvas_h]


# ---------------------------------------------------------------- MI patch embedding
def test_mi_embedding_equals_conv_then_avgpool_on_the_plain_image():
    torch.manual_seed(0)
    P, s = 16, 8
    x8 = torch.randint(0, 256, (2, 64, 96, 3), dtype=torch.uint8)     # plain NHWC, non-square
    x = x8.permute(0, 3, 1, 2).float() / 255
    b, c, h, w = x.shape
    # the float MI image: mean of the four (P/2)x(P/2) sub-patches of every PxP patch, in mi_mix's layout
    mi = x.view(b, c, h // P, 2, s, w // P, 2, s).mean(dim=(3, 6)).reshape(b, c, h // 2, w // 2)
    mi_k = mi_mix(x8, P).permute(0, 3, 1, 2).float() / 255            # what the encryption kernel stores
    assert (mi_k - mi).abs().max() <= 0.5 / 255 + 1e-6

    model = build_detector(Scheme("mi", P, h, w), 3, **TINY)
    pe = model.patch_embed
    assert isinstance(pe, MIPatchEmbed) and pe.patch_size == (s, s) and pe.img_size == (h // 2, w // 2)
    conv = pe.proj[0]
    ours = conv(mi)
    research = F.avg_pool2d(F.conv2d(x, conv.weight, conv.bias, stride=s), 2)
    assert ours.shape == research.shape == (b, 32, h // P, w // P)
    torch.testing.assert_close(ours, research, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- model
@pytest.mark.parametrize("kind,hw", [("mi", (64, 64)), ("none", (64, 64)), ("mi", (256, 384)), ("none", (256, 384))])
def test_detector_outputs(kind, hw):
    torch.manual_seed(0)
    s = Scheme(kind, 16, *hw)
    model = build_detector(s, 4, **TINY).eval()
    assert isinstance(model, PEYOLOS) and model.himr_task == "detection" and model.himr_scheme == s.to_dict()
    assert isinstance(model.patch_embed, MIPatchEmbed) is (kind == "mi")
    assert model.patch_embed.img_size == s.out_size and model.patch_embed.grid_size == s.grid
    # the detection tokens are timm register tokens with their own position-embedding rows
    assert model.det_token.shape == (1, 5, 32) and model.num_prefix_tokens == 1 + 5
    assert model.pos_embed.shape == (1, s.num_patches + 1 + 5, 32)
    x = torch.randn(2, 3, *s.out_size)
    with torch.no_grad():
        out = model(x)
    assert out["pred_logits"].shape == (2, 5, 4 + 1)
    assert out["pred_boxes"].shape == (2, 5, 4)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    # position embeddings are interpolated to another input size; the detection tokens' rows are kept
    with torch.no_grad():
        other = model(torch.randn(1, 3, s.out_size[0] + 2 * s.out_cell, s.out_size[1]))
    assert other["pred_boxes"].shape == (1, 5, 4)
    check_detector_matches(model, s)


def test_aux_loss_supervises_every_block_with_the_shared_heads():
    """--aux-loss: in training the model also gives each earlier block's detection tokens through the same norm
    and heads; the final prediction is the plain forward's exactly, and evaluation has no aux outputs."""
    torch.manual_seed(0)
    s = Scheme("mi", 16, 64, 64)
    model = build_detector(s, 3, **TINY, aux_loss=True)
    depth = len(model.blocks)
    x = torch.randn(2, 3, *s.out_size)
    model.train()
    out = model(x)
    assert len(out["aux_outputs"]) == depth - 1 >= 1
    assert all(a["pred_logits"].shape == out["pred_logits"].shape and a["pred_boxes"].shape == out["pred_boxes"].shape
               for a in out["aux_outputs"])
    plain = model.forward_head(model.forward_features(x))  # dropouts are 0: the same numbers
    torch.testing.assert_close(out["pred_boxes"], plain["pred_boxes"], rtol=0, atol=0)
    # block k's aux output is the heads on block k's tokens: recompute block 1 by hand
    t = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    first = model.forward_head(model.norm(model.blocks[0](t)))
    torch.testing.assert_close(out["aux_outputs"][0]["pred_logits"], first["pred_logits"], rtol=0, atol=0)
    assert "aux_outputs" not in model.eval()(x)
    # the training loss sums the set loss of every output; each term is >= 0 and has a gradient
    crit = SetCriterion(3)
    tg = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "labels": torch.tensor([1])}] * 2
    model.train()
    from himr_pipe.train.tasks import DetectionTraining

    class _T(DetectionTraining):
        def __init__(self):
            self.aug, self.criterion = None, crit

    class _Cfg:
        pass
    imgs = (torch.rand(2, *s.out_size, 3) * 255).to(torch.uint8)
    total = _T().loss(model, imgs, tg, torch.device("cpu"), None, False, 0.0, 1.0, _Cfg())
    with torch.no_grad():
        torch.manual_seed(1)
        o = model(imgs.permute(0, 3, 1, 2).float().div(255))
        parts = [crit({k: o[k] for k in ("pred_logits", "pred_boxes")}, tg)["loss"]] + \
            [crit(a, tg)["loss"] for a in o["aux_outputs"]]
    torch.testing.assert_close(total.detach(), sum(parts), rtol=1e-5, atol=1e-5)
    total.backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_dense_targets_assign_each_patch_the_smallest_box_over_its_centre():
    """A 4x4 grid (centres at 1/8, 3/8, 5/8, 7/8): a large box, a small one inside it that holds no centre (it
    gets the patch its own centre falls in, and wins it from the large box), and a box smaller than a patch in
    a corner; an image without objects is all background."""
    big, small, speck = [0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.2, 0.2], [0.9, 0.1, 0.01, 0.01]
    tg = [{"boxes": torch.tensor([big, small, speck]), "labels": torch.tensor([0, 1, 0])},
          {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    labels, boxes = dense_targets(tg, (4, 4), num_classes=2)
    assert labels[0].view(4, 4).tolist() == [[2, 2, 2, 0],
                                             [2, 0, 0, 2],
                                             [2, 0, 1, 2],
                                             [2, 2, 2, 2]]
    assert labels[1].tolist() == [2] * 16 and boxes[1].abs().sum() == 0
    assert boxes[0, 5].tolist() == big and boxes[0, 10].tolist() == pytest.approx(small)
    assert boxes[0, 3].tolist() == pytest.approx(speck) and boxes[0, 0].abs().sum() == 0
    # a non-square grid is row-major, as the ViT's tokens: (rows 2, cols 4), a box over the right half's top row
    lab, _ = dense_targets([{"boxes": torch.tensor([[0.75, 0.25, 0.5, 0.5]]), "labels": torch.tensor([1])}],
                           (2, 4), num_classes=2)
    assert lab[0].tolist() == [2, 2, 1, 1, 2, 2, 2, 2]


def test_dense_loss_is_the_set_losses_on_the_assignment():
    """Perfect dense predictions give zero box losses; the class term is the weighted cross entropy of the
    assignment, recomputed with torch."""
    tg = [{"boxes": torch.tensor([[0.25, 0.25, 0.5, 0.5]]), "labels": torch.tensor([1])}]
    lab, box = dense_targets(tg, (2, 2), num_classes=3)
    assert lab[0].tolist() == [1, 3, 3, 3]
    logits = torch.randn(1, 4, 4)
    out = {"pred_logits": logits, "pred_boxes": box.clone(), "grid": (2, 2)}
    got = dense_loss(out, tg, num_classes=3)
    assert got["loss_bbox"] == 0 and got["loss_giou"] == 0
    w = torch.tensor([1, 1, 1, 0.1])
    torch.testing.assert_close(got["loss_ce"], F.cross_entropy(logits[0], lab[0], w))
    torch.testing.assert_close(got["loss"], got["loss_ce"])
    out["pred_boxes"] = box + torch.tensor([0.1, 0, 0, 0])
    assert dense_loss(out, tg, num_classes=3)["loss_bbox"] == pytest.approx(0.1)  # one positive, L1 0.1
    with pytest.raises(ValueError, match="patches"):
        dense_loss({**out, "grid": (3, 3)}, tg, num_classes=3)


@pytest.mark.parametrize("kind", ["mi", "none"])
def test_dense_aux_reads_the_patch_tokens_with_the_shared_heads(kind):
    """--dense-aux: in training the model also gives the heads' outputs on every patch token of the last block
    (the (H/P)x(W/P) grid, row-major, for MI as for plain), adds no parameter, leaves the detection tokens'
    outputs as they are, and is absent in evaluation; the training loss adds the dense loss to the set loss."""
    torch.manual_seed(0)
    s = Scheme(kind, 8, 32, 48)
    model = build_detector(s, 3, **TINY, dense_aux=True)
    assert model.state_dict().keys() == build_detector(s, 3, **TINY).state_dict().keys()
    x = torch.randn(2, 3, *s.out_size)
    out = model.train()(x)
    d = out["dense_outputs"]
    assert d["grid"] == (4, 6) and d["pred_logits"].shape == (2, 24, 4) and d["pred_boxes"].shape == (2, 24, 4)
    feats = model.forward_features(x)
    torch.testing.assert_close(out["pred_boxes"], model.forward_head(feats)["pred_boxes"], rtol=0, atol=0)
    patches = feats[:, model.num_prefix_tokens:]
    torch.testing.assert_close(d["pred_logits"], model.class_embed(patches), rtol=0, atol=0)
    assert "dense_outputs" not in model.eval()(x)

    from himr_pipe.train.tasks import DetectionTraining

    crit = SetCriterion(3)

    class _T(DetectionTraining):
        def __init__(self):
            self.aug, self.criterion, self.num_classes = None, crit, 3

    tg = [{"boxes": torch.tensor([[0.5, 0.5, 0.3, 0.4]]), "labels": torch.tensor([2])}] * 2
    imgs = (torch.rand(2, *s.out_size, 3) * 255).to(torch.uint8)
    model.train()
    total = _T().loss(model, imgs, tg, torch.device("cpu"), None, False, 0.0, 1.0, None)
    with torch.no_grad():
        o = model(imgs.permute(0, 3, 1, 2).float().div(255))
        want = crit({k: o[k] for k in ("pred_logits", "pred_boxes")}, tg)["loss"] + dense_loss(
            o["dense_outputs"], tg, 3)["loss"]
    torch.testing.assert_close(total.detach(), want, rtol=1e-5, atol=1e-5)


def test_patch_positions_start_as_2d_sincos():
    """pos_init="sincos" (the default) starts the patch rows of the position embedding at MAE's 2D sine-cosine
    values, row-major over the grid, and leaves the prefix rows (class and detection tokens) random; "learn"
    keeps timm's random start. They are parameters either way."""
    s = Scheme("mi", 8, 32, 48)
    torch.manual_seed(0)
    m = build_detector(s, 2, **TINY)
    pe = m.pos_embed[0].detach()
    want = sincos_2d(4, 6, 32)
    torch.testing.assert_close(pe[m.num_prefix_tokens:], want, rtol=0, atol=0)
    assert m.pos_embed.requires_grad and pe[:m.num_prefix_tokens].std() < 0.1
    # row-major: token k is (row k // 6, col k % 6); the x channels repeat down a column, the y ones along a row
    q = 32 // 4
    torch.testing.assert_close(want[1, :2 * q], want[7, :2 * q])
    torch.testing.assert_close(want[6, 2 * q:], want[7, 2 * q:])
    assert want[0, 0] == 0 and want[0, q] == 1  # sin(0), cos(0)
    learn = build_detector(s, 2, **TINY, pos_init="learn").pos_embed[0, 1 + 5:].detach()
    assert learn.std() < 0.1 and not torch.allclose(learn, want)
    with pytest.raises(ValueError, match="pos_init"):
        build_detector(s, 2, **TINY, pos_init="fixed")
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(2, 2, 6)


def test_detection_tokens_have_their_own_positions():
    """Identical detection tokens still give different outputs: their position-embedding rows tell them apart."""
    torch.manual_seed(0)
    model = build_detector(Scheme("mi", 16, 64, 64), 2, **TINY).eval()
    with torch.no_grad():
        model.det_token.zero_()
        out = model(torch.randn(1, 3, 32, 32))["pred_boxes"][0]
        assert (out[0] - out[1]).abs().max() > 1e-4
        model.pos_embed[:, 1:1 + 5] = 0  # no position rows: identical tokens, identical predictions
        out = model(torch.randn(1, 3, 32, 32))["pred_boxes"][0]
    torch.testing.assert_close(out[0], out[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name,match", [("rs", "scheme 'rs' moves every patch"),
                                        ("mi-shuffle", "scheme 'mi-shuffle' moves every MI cell")])
def test_shuffled_schemes_are_refused(name, match):
    s = Scheme.named(name, 16, 64, 64)
    with pytest.raises(ValueError, match=match):
        build_detector(s, 3, **TINY)
    model = build_detector(Scheme("mi", 16, 64, 64), 3, **TINY)
    with pytest.raises(ValueError, match="destroys the positions that box regression needs"):
        check_detector_matches(model, s)


def test_fixed_arguments_are_refused():
    with pytest.raises(ValueError, match="takes img_size from the scheme"):
        build_detector(Scheme("mi", 16, 64, 64), 3, img_size=64, **TINY)
    with pytest.raises(ValueError, match="PEYOLOS fixes no_embed_class"):
        PEYOLOS(img_size=32, patch_size=8, num_classes=2, no_embed_class=True)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        build_detector(Scheme("mi", 16, 64, 64), 0, **TINY)


@pytest.mark.parametrize("name,side,mi", [("peyolos_tiny_patch16_512", 256, True),
                                          ("peyolos_tiny_none_patch16_512", 512, False)])
def test_timm_registry(name, side, mi):
    assert name in timm.list_models("peyolos_*")
    assert name.replace("tiny", "small") in timm.list_models("peyolos_*")
    model = timm.create_model(name, num_classes=3).eval()
    assert isinstance(model, PEYOLOS) and model.num_classes == 3 and model.det_tokens == 100
    assert isinstance(model.patch_embed, MIPatchEmbed) is mi
    assert model.patch_embed.img_size == (side, side) and model.embed_dim == 192
    assert model.patch_embed.grid_size == (32, 32)
    assert model.pretrained_cfg["input_size"] == (3, side, side)
    with torch.no_grad():
        out = model(torch.randn(1, 3, side // 8, side // 8))  # a small input: the positions are interpolated
    assert out["pred_logits"].shape == (1, 100, 4) and out["pred_boxes"].shape == (1, 100, 4)
    check_detector_matches(model, Scheme("mi" if mi else "none", 16, 512, 512))
    with pytest.raises(ValueError, match="no published weights .* pretrained_cfg_overlay=dict\(file=PATH\)"):
        timm.create_model(name, pretrained=True)
    model.reset_classifier(6)
    assert model.get_classifier().layers[-1].out_features == 7


def test_check_detector_matches_refuses_a_mismatch():
    s = Scheme("mi", 16, 64, 96)
    model = build_detector(s, 3, **TINY)
    check_detector_matches(model, s)
    with pytest.raises(ValueError, match="kind: the detector is for 'mi' data, the data are 'none'"):
        check_detector_matches(model, Scheme("none", 16, 64, 96))
    with pytest.raises(ValueError, match="patch size: the detector's patches are 16x16.*P=32"):
        check_detector_matches(model, Scheme("mi", 32, 64, 96))
    with pytest.raises(ValueError, match="input size: the detector is for 64x96 canvases"):
        check_detector_matches(model, Scheme("mi", 16, 128, 96))
    check_detector_matches(model, Scheme("mi", 16, 128, 96), strict_size=False)  # interpolated positions
    plain = build_detector(Scheme("none", 16, 64, 96), 3, **TINY)
    with pytest.raises(ValueError, match="plain patch embedding, but the data are MI"):
        check_detector_matches(plain, s)
    with pytest.raises(ValueError, match="is not a detector"):
        check_detector_matches(build_model(s, 3, embed_dim=32, depth=1, num_heads=2), s)


# ---------------------------------------------------------------- matching and loss
def _logits(labels: list[int], num_classes: int, strength: float = 20.0) -> torch.Tensor:
    """Logits that put (almost) all probability on ``labels`` (``num_classes`` = no object)."""
    return F.one_hot(torch.tensor(labels), num_classes + 1).float() * strength


def test_matcher_finds_the_swapped_assignment():
    a, b = [0.25, 0.25, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]
    outputs = {"pred_logits": _logits([0, 1], 2)[None], "pred_boxes": torch.tensor([[a, b]])}
    targets = [{"labels": torch.tensor([1, 0]), "boxes": torch.tensor([b, a])}]
    (pred, tgt), = HungarianMatcher()(outputs, targets)
    assert pred.dtype == tgt.dtype == torch.int64
    assert dict(zip(pred.tolist(), tgt.tolist())) == {0: 1, 1: 0}


def test_matcher_with_zero_targets_and_more_queries_than_targets():
    a, b, c = [0.25, 0.25, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4], [0.5, 0.5, 0.9, 0.9]
    boxes = torch.tensor([[a, b, c], [a, b, c]])
    outputs = {"pred_logits": _logits([0, 1, 2], 2).expand(2, -1, -1), "pred_boxes": boxes}
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    one = {"labels": torch.tensor([1]), "boxes": torch.tensor([b])}
    m = HungarianMatcher()(outputs, [empty, one])
    assert m[0][0].numel() == m[0][1].numel() == 0 and m[0][0].dtype == torch.int64
    assert m[1][0].tolist() == [1] and m[1][1].tolist() == [0]
    m = HungarianMatcher()(outputs, [empty, empty])
    assert all(p.numel() == t.numel() == 0 for p, t in m)


def _perfect_case():
    a, b = [0.25, 0.25, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]
    targets = [{"labels": torch.tensor([1, 0]), "boxes": torch.tensor([b, a])},
               {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    boxes = torch.tensor([[a, b, [0.5, 0.5, 0.9, 0.9]], [a, b, [0.5, 0.5, 0.9, 0.9]]])
    logits = torch.stack([_logits([0, 1, 2], 2), _logits([2, 2, 2], 2)])
    return logits, boxes, targets


def test_criterion_is_zero_on_perfect_predictions():
    logits, boxes, targets = _perfect_case()
    losses = SetCriterion(2)({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou", "loss"}
    assert losses["loss_bbox"].item() == 0.0
    assert losses["loss_giou"].item() == 0.0
    assert 0 <= losses["loss_ce"].item() < 1e-6
    torch.testing.assert_close(losses["loss"], losses["loss_ce"])


def test_criterion_on_a_wrong_box_is_positive_and_has_gradients():
    logits, boxes, targets = _perfect_case()
    boxes = boxes.clone()
    boxes[0, 0, 0] += 0.1                                   # shift one matched box by 0.1 in cx
    boxes.requires_grad_(True)
    logits = logits.clone().requires_grad_(True)
    crit = SetCriterion(2, weights={"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2})
    losses = crit({"pred_logits": logits, "pred_boxes": boxes}, targets)
    torch.testing.assert_close(losses["loss_bbox"], torch.tensor(0.1 / 2))  # L1 0.1 over 2 target boxes
    assert losses["loss_giou"].item() > 0.01
    total = losses["loss_ce"] + 5 * losses["loss_bbox"] + 2 * losses["loss_giou"]
    torch.testing.assert_close(losses["loss"], total)
    losses["loss"].backward()
    assert boxes.grad[0, 0].abs().sum() > 0
    assert boxes.grad[0, 2].abs().sum() == 0             # unmatched: no box loss
    assert logits.grad.abs().sum() > 0
    # the no-object class weighs eos_coef in the cross entropy
    assert crit.empty_weight.tolist() == pytest.approx([1.0, 1.0, 0.1])
    with pytest.raises(ValueError, match="target labels must be in"):
        crit({"pred_logits": logits, "pred_boxes": boxes},
             [{"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1]])}, targets[1]])


# ---------------------------------------------------------------- post-processing and COCO AP
def test_postprocess_maps_boxes_back_to_the_original_frame():
    # an original 384x224 (w x h) image letterboxed at scale 0.5 onto a 256x128 (w x h) canvas: 192x112 at the
    # top-left, black padding right and below (the frame a sample's .json stores)
    frame = {"image_id": 42, "window": [0, 0, 384, 224], "resized": [192, 112], "flip": False,
             "canvas": [128, 256], "orig_size": [224, 384]}
    # original box (64, 32, 96, 64) -> canvas (32, 16, 48, 32); dyadic numbers, so float32 is exact
    q0 = cxcywh(32, 16, 48, 32, 256, 128)
    q1 = cxcywh(160, 64, 64, 64, 256, 128)                 # reaches into the padding
    boxes = torch.tensor([[q0, q1, [0.5, 0.5, 0.1, 0.1]]])
    logits = torch.tensor([[[0.0, 4.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 9.0]]])
    res = postprocess({"pred_logits": logits, "pred_boxes": boxes}, [frame], [3, 7])
    assert [r["category_id"] for r in res] == [7, 3, 3]    # sorted by score; per query its best class
    assert all(r["image_id"] == 42 for r in res)
    assert res[0]["bbox"] == [64.0, 32.0, 96.0, 64.0]
    assert res[1]["bbox"] == [320.0, 128.0, 64.0, 96.0]    # clipped to the original image (384 x 224)
    p = logits.softmax(-1)[0]
    assert res[0]["score"] == pytest.approx(p[0, 1].item()) and res[1]["score"] == pytest.approx(p[1, 0].item())
    # a flipped view of a window maps back through the flip and the window's offset
    view = {**frame, "window": [100, 50, 200, 100], "resized": [256, 128], "flip": True}
    q = torch.tensor([[cxcywh(0, 0, 64, 32, 256, 128)] * 3])  # canvas left edge = the window's right edge
    res = postprocess({"pred_logits": logits, "pred_boxes": q}, [view], [3, 7], max_dets=1)
    assert res[0]["bbox"] == [250.0, 50.0, 50.0, 25.0]
    # a threshold and max_dets drop the weak ones
    res = postprocess({"pred_logits": logits, "pred_boxes": boxes}, [frame],
                      {0: 3, 1: 7}, score_threshold=0.01, max_dets=2)
    assert len(res) == 2
    with pytest.raises(ValueError, match="no category for labels"):
        postprocess({"pred_logits": logits, "pred_boxes": boxes}, [frame], [3])


def _coco_gt() -> dict:
    """Three images, categories 3 and 7 (non-contiguous ids), small / medium / large objects."""
    images = [{"id": 1, "width": 200, "height": 150}, {"id": 2, "width": 300, "height": 200},
              {"id": 5, "width": 128, "height": 128}]
    boxes = [(1, 3, [10, 10, 20, 20]), (1, 7, [50, 40, 50, 40]), (2, 7, [20, 30, 150, 120]),
             (2, 3, [200, 10, 60, 50]), (5, 3, [5, 5, 12, 16])]
    anns = [{"id": i + 1, "image_id": img, "category_id": cat, "bbox": bb, "area": bb[2] * bb[3], "iscrowd": 0}
            for i, (img, cat, bb) in enumerate(boxes)]
    return {"images": images, "annotations": anns,
            "categories": [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]}


def _as_results(gt: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
            for a in gt["annotations"]]


def test_coco_evaluate_ground_truth_is_perfect(tmp_path, capsys):
    gt = _coco_gt()
    res = _as_results(gt)
    ap = coco_evaluate(gt, res)
    assert list(ap) == ["AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"]
    assert all(isinstance(v, float) for v in ap.values())
    assert ap == pytest.approx({k: 1.0 for k in ap}, abs=1e-12)  # pycocotools averages: 1 - 2e-16
    assert res == _as_results(gt)                          # the caller's results are not modified
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    assert coco_evaluate(str(path), res)["AP"] == pytest.approx(1.0, abs=1e-12)
    assert capsys.readouterr().out == ""                    # pycocotools' printing is suppressed


def test_coco_evaluate_empty_and_wrong_predictions():
    gt = _coco_gt()
    assert coco_evaluate(gt, []) == {k: 0.0 for k in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")}
    res = _as_results(gt)
    res[1]["category_id"] = 3                               # a medium 7 reported as a 3
    ap = coco_evaluate(gt, res)
    assert ap["AP"] < 0.95 and ap["AP_M"] < 0.95 and ap["AP_S"] == pytest.approx(1.0, abs=1e-12)
    # a size without ground truth is -1 (pycocotools' "undefined"), with and without results
    large_only = {**gt, "annotations": [a for a in gt["annotations"] if a["area"] >= 96 ** 2]}
    assert coco_evaluate(large_only, _as_results(large_only))["AP_S"] == -1.0
    ap0 = coco_evaluate(large_only, [])
    assert ap0["AP_S"] == ap0["AP_M"] == -1.0 and ap0["AP_L"] == ap0["AP"] == 0.0
    with pytest.raises(ValueError, match="images not in the ground truth"):
        coco_evaluate(gt, [{**res[0], "image_id": 99}])
    assert gather_results(res) is res                       # not distributed: as is


def test_distributed_normalisation_and_gather(tmp_path):
    """Under an initialised process group (gloo, one rank) the box count is all-reduced and results gathered."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        logits, boxes, targets = _perfect_case()
        crit = SetCriterion(2)
        assert crit.num_boxes(targets, torch.device("cpu")).item() == 2.0
        assert crit.num_boxes(targets[1:], torch.device("cpu")).item() == 1.0  # clamped to at least 1
        res = _as_results(_coco_gt())
        assert gather_results(res) == res
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- overfitting
def synthetic(n: int, side: int, seed: int = 0):
    """``n`` uint8 NHWC images of dark noise with 1-2 bright, non-overlapping rectangles (red = 3, green = 7).

    Returns the images, the training targets (labels 0/1, normalised cxcywh) and the COCO ground truth.
    """
    g = torch.Generator().manual_seed(seed)
    imgs, targets, anns, images = [], [], [], []
    colours = (torch.tensor([230, 60, 60], dtype=torch.uint8), torch.tensor([60, 230, 60], dtype=torch.uint8))
    for i in range(n):
        x = (torch.rand(side, side, 3, generator=g) * 60).to(torch.uint8)
        labels, boxes = [], []
        for j in range(1 + i % 2):
            while True:
                w, h = torch.randint(side // 5, side // 2, (2,), generator=g).tolist()
                x0 = int(torch.randint(0, side - w, (1,), generator=g))
                y0 = int(torch.randint(0, side - h, (1,), generator=g))
                if all(x0 >= bx + bw or bx >= x0 + w or y0 >= by + bh or by >= y0 + h for bx, by, bw, bh in boxes):
                    break
            c = (i + j) % 2
            x[y0:y0 + h, x0:x0 + w] = colours[c]
            labels.append(c)
            boxes.append((x0, y0, w, h))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "bbox": [x0, y0, w, h], "area": w * h,
                         "iscrowd": 0, "category_id": (3, 7)[c]})
        imgs.append(x)
        targets.append({"labels": torch.tensor(labels),
                        "boxes": torch.tensor([cxcywh(*b, side, side) for b in boxes])})
        images.append({"id": i + 1, "width": side, "height": side})
    gt = {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "red"}, {"id": 7, "name": "green"}]}
    return torch.stack(imgs), targets, gt


@pytest.mark.parametrize("kind,side,patch", [("mi", 128, 16), ("none", 64, 8)])
def test_tiny_detector_overfits_synthetic_boxes(kind, side, patch):
    """64x64 input, 8x8 grid: an MI image of a 128x128 canvas (P=16), or a plain 64x64 one (P=8)."""
    torch.manual_seed(0)
    x8, targets, gt = synthetic(4, side)
    s = Scheme(kind, patch, side, side)
    x = to_input(mi_mix(x8, patch) if kind == "mi" else x8)
    assert x.shape == (4, 3, 64, 64)
    model = build_detector(s, 2, embed_dim=64, depth=2, num_heads=2, det_tokens=10)
    crit = SetCriterion(2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    frames = [{"image_id": i + 1, **letterbox_frame(side, side, (side, side)).to_dict()} for i in range(4)]
    first = None
    for _ in range(400):
        losses = crit(model.train()(x), targets)
        first = losses["loss"].item() if first is None else first
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    with torch.no_grad():
        res = postprocess(model.eval()(x), frames, [3, 7])
    assert len(res) == 4 * 10
    ap = coco_evaluate(gt, res)
    assert losses["loss"].item() < first / 4
    assert ap["AP50"] > 0.5, ap
