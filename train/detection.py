"""Detection training and evaluation for PEYOLOS: DETR's set loss, post-processing and COCO AP.

Built from libraries rather than copied research code: the assignment is
scipy's ``linear_sum_assignment``, the box algebra torchvision's
``box_convert`` / ``generalized_box_iou``, the evaluation the official COCO
API (pycocotools). The conventions are DETR's / YOLOS's:

* a model's outputs are ``{"pred_logits": (B, Q, K+1), "pred_boxes": (B, Q, 4)}``
  with K object classes, the last logit "no object", and boxes as
  normalised (cx, cy, w, h) in [0, 1] of the canvas the model saw (for MI,
  normalised coordinates of the MI image and of the plain canvas agree);
* targets are a list, one per image, of ``{"labels": int64 (n,),
  "boxes": float (n, 4)}`` with labels in ``[0, K)`` (contiguous training
  indices, not COCO category ids) and normalised (cx, cy, w, h) boxes.

:class:`HungarianMatcher` pairs predictions with targets one to one,
:class:`SetCriterion` computes the losses on that pairing, :func:`postprocess`
turns outputs into COCO result dicts in the original images' pixels,
:func:`coco_evaluate` scores them with pycocotools, and :func:`gather_results`
collects results from all ranks under torch.distributed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

__all__ = ["HungarianMatcher", "SetCriterion", "dense_targets", "dense_loss", "postprocess", "coco_evaluate",
           "gather_results", "COCO_METRICS"]

# the first six numbers of COCOeval.summarize() for bbox, in its order
COCO_METRICS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


DEFAULT_WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}  # DETR's / YOLOS's


def _class_weight(num_classes: int, eos_coef: float) -> torch.Tensor:
    """Cross-entropy class weights: 1 per object class, ``eos_coef`` for no-object (the last index)."""
    w = torch.ones(num_classes + 1)
    w[-1] = eos_coef
    return w


def _weighted(loss_ce: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor, n: torch.Tensor,
              weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """The three losses and their weighted sum: the class term as given, L1 and ``1 - GIoU`` between paired
    boxes (normalised cxcywh), each summed and divided by ``n``. 1 - the diagonal of the pairwise GIoU, as DETR:
    exactly 0 for identical boxes (no epsilon in the division)."""
    loss_bbox = F.l1_loss(src, tgt, reduction="sum") / n
    loss_giou = (1 - torch.diag(generalized_box_iou(_xyxy(src), _xyxy(tgt)))).sum() / n
    losses = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
    losses["loss"] = sum(weights.get(k, 0.0) * v for k, v in losses.items())
    return losses


# ---------------------------------------------------------------- matching
class HungarianMatcher(nn.Module):
    """DETR's bipartite matching of predictions to targets.

    The cost of pairing prediction ``i`` with target ``j`` is
    ``cost_class * -p_i(label_j) + cost_bbox * L1(box_i, box_j)
    + cost_giou * -GIoU(box_i, box_j)`` (softmax probabilities, boxes in
    normalised cxcywh for L1 and xyxy for GIoU). Each image is solved on
    its own with scipy's ``linear_sum_assignment``, so every target gets
    exactly one prediction (there are at least as many queries as targets)
    and the other predictions are "no object". No gradients flow through it.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("all matching costs are 0: nothing to match on")
        self.cost_class, self.cost_bbox, self.cost_giou = float(cost_class), float(cost_bbox), float(cost_giou)

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, torch.Tensor],
                targets: Sequence[Mapping[str, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One ``(pred_idx, tgt_idx)`` pair of int64 tensors per image, of length min(Q, n_targets).

        ``pred_idx[k]`` is the query matched to target ``tgt_idx[k]``; an
        image with no targets gives two empty tensors.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        b, q = logits.shape[:2]
        if len(targets) != b:
            raise ValueError(f"{len(targets)} targets for a batch of {b} images")
        sizes = [len(t["boxes"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty.clone()) for _ in range(b)]
        prob = logits.flatten(0, 1).float().softmax(-1)                      # (B*Q, K+1)
        out_box = boxes.flatten(0, 1).float()                                 # (B*Q, 4)
        tgt_ids = torch.cat([t["labels"] for t in targets]).to(logits.device, torch.int64)
        tgt_box = torch.cat([t["boxes"] for t in targets]).to(logits.device, torch.float32)
        cost = (self.cost_bbox * torch.cdist(out_box, tgt_box, p=1)
                - self.cost_class * prob[:, tgt_ids]
                - self.cost_giou * generalized_box_iou(_xyxy(out_box), _xyxy(tgt_box)))
        cost = cost.view(b, q, -1).cpu()
        if not torch.isfinite(cost).all():
            raise ValueError("matching cost is not finite: the model's outputs contain NaN or inf "
                             "(diverged training?)")
        result = []
        for i, c in enumerate(cost.split(sizes, -1)):
            rows, cols = linear_sum_assignment(c[i].numpy())
            result.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return result


# ---------------------------------------------------------------- loss
class SetCriterion(nn.Module):
    """DETR's set loss (without auxiliary decoding losses: YOLOS has one output).

    After :class:`HungarianMatcher`:

    * ``loss_ce``: cross entropy over all queries, matched ones against their
      target's label and the rest against "no object" (index
      ``num_classes``), whose class weight is ``eos_coef`` (the weighted mean
      of torch's ``cross_entropy``);
    * ``loss_bbox``: L1 between matched predicted and target boxes
      (normalised cxcywh);
    * ``loss_giou``: ``1 - GIoU`` of the matched pairs;

    the box losses summed and divided by the number of target boxes (clamped
    to at least 1; under an initialised torch.distributed, the average over
    ranks, so every rank divides by the same number). ``forward`` returns the
    three losses and ``"loss"``, their sum weighted by ``weights``.
    """

    def __init__(self, num_classes: int, eos_coef: float = 0.1, weights: Mapping[str, float] | None = None,
                 matcher: HungarianMatcher | None = None):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.eos_coef = float(eos_coef)
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        unknown = sorted(set(self.weights) - {"loss_ce", "loss_bbox", "loss_giou"})
        if unknown:
            raise ValueError(f"unknown loss weights {unknown}; the losses are loss_ce, loss_bbox, loss_giou")
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.register_buffer("empty_weight", _class_weight(self.num_classes, self.eos_coef), persistent=False)

    def num_boxes(self, targets: Sequence[Mapping[str, torch.Tensor]], device: torch.device) -> torch.Tensor:
        """The number of target boxes to normalise by: averaged over ranks if distributed, at least 1."""
        n = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        if _dist_ready():
            torch.distributed.all_reduce(n)
            n = n / torch.distributed.get_world_size()
        return n.clamp(min=1)

    def forward(self, outputs: Mapping[str, torch.Tensor],
                targets: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(f"the model gives {logits.shape[-1]} logits per query, the criterion expects "
                             f"{self.num_classes} classes + no-object = {self.num_classes + 1}")
        for t in targets:
            if len(t["labels"]) and (int(t["labels"].min()) < 0 or int(t["labels"].max()) >= self.num_classes):
                raise ValueError(f"target labels must be in [0, {self.num_classes}), got "
                                 f"{t['labels'].tolist()}")
        indices = self.matcher(outputs, targets)
        device = logits.device
        batch_idx = torch.cat([torch.full_like(p, i) for i, (p, _) in enumerate(indices)]).to(device)
        pred_idx = torch.cat([p for p, _ in indices]).to(device)

        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=device)
        target_classes[batch_idx, pred_idx] = torch.cat(
            [t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(device, torch.int64)
        loss_ce = F.cross_entropy(logits.transpose(1, 2).float(), target_classes,
                                  self.empty_weight.to(device))

        n = self.num_boxes(targets, device)
        src = boxes[batch_idx, pred_idx].float()
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(device, torch.float32)
        return _weighted(loss_ce, src, tgt, n, self.weights)


# ---------------------------------------------------------------- dense (one-to-many) auxiliary loss
def dense_targets(targets: Sequence[Mapping[str, torch.Tensor]], grid: tuple[int, int], num_classes: int,
                  device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch of a ``grid`` (rows, cols): the label of the object whose box holds the patch's centre, or
    ``num_classes`` (background), and that object's box (zeros for background).

    Returns ``(labels (B, N) int64, boxes (B, N, 4) float)``, patches in row-major order (the ViT's token
    order). Where several boxes hold a centre, the smallest one wins (FCOS's rule), so a small object in
    front of a large one keeps its patches. A box that holds no patch centre (smaller than a patch) gets the
    patch its centre falls in, so every object has at least one positive. The whole batch is assigned at once,
    on the device the targets are on (a training step's hot path: no copy to the host, no loop over images).
    """
    gh, gw = int(grid[0]), int(grid[1])
    b, n = len(targets), gh * gw
    dev = device if device is not None else (targets[0]["boxes"].device if b else None)
    background = (torch.full((b, n), num_classes, dtype=torch.int64, device=dev), torch.zeros(b, n, 4, device=dev))
    if not sum(len(t["boxes"]) for t in targets):
        return background
    boxes = torch.cat([t["boxes"].detach().reshape(-1, 4) for t in targets]).to(dev, torch.float32)   # (T, 4)
    labels = torch.cat([t["labels"].reshape(-1) for t in targets]).to(dev, torch.int64)
    img = torch.repeat_interleave(torch.arange(b, device=dev),
                                  torch.tensor([len(t["boxes"]) for t in targets], device=dev))  # (T,) its image
    ys = (torch.arange(gh, dtype=torch.float32, device=dev) + 0.5) / gh
    xs = (torch.arange(gw, dtype=torch.float32, device=dev) + 0.5) / gw
    cy, cx = [g.flatten() for g in torch.meshgrid(ys, xs, indexing="ij")]           # (N,)
    x0, y0, x1, y1 = _xyxy(boxes).unbind(-1)                                          # (T,)
    inside = ((cx[:, None] > x0) & (cx[:, None] < x1) & (cy[:, None] > y0) & (cy[:, None] < y1))  # (N, T)
    own = (boxes[:, 0].clamp(0, 1 - 1e-6) * gw).long() + gw * (boxes[:, 1].clamp(0, 1 - 1e-6) * gh).long()
    inside[own, torch.arange(len(boxes), device=dev)] = True
    inside = inside[None] & (img == torch.arange(b, device=dev)[:, None])[:, None, :]  # (B, N, T): own image only
    area = (boxes[:, 2] * boxes[:, 3]).expand_as(inside)
    best = torch.where(inside, area, torch.full_like(area, float("inf"))).argmin(-1)   # (B, N)
    pos = inside.any(-1)
    return (torch.where(pos, labels[best], background[0]),
            torch.where(pos[..., None], boxes[best], background[1]))


def dense_loss(outputs: Mapping[str, Any], targets: Sequence[Mapping[str, torch.Tensor]], num_classes: int,
               eos_coef: float = 0.1, weights: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
    """The one-to-many auxiliary loss on the patch tokens (``PEYOLOS(dense_aux=True)``'s ``"dense_outputs"``).

    Each patch is assigned by :func:`dense_targets`; the losses are the set loss's with that assignment in
    place of the matching: cross entropy over all patches (background weighted ``eos_coef``), and L1 and
    ``1 - GIoU`` between every positive patch's box and its object's box, summed and divided by the number
    of positives (at least 1). ``"loss"`` is their sum weighted as the set loss's (class 1, L1 5, GIoU 2).
    """
    logits, boxes = outputs["pred_logits"].float(), outputs["pred_boxes"].float()
    lab, tgt = dense_targets(targets, outputs["grid"], num_classes, logits.device)
    if lab.shape != logits.shape[:2]:
        raise ValueError(f"dense outputs have {logits.shape[1]} patches, the grid {tuple(outputs['grid'])} has "
                         f"{lab.shape[1]}")
    loss_ce = F.cross_entropy(logits.transpose(1, 2), lab, _class_weight(num_classes, eos_coef).to(logits.device))
    pos = lab < num_classes
    return _weighted(loss_ce, boxes[pos], tgt[pos], pos.sum().clamp(min=1), DEFAULT_WEIGHTS if weights is None
                     else weights)


# ---------------------------------------------------------------- results
@torch.no_grad()
def postprocess(outputs: Mapping[str, torch.Tensor], frames: Sequence[Mapping[str, Any]],
                label_to_category: Sequence[int] | Mapping[int, int], score_threshold: float = 0.0,
                max_dets: int = 100) -> list[dict[str, Any]]:
    """COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` for a batch.

    Scores are DETR's: softmax over the K+1 logits, the no-object column
    dropped, and every query reports its single most likely class with that
    probability as the score (one detection per query, as DETR's and YOLOS's
    COCO evaluation). Detections scoring at most ``score_threshold`` are
    dropped (the default 0 keeps all, which COCO AP wants), and of the rest
    the ``max_dets`` best per image are kept.

    ``frames`` has one dict per image: the sample's ``"frame"`` as the shards
    store it (:class:`himr_pipe.boxes.Frame`: window, resized size, flip,
    canvas, original size) plus its ``"image_id"``. Boxes are mapped back to
    the original image with :func:`himr_pipe.boxes.canvas_to_orig`, the one
    inverse of the encryption's geometry, and so clipped to the window (the
    whole image unless a view cropped it; a box can shrink to zero area and is
    kept, to score as the false positive it is). ``label_to_category`` maps
    the model's label index to the COCO category id (a list indexed by label,
    or a dict).
    """
    from himr_pipe.boxes import canvas_to_orig

    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if len(frames) != logits.shape[0]:
        raise ValueError(f"{len(frames)} frames for a batch of {logits.shape[0]} images")
    k = logits.shape[-1] - 1
    if isinstance(label_to_category, Mapping):
        missing = sorted(set(range(k)) - set(label_to_category))
    else:
        missing = list(range(len(label_to_category), k))
    if missing:
        raise ValueError(f"label_to_category has no category for labels {missing} (the model has {k} classes)")
    prob = logits.float().softmax(-1)[..., :-1]
    scores, labels = prob.max(-1)                                             # (B, Q)
    boxes = boxes.detach().double().cpu().numpy()
    results = []
    for i, frame in enumerate(frames):
        b = canvas_to_orig(boxes[i], frame)                                   # x, y, w, h in original pixels
        s = scores[i]
        keep = torch.nonzero(s > score_threshold).flatten()
        keep = keep[s[keep].argsort(descending=True, stable=True)][:max_dets]
        image_id = int(frame["image_id"])
        for q in keep.tolist():
            results.append({"image_id": image_id, "category_id": int(label_to_category[int(labels[i, q])]),
                            "bbox": [float(v) for v in b[q]], "score": float(s[q])})
    return results


def _quiet_coco(dataset: Mapping[str, Any]):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = copy.deepcopy(dict(dataset))
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_evaluate(gt: Mapping[str, Any] | str | os.PathLike, results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """COCO box AP of ``results`` (see :func:`postprocess`) against ``gt``, with the official COCO API.

    ``gt`` is a COCO-format dict (``images`` with id/width/height,
    ``annotations`` with id/image_id/bbox/area/iscrowd/category_id,
    ``categories`` with id/name) or the path of such a JSON file. Returns
    :data:`COCO_METRICS`: AP (IoU .50:.95), AP50, AP75 and AP for small /
    medium / large objects, all over 100 detections per image, as floats in
    [0, 1]. A size with no ground-truth object keeps pycocotools' -1.0
    ("not defined"). Empty ``results`` are valid and give 0.0 for every AP
    (-1.0 where pycocotools would give -1), where ``loadRes`` itself would
    fail. Results for images not in ``gt`` raise ``ValueError``. pycocotools'
    printing is suppressed.
    """
    from pycocotools.cocoeval import COCOeval

    if isinstance(gt, (str, os.PathLike)):
        with open(gt) as f:
            gt = json.load(f)
    coco_gt = _quiet_coco(gt)
    results = [dict(r) for r in results]  # loadRes writes area/id into them
    unknown = sorted({int(r["image_id"]) for r in results} - set(coco_gt.getImgIds()))
    if unknown:
        raise ValueError(f"results for images not in the ground truth: {unknown[:10]}"
                         + (" ..." if len(unknown) > 10 else ""))
    if not results:
        # pycocotools' loadRes cannot take an empty list; no detections score 0 where AP is defined
        sizes = _size_has_gt(coco_gt)
        return {m: (0.0 if has else -1.0) for m, has in zip(COCO_METRICS, sizes)}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {m: float(v) for m, v in zip(COCO_METRICS, ev.stats[:6])}


def _size_has_gt(coco_gt) -> list[bool]:
    """For AP, AP50, AP75, AP_S, AP_M, AP_L: is there a non-crowd ground-truth object (in that size range)?

    pycocotools reports -1 for an AP whose area range holds no ground truth
    (its ranges: small < 32^2 <= medium < 96^2 <= large, by annotation area).
    """
    areas = np.array([a["area"] for a in coco_gt.dataset.get("annotations", []) if not a.get("iscrowd", 0)],
                     dtype=np.float64)
    ranges = [(0, 1e10)] * 3 + [(0, 32 ** 2), (32 ** 2, 96 ** 2), (96 ** 2, 1e10)]
    return [bool(((areas >= lo) & (areas <= hi)).any()) for lo, hi in ranges]


def gather_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All ranks' results, concatenated in rank order, on every rank (as is without torch.distributed)."""
    if not _dist_ready():
        return results
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, list(results))
    return [r for part in parts for r in part]
