"""How each task trains: the training side of :mod:`himr_pipe.tasks`, keyed by the same name.

The trainer (:mod:`.trainer`) is one loop for every task: loaders, DDP, bf16, warm-up + cosine, checkpoints,
exact resume and the log line. What differs is asked of the task's :class:`Training`: the classes it
predicts, the model, the optimiser's defaults, the augmentation and loss of a step, and the validation metric.

* classification: PEViT / MI-ViT / ViT (``models.build_model``), the DeiT recipe (lr 5e-4 x batch/512,
  weight decay 0.05), augmentation in the encrypted domain (``augment.build_augment``), soft-target cross
  entropy with label smoothing, top-1.
* detection: PEYOLOS (``peyolos.build_detector``), DETR's set loss (``detection.SetCriterion``) plus, by
  default, the dense one-to-many loss on the patch tokens (``detection.dense_loss``), AdamW at lr 5e-4 (a
  from-scratch rate: YOLOS's 1e-4 fine-tunes a pretrained DeiT, and measured from scratch it does not learn
  to localise at small budgets, issue 21) and weight decay 1e-4 with gradient clipping at 0.1 (YOLOS),
  augmentation exact for MI with the boxes moved along (``det_augment.DetectionAugment``), COCO AP on the
  validation OUT's ground truth.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from himr_pipe.tasks import AUTO_ORDER, job_task

from .loader import DataError, decode_on_device, eval_loader, read_manifest


class Training:
    """One training run's task: built from the training shards' manifest."""

    name = ""
    metric = ""  # the validation figure the best checkpoint is chosen by (higher is better)

    def __init__(self, m: dict, shards: str):
        self.num_classes = 0

    def check_val(self, mv: dict) -> None:
        """Refuse validation shards this model cannot be scored on (raises DataError): another task's, and
        (in a subclass) whatever else the task needs to match."""
        if job_task(mv["job"]) != self.name:
            raise DataError("--val shards are for another task than the training shards")

    def build_model(self, scheme, cfg, overrides: dict):
        raise NotImplementedError

    def defaults(self, global_batch: int) -> dict:
        """The optimiser's defaults: lr, weight_decay, clip_grad (None: no clipping)."""
        raise NotImplementedError

    def setup(self, scheme, cfg) -> None:
        """Build the augmentation and the loss, once the model is."""

    def loss(self, net, imgs, labels, device, gen, amp: bool, mean, std, cfg) -> torch.Tensor:
        """One step's loss on a decoded batch (uint8 NHWC on the device)."""
        raise NotImplementedError

    def evaluate(self, net, cfg, device, mean, std, rank, world, amp, raw) -> dict:
        """The validation figures (``val_*`` keys of the log)."""
        raise NotImplementedError

    def describe(self, rec: dict) -> str:
        """The log line's part about the validation figures."""
        return ""

    # -- the checkpoint and inference on plain images (``himr-pipe predict``, :mod:`.predict`): asked of the
    # class, since a checkpoint has no training manifest to build a Training from
    default_top_k = 1  # predict's records per image when none is asked for

    @staticmethod
    def manifest_categories(m: dict) -> list | None:
        """What a checkpoint keeps of the training manifest's categories (:func:`checkpoint_record`)."""
        return None

    @classmethod
    def owns_weights(cls, state: dict) -> bool:
        """Are these weights (a checkpoint's state dict) this task's model? Asked of a checkpoint that does not
        name its task (written before it did), in :func:`training_for_weights`' order."""
        return False

    @classmethod
    def resize_refusal(cls, resize: str) -> str | None:
        """Why predict can't run a model of this task trained on shards resized so (None: it can)."""
        return None

    @classmethod
    def inference_model(cls, scheme, num_classes: int, size: str, cfg: dict, overrides: dict):
        """The model a checkpoint of this task holds, built from its ``config`` as :meth:`build_model` built it
        (its weights not yet loaded)."""
        raise NotImplementedError

    @classmethod
    def predict_records(cls, out, images: list[dict], k: int, min_score: float, predictor) -> list[dict]:
        """The model's output ``out`` on a batch as predict's records. ``images``: the batch's inputs in order,
        ``{"path", "index", "frame"}`` (the index is the input's position among predict's inputs, the frame its
        letterbox frame or None); ``predictor``: the :class:`~.predict.Predictor` (its class names,
        categories); ``k``: the most records per image, ``min_score``: the weakest kept (where scores are)."""
        raise NotImplementedError

    @classmethod
    def predict_line(cls, record: dict, predictor) -> str:
        """One record as ``himr-pipe predict``'s text line."""
        raise NotImplementedError

    @classmethod
    def predict_summary(cls, records: list[dict]) -> str:
        """What ``himr-pipe predict --json PATH`` says it wrote."""
        return f"{len(records)} records"


def _max_label(shards: str) -> int:
    from himr_pipe.shards import LABEL, iter_shard

    m = read_manifest(shards)
    return max(int(s[LABEL]) for e in m["shards"] for _, s in iter_shard(shards, e["name"]))


class ClassificationTraining(Training):
    name = "classification"
    metric = "val_top1"

    def __init__(self, m, shards):
        self.num_classes = m["num_classes"] or (1 + max(0, _max_label(shards)))
        self.classes = m.get("classes")

    def build_model(self, scheme, cfg, overrides):
        from .models import build_model, check_model_matches

        model = build_model(scheme, self.num_classes, size=cfg.model, rpe=cfg.rpe, drop_path_rate=cfg.drop_path,
                            init=cfg.init, keep_head=list(self.classes or ()), **overrides)
        check_model_matches(model, scheme)
        return model

    def defaults(self, global_batch):
        return {"lr": 5e-4 * global_batch / 512, "weight_decay": 0.05, "clip_grad": None}

    def setup(self, scheme, cfg):
        from .augment import build_augment

        self.aug = build_augment(scheme, self.num_classes, cfg.aug_config if cfg.augment else {"enabled": False})

    def loss(self, net, imgs, labels, device, gen, amp, mean, std, cfg):
        x = imgs.permute(0, 3, 1, 2).float().div_(255)
        y = labels.to(device, non_blocking=True)
        x, y_soft = self.aug(x, y, gen)
        if cfg.label_smoothing:
            y_soft = y_soft * (1 - cfg.label_smoothing) + cfg.label_smoothing / self.num_classes
        x = (x - mean) / std
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(x)
        return torch.sum(-y_soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()

    def evaluate(self, net, cfg, device, mean, std, rank, world, amp, raw):
        return {"val_top1": evaluate(net, cfg.val, cfg.batch_size, cfg.workers, device, mean, std, rank, world,
                                     amp, raw, cfg.verify_shards)}

    def describe(self, rec):
        return f" | val top-1 {rec['val_top1']:.4f}" if "val_top1" in rec else ""

    default_top_k = 5

    @classmethod
    def owns_weights(cls, state):
        return True  # a classifier is what a checkpoint without another task's parts holds

    @classmethod
    def inference_model(cls, scheme, num_classes, size, cfg, overrides):
        from .models import build_model

        return build_model(scheme, num_classes, size=size, rpe=cfg.get("rpe", True), **overrides)

    @classmethod
    def predict_records(cls, out, images, k, min_score, predictor):
        """One record per image: ``{"image", "index", "top_k": [{"label", "class", "prob"}]}`` (softmax)."""
        probs = out.float().softmax(-1).cpu()
        p, lab = probs.topk(min(k, probs.shape[-1]), dim=-1)
        return [{"image": im["path"], "index": im["index"], "top_k": [
            {"label": int(la), "class": predictor.class_name(int(la)), "prob": float(pr)}
            for pr, la in zip(p[row], lab[row])]} for row, im in enumerate(images)]

    @classmethod
    def predict_line(cls, record, predictor):
        return f"{record['image']}: " + ", ".join(
            f"{t['class'] if t['class'] is not None else t['label']} {t['prob']:.4f}" for t in record["top_k"])

    @classmethod
    def predict_summary(cls, records):
        return f"{len(records)} images"


class DetectionTraining(Training):
    name = "detection"
    metric = "val_AP"

    def __init__(self, m, shards):
        self.categories = m["detection"]["categories"]
        self.num_classes = len(self.categories)
        self.label_to_category = [c["id"] for c in self.categories]

    def check_val(self, mv):
        super().check_val(mv)
        if mv["detection"]["categories"] != self.categories:
            raise DataError("--val shards have other categories than the training shards")

    def build_model(self, scheme, cfg, overrides):
        from .peyolos import build_detector, check_detector_matches

        model = build_detector(scheme, self.num_classes, size=cfg.model, det_tokens=cfg.det_tokens, init=cfg.init,
                               aux_loss=cfg.aux_loss, dense_aux=cfg.dense_aux,
                               pos_init=cfg.pos_init, drop_path_rate=cfg.drop_path, **overrides)
        check_detector_matches(model, scheme)
        return model

    def defaults(self, global_batch):
        return {"lr": 5e-4, "weight_decay": 1e-4, "clip_grad": 0.1}

    def setup(self, scheme, cfg):
        from .det_augment import DetectionAugment
        from .detection import SetCriterion

        self.aug = DetectionAugment(scheme.out_cell, **(cfg.aug_config or {})) if cfg.augment else None
        self.criterion = SetCriterion(self.num_classes)

    def loss(self, net, imgs, labels, device, gen, amp, mean, std, cfg):
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in labels]
        if self.aug is not None:  # per image: each moves its own boxes (a handful of small ops)
            moved = [self.aug(imgs[i], t["boxes"], t["labels"], gen) for i, t in enumerate(targets)]
            imgs = torch.stack([a[0] for a in moved])
            targets = [{"boxes": a[1], "labels": a[2]} for a in moved]
        x = (imgs.permute(0, 3, 1, 2).float().div_(255) - mean) / std
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = net(x)
        loss = self.criterion({k: out[k].float() for k in ("pred_logits", "pred_boxes")}, targets)["loss"]
        for aux in out.get("aux_outputs", ()):  # --aux-loss: each earlier block's tokens, matched on their own
            loss = loss + self.criterion({k: v.float() for k, v in aux.items()}, targets)["loss"]
        if "dense_outputs" in out:  # --dense-aux: every patch predicts the object over it (one-to-many)
            from .detection import dense_loss

            loss = loss + dense_loss(out["dense_outputs"], targets, self.num_classes)["loss"]
        return loss

    def evaluate(self, net, cfg, device, mean, std, rank, world, amp, raw):
        ap = evaluate_detection(net, cfg.val, cfg.batch_size, cfg.workers, device, mean, std,
                                self.label_to_category, rank, world, amp, raw, cfg.verify_shards)
        return {f"val_{k}": v for k, v in ap.items()}

    def describe(self, rec):
        return f" | val AP {ap_text(rec['val_AP'])}, AP50 {ap_text(rec['val_AP50'])}" if "val_AP" in rec else ""

    default_top_k = 100  # COCO's most detections per image

    @staticmethod
    def manifest_categories(m):
        return (m.get("detection") or {}).get("categories")

    @classmethod
    def owns_weights(cls, state):
        return any(k.startswith("bbox_embed.") for k in state)

    @classmethod
    def resize_refusal(cls, resize):
        if resize != "letterbox":
            return f"a detector trained on {resize!r} shards: predict maps boxes back through the letterbox frame only"
        return None

    @classmethod
    def inference_model(cls, scheme, num_classes, size, cfg, overrides):
        from .peyolos import build_detector

        return build_detector(scheme, num_classes, size=size, det_tokens=cfg.get("det_tokens", 100),
                              aux_loss=cfg.get("aux_loss", False), dense_aux=cfg.get("dense_aux", True),
                              pos_init=cfg.get("pos_init", "sincos"), **overrides)

    @classmethod
    def predict_records(cls, out, images, k, min_score, predictor):
        """COCO results ``{"image_id", "category_id", "bbox", "score", "file_name"}`` in each image's own frame
        (``detection.postprocess``), at most ``k`` per image scoring above ``min_score``."""
        from .detection import postprocess

        res = postprocess({kk: v.float() for kk, v in out.items()},
                          [{**im["frame"].to_dict(), "image_id": im["index"]} for im in images],
                          [c["id"] for c in predictor.categories], min_score, k)
        path = {im["index"]: im["path"] for im in images}
        for r in res:
            r["file_name"] = path[r["image_id"]]
        return res

    @classmethod
    def predict_line(cls, record, predictor):
        x, y, w, h = record["bbox"]
        return (f"{record['file_name']}: {predictor.category_name(record['category_id'])} {record['score']:.4f} "
                f"box {x:.1f} {y:.1f} {w:.1f} {h:.1f}")

    @classmethod
    def predict_summary(cls, records):
        return f"{len(records)} detections in {len({r['image_id'] for r in records})} images"


def ap_text(v: float | None) -> str:
    """An AP figure as the log prints it: COCOeval's -1 (no ground-truth object in that size range, or none at
    all) is "n/a", not a score."""
    return "n/a" if v is None or v < 0 else f"{v:.4f}"


TRAININGS = {t.name: t for t in (ClassificationTraining, DetectionTraining)}


def training_for(m: dict, shards: str) -> Training:
    """The training of the task the shards were written for (the manifest's ``job.task``)."""
    name = job_task(m["job"])
    if name not in TRAININGS:
        raise DataError(f"these shards are for task {name!r}, which this trainer cannot train")
    return TRAININGS[name](m, shards)


def training_for_weights(state: dict) -> type[Training]:
    """The task whose model the weights ``state`` are, for a checkpoint that does not name its task: tried in
    ``--task auto``'s order (``himr_pipe.tasks.AUTO_ORDER``; classification, which takes any, last)."""
    return next(TRAININGS[n] for n in AUTO_ORDER if n in TRAININGS and TRAININGS[n].owns_weights(state))


def checkpoint_record(m: dict) -> dict:
    """What a checkpoint holds of its training manifest ``m`` for inference on plain images (the trainer adds it
    to every checkpoint, ``himr-pipe predict`` reads it): ``task``; ``classes`` (the class names, label order;
    None where the manifest has none); ``categories`` (detection: the manifest's category map,
    ``[{"label", "id", "name"}]``, else None: :meth:`Training.manifest_categories`); ``resize`` (crop, stretch
    or letterbox); ``decoder`` (the source decoder the shards were made with); ``codec`` (the stored image
    format: name, ext, and JPEG's quality and subsampling)."""
    job = m["job"]
    task = job_task(job)
    return {"task": task, "classes": m.get("classes"),
            "categories": TRAININGS.get(task, Training).manifest_categories(m),
            "resize": job.get("resize"), "decoder": job.get("decoder"), "codec": job.get("format")}


@torch.no_grad()
def evaluate(net, shards: str, batch_size: int, workers: int, device, mean, std, rank: int = 0, world: int = 1,
             amp: bool = False, raw: bool = False, verify: bool = True) -> float:
    """Top-1 over every validation sample exactly once (summed over ranks)."""
    was = net.training
    net.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = torch.zeros((), dtype=torch.long, device=device)
    for imgs, labels in eval_loader(shards, batch_size, workers, rank, world, raw, verify):
        imgs = decode_on_device(imgs, device) if raw else imgs.to(device)
        x = (imgs.permute(0, 3, 1, 2).float().div_(255) - mean) / std
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = net(x).argmax(-1)
        correct += (pred == labels.to(device)).sum()
        total += len(labels)
    if world > 1:
        dist.all_reduce(correct)
        dist.all_reduce(total)
    net.train(was)
    return (correct.float() / total.clamp(min=1)).item()


@torch.no_grad()
def evaluate_detection(net, shards: str, batch_size: int, workers: int, device, mean, std, label_to_category,
                       rank: int = 0, world: int = 1, amp: bool = False, raw: bool = False,
                       verify: bool = True) -> dict:
    """COCO AP of the detector on a validation OUT: every sample once (over ranks), predictions mapped back to
    each image's original frame, gathered, and scored against the OUT's sanitised ground truth."""
    from himr_pipe.storage import Location

    from .detection import coco_evaluate, gather_results, postprocess

    was = net.training
    net.eval()
    results = []
    for imgs, targets in eval_loader(shards, batch_size, workers, rank, world, raw, verify):
        imgs = decode_on_device(imgs, device) if raw else imgs.to(device)
        x = (imgs.permute(0, 3, 1, 2).float().div_(255) - mean) / std
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = net(x)
        results += postprocess({k: v.float() for k, v in out.items()},
                               [{**t["frame"], "image_id": t["image_id"]} for t in targets], label_to_category)
    results = gather_results(results)
    gt = Location(shards).read_json(read_manifest(shards)["detection"]["ground_truth"]["file"])
    net.train(was)
    return coco_evaluate(gt, results)
