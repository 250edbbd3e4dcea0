"""Run a trained model on new, plain images: ``himr-pipe predict`` (installed as ``himr_pipe.train.predict``).

A checkpoint of ``himr-pipe train`` holds the model's weights, the scheme of its shards and (since this module)
what the shards' manifest said about the data: the task, the class names (classification) or the COCO
categories (detection), the resize mode, the source decoder and the stored image format
(``tasks.checkpoint_record``). :class:`Predictor` rebuilds the model as ``train/tasks.py`` builds it
(``models.build_model`` / ``peyolos.build_detector`` with the run's size overrides, then ``load_state_dict``)
and gives every plain image exactly the transform the shards' images got from ``encrypt-shards``:

1. **read and screen** as the pipeline does (``sources.read_input``, ``decoders.inspect_header``): a missing,
   empty, non-image, unsupported or oversized file is skipped with the pipeline's reason;
2. **decode and resize** with the pipeline's own decoder and resizer (``decoders.make_decoder`` on the CPU:
   the decoder the manifest recorded, DALI by default, as ``himr-pipe audit`` rebuilds plain images; where
   that decoder is not installed, torchvision's CPU decoder, which may differ by a level in a few pixels).
   EXIF orientation is applied for ``crop`` and ``stretch`` and not for ``letterbox`` (detection: COCO's boxes
   are in the stored frame), as ``encrypt-shards`` does; ``letterbox`` places the image with the frame of
   ``boxes.letterbox_frame``, computed from the header as the worker computes it. ``--views`` crops were a
   training augmentation: predict takes the whole image in the run's resize mode;
3. **encrypt with the torch reference** (``kernels.reference``), keyless: the models of the shuffled schemes
   are invariant to the order of the cells (no position embedding, token-wise RPE) and the flip models to each
   cell's orientation (the orbit-pooled patch embedding), so no key, permutation or orientation is needed at
   inference. ``mi`` and ``mi-shuffle`` get MI's averaging (``reference.mi_mix``), ``rs`` and ``none``
   nothing. The ``gap`` defence is applied (a blank border inside every cell, the same for every cell, so its
   place does not depend on the shuffle); the ``drop`` defence is not (its blanked cells are drawn from the
   owner's key per image; like patch dropout, it is left out at inference: every cell is shown);
4. **the shards' codec round trip**: with JPEG shards the encrypted image is JPEG-encoded at the manifest's
   quality and subsampling (simplejpeg, the CPU encoder of ``encrypt-shards``) and decoded as the training
   loader decodes it (``shards.decode_image``). It matters: a JPEG q90 round trip moves logits by about as
   much as the top-1 margins of a weakly trained model, so without it top-1 disagrees with the evaluation on
   the shards in borderline cases; with it, predict on the plain photo equals the evaluation of its shard
   sample. Exactly (to float rounding) for ``none``, ``mi`` and for the shuffled schemes without ``flip`` at
   4:4:4 (every 8x8 JPEG block lies inside one cell, so JPEG commutes with moving whole cells); closely for
   ``flip`` (JPEG's quantisation tables are not symmetric under a transpose, so a turned cell quantises a
   little differently) and for 4:2:0 shards (a cell of 16 px or more: the decoder's chroma upsampling reads
   across cell borders, which the shuffle changed). PNG and raw shards are lossless: no round trip.
   ``round_trip=False`` skips it. Shards written by a GPU encoder (nvImageCodec, nvJPEG) have slightly
   different JPEG bytes than this round trip;
5. **the model**, in float32 (no autocast), after the trainer's ImageNet normalisation, in eval mode.

Outputs:

* classification: one record per image, ``{"image": path, "index": i, "top_k": [{"label", "class", "prob"}]}``
  (``class``: the class name from the training manifest, None where it named none; ``prob``: softmax);
* detection: COCO results, ``{"image_id", "category_id", "bbox": [x, y, w, h], "score", "file_name"}``, boxes
  in each image's own pixel frame (``detection.postprocess``: the letterbox undone through the image's frame,
  clipped to the image). ``image_id`` is ``i``, the image's position in the list of inputs (0-based: the
  arguments in order, each folder expanded to its sorted image files, skipped inputs counted), the same as a
  classification record's ``index``; ``file_name`` is the path. ``category_id`` is the COCO id of the training
  manifest's category map. ``top_k`` is the most detections kept per image (default 100, COCO's), ``min_score``
  drops the weaker ones.

A checkpoint that is not one of ours or is damaged raises :class:`PredictError` (one line). It is read with
``torch.load(weights_only=True)`` (numpy's RNG state allowed), so a checkpoint file can't run code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from himr_pipe.scheme import Scheme, SchemeError
from himr_pipe.tasks import task_named

from .loader import MEAN, STD
from .pretrained import CheckpointUnreadable, read_checkpoint
from .tasks import TRAININGS, checkpoint_record, training_for_weights  # noqa: F401 - checkpoint_record: ours too
from himr_pipe.errors import Refused

# Where classification and detection differ (the default top_k, the model, the records, their text line), the
# predictor asks the task's Training (train/tasks.py) and the pipeline's task (its default resize).
CHECKPOINTS = ("checkpoint-best.pt", "checkpoint-last.pt")  # in a training --out, in this order


class PredictError(Refused, ValueError):
    """The checkpoint (or the device) can't be used; the message is one line."""


# ---------------------------------------------------------------- what the checkpoint holds
# checkpoint_record (what the trainer adds to every checkpoint) lives in train/tasks.py, below both the trainer
# and predict (which import it from there; ``himr_pipe.train.predict.checkpoint_record`` is the same function)
def find_checkpoint(run_or_checkpoint: str | os.PathLike) -> Path:
    """A training --out folder's best checkpoint (else its last), or the checkpoint file itself."""
    p = Path(run_or_checkpoint)
    if p.is_dir():
        for name in CHECKPOINTS:
            if (p / name).is_file():
                return p / name
        raise PredictError(f"{p}: no {' or '.join(CHECKPOINTS)} in this folder (is it a himr-pipe train --out?)")
    if not p.is_file():
        raise PredictError(f"{p}: no such checkpoint file or training folder")
    return p


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint of ``himr-pipe train`` as its dict (PredictError when it can't be read or is not ours)."""
    try:  # numpy's RNG state allowed, nothing else; truncated, empty, not a torch file, pickled code: one line
        ck = read_checkpoint(path, "point predict at a whole checkpoint (a run's --out, or its checkpoint-*.pt)")
    except CheckpointUnreadable as e:
        raise PredictError(str(e)) from None
    if not (isinstance(ck, dict) and isinstance(ck.get("model"), dict) and isinstance(ck.get("scheme"), dict)
            and isinstance(ck.get("num_classes"), int)):
        raise PredictError(f"{path}: not a himr-pipe train checkpoint (it lacks the model, scheme or class count "
                           "that train writes)")
    return ck


def _record(ck: dict, notes: list[str]) -> dict:
    """The checkpoint's :func:`checkpoint_record`; for a checkpoint written before it existed, rebuilt from its
    training shards' manifest where that is still readable, else the task's defaults (said in ``notes``)."""
    if "resize" in ck:
        return {k: ck.get(k) for k in ("task", "classes", "categories", "resize", "decoder", "codec")}
    shards = (ck.get("config") or {}).get("shards")
    if shards:
        try:
            from himr_pipe.manifest import Manifest

            rec = checkpoint_record(Manifest.load(shards, require_complete=True).data)
            notes.append(f"the checkpoint predates the data record; read it from its shards' manifest {shards}")
            return rec
        except Exception:  # noqa: BLE001 - moved or deleted shards: the defaults below
            pass
    from himr_pipe.encode import FormatError, choose_format

    task = training_for_weights(ck["model"]).name
    resize = task_named(task).default_resize
    try:  # encrypt-shards' default format: JPEG q90, subsampling as the scheme allows
        codec = choose_format("jpeg", Scheme.from_dict(ck["scheme"]), 90).to_dict()
    except (FormatError, SchemeError, KeyError, TypeError):
        codec = None
    notes.append(f"the checkpoint holds no data record and its shards are gone: assuming encrypt-shards' defaults "
                 f"(resize {resize}, {'JPEG q90' if codec else 'no codec round trip'}), no class names")
    return {"task": task, "classes": None, "categories": None, "resize": resize, "decoder": None, "codec": codec}


def build_from_checkpoint(ck: dict, task: str):
    """The model of checkpoint ``ck``, built as ``train/tasks.py`` builds it, with its weights loaded."""
    scheme = Scheme.from_dict(ck["scheme"])
    cfg = ck.get("config") or {}
    overrides = {k: cfg[k] for k in ("embed_dim", "depth", "num_heads") if cfg.get(k) is not None}
    model = TRAININGS[task].inference_model(scheme, ck["num_classes"], cfg.get("model", "tiny"), cfg, overrides)
    model.load_state_dict(ck["model"])
    return model.eval()


# ---------------------------------------------------------------- inputs
def list_inputs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[tuple[str, str | None]]:
    """(path, None) for every image to predict, or (path, why it is skipped): the arguments in order, a folder
    walked for its image files (by extension, as ``encrypt-shards`` lists a folder; sorted; hidden entries
    left out); a missing path, or a folder without images, is one skipped entry."""
    from himr_pipe.sources import IMAGE_EXTS

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[tuple[str, str | None]] = []
    for p in map(str, paths):
        if os.path.isdir(p):
            found = []
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found += [os.path.join(dirpath, f) for f in filenames
                          if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTS]
            out += [(f, None) for f in sorted(found)] or [(p, "no image files in this folder")]
        elif os.path.exists(p):
            out.append((p, None))
        else:
            out.append((p, "no such file or folder"))
    return out


def _stderr_skip(path: str, reason: str) -> None:
    print(f"himr-pipe predict: skipped {path}: {reason}", file=sys.stderr, flush=True)


def _resolve_decoder(name: str | None) -> str:
    """The recorded decoder where installed (on the CPU), else torchvision's CPU decoder."""
    module = {"dali": "nvidia.dali", "nvimgcodec": "nvidia.nvimgcodec"}.get(name or "dali")
    if module is not None:
        try:
            __import__(module)
            return name or "dali"
        except ImportError:
            pass
    return "torchvision"


# ---------------------------------------------------------------- the predictor
class Predictor:
    """A trained model with the transform its shards' images got (module docstring), ready for plain images.

    ``checkpoint``: a training --out folder (its ``checkpoint-best.pt``, else ``checkpoint-last.pt``) or a
    checkpoint file. ``device``: auto (a GPU where present), cpu, cuda or cuda:N; decoding, resizing and the
    encryption run on the CPU as ``encrypt-shards`` runs them there, the model on ``device``.
    ``round_trip``: the shards' codec round trip (on by default: what makes predict agree with the evaluation
    on the shards). ``notes`` lists what was assumed for an old checkpoint."""

    def __init__(self, checkpoint: str | os.PathLike, device: str = "auto", round_trip: bool = True,
                 batch_size: int = 32):
        self.path = find_checkpoint(checkpoint)
        ck = load_checkpoint(self.path)
        self.notes: list[str] = []
        try:
            self.scheme = Scheme.from_dict(ck["scheme"])
            rec = _record(ck, self.notes)
            self.task = rec["task"] or "classification"
            self.training = TRAININGS.get(self.task)  # what differs between the tasks is asked of it
            self.model = build_from_checkpoint(ck, self.task) if self.training else None
        except (KeyError, TypeError, ValueError, RuntimeError, SchemeError) as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise PredictError(f"{self.path}: the checkpoint's model can't be rebuilt ({type(e).__name__}: "
                               f"{first})") from None
        if self.training is None:
            raise PredictError(f"{self.path}: a model for task {self.task!r}, which predict can't run")
        self.num_classes = int(ck["num_classes"])
        self.classes = rec["classes"] if isinstance(rec["classes"], list) else None
        cats = rec["categories"] or [{"label": i, "id": i, "name": str(i)} for i in range(self.num_classes)]
        self.categories = sorted(cats, key=lambda c: c["label"])
        self.resize = rec["resize"] or task_named(self.task).default_resize
        refusal = self.training.resize_refusal(self.resize)
        if refusal:
            raise PredictError(f"{self.path}: {refusal}")
        codec = rec["codec"] or {}
        self.codec = None
        if round_trip and codec.get("name") == "jpeg":
            from himr_pipe.encode import ImageFormat

            self.codec = ImageFormat("jpeg", int(codec.get("quality", 90)), str(codec.get("subsampling", "444")))
        if self.scheme.drop:
            self.notes.append(f"the shards' drop defence ({self.scheme.drop:g}) is not applied: every cell is shown")
        self.device = _device(device)
        self.model.to(self.device)
        self.batch_size = max(1, int(batch_size))
        self.decoder_name = _resolve_decoder(rec["decoder"])
        if rec["decoder"] and self.decoder_name != rec["decoder"]:
            self.notes.append(f"the shards were decoded with {rec['decoder']}, which is not installed here: "
                              f"decoding with {self.decoder_name} (a level off in a few pixels, at most)")
        from himr_pipe.decoders import make_decoder

        self.decoder = make_decoder(self.decoder_name, self.scheme.size, self.resize, self.batch_size, 1, "cpu")
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)

    # -- the transform, step by step
    def load(self, paths: Sequence[str], on_skip: Callable[[str, str], None] | None = None):
        """Read, screen, decode and resize ``paths`` as ``encrypt-shards`` does: (uint8 NHWC of the plain
        resized images, the positions in ``paths`` they come from, their letterbox frames or Nones).
        Each input that can't be used is told to ``on_skip(path, reason)`` and left out."""
        from himr_pipe.decoders import DecodeBatch, inspect_header
        from himr_pipe.geometry import decode_geometry
        from himr_pipe.sources import File, InputError, read_input

        skip = on_skip or _stderr_skip
        images, kept, frames = [], [], []
        for start in range(0, len(paths), self.batch_size):  # the decoder takes at most batch_size at once
            data, pos, rows, fr = [], [], [], []
            for i in range(start, min(start + self.batch_size, len(paths))):
                try:
                    blob = read_input(File(str(paths[i])))
                    hdr = inspect_header(blob)
                except InputError as e:
                    skip(str(paths[i]), e.reason)
                    continue
                row, frame = decode_geometry(self.resize, self.scheme.size, hdr.width, hdr.height)
                data.append(blob)
                pos.append(i)
                rows.append(row)
                fr.append(frame)
            if not data:
                continue
            windows = np.array(rows, np.float32) if self.resize == "letterbox" else None
            (_, imgs, bad), = list(self.decoder.run([DecodeBatch(data, windows)]))
            for j in sorted(bad):
                skip(str(paths[pos[j]]), bad[j])
            good = [j for j in range(len(data)) if j not in bad]
            images.append(imgs.clone())
            kept += [pos[j] for j in good]
            frames += [fr[j] for j in good]
        if not images:
            return torch.zeros((0, *self.scheme.size, 3), dtype=torch.uint8), [], []
        return torch.cat(images), kept, frames

    def encrypt(self, plain: torch.Tensor) -> torch.Tensor:
        """The keyless encryption of plain resized images (uint8 NHWC at the scheme's size): MI's averaging
        for mi / mi-shuffle, nothing for rs / none, the gap defence's blank borders, then the shards' codec
        round trip. What the order- and orientation-invariant models see of the shards' images: the scheme's own
        transform (its definition's torch reference) with every cell in its place and orientation, and no cell
        dropped."""
        import dataclasses

        from himr_pipe.kernels import reference

        s = dataclasses.replace(self.scheme, drop=0.0)
        perms = torch.arange(s.num_patches).expand(len(plain), -1) if s.shuffled else None  # the identity
        x = s.definition.encrypt(s, plain, perms, reference)
        x = plain.clone() if x is plain else x
        if self.codec is not None and len(x):
            from himr_pipe.shards import decode_image

            x = torch.stack([torch.from_numpy(decode_image(self.codec.encode(im.numpy()), self.codec.ext))
                             for im in x])
        return x

    @torch.no_grad()
    def forward(self, stored: torch.Tensor):
        """The model on stored-form images (uint8 NHWC at the scheme's out_size): the trainer's normalisation,
        float32. Logits (classification) or PEYOLOS's output dict (detection)."""
        x = stored.to(self.device).permute(0, 3, 1, 2).float().div_(255)
        return self.model((x - self.mean) / self.std)

    # -- all of it
    def predict(self, images, top_k: int | None = None, min_score: float = 0.0,
                on_skip: Callable[[str, str], None] | None = None) -> list[dict[str, Any]]:
        """Records for ``images`` (files and folders, see :func:`list_inputs`): see the module docstring."""
        skip = on_skip or _stderr_skip
        k = self.training.default_top_k if top_k is None else int(top_k)
        if k < 1:
            raise ValueError(f"top_k must be at least 1, got {k}")
        listed = list_inputs(images)
        for path, why in listed:
            if why is not None:
                skip(path, why)
        todo = [i for i, (_, why) in enumerate(listed) if why is None]
        records: list[dict[str, Any]] = []
        for b in range(0, len(todo), self.batch_size):
            idx = todo[b:b + self.batch_size]
            paths = [listed[i][0] for i in idx]
            plain, kept, frames = self.load(paths, skip)
            if not kept:
                continue
            out = self.forward(self.encrypt(plain))
            records += self.training.predict_records(
                out, [{"path": paths[j], "index": idx[j], "frame": f} for j, f in zip(kept, frames)], k, min_score,
                self)
        return records

    def line(self, record: dict) -> str:
        """A record as ``himr-pipe predict``'s text line (an image's top classes, or one detection)."""
        return self.training.predict_line(record, self)

    def summary(self, records: list[dict]) -> str:
        """What the records count: images (classification), detections in images (detection)."""
        return self.training.predict_summary(records)

    def class_name(self, label: int) -> str | None:
        return self.classes[label] if self.classes and 0 <= label < len(self.classes) else None

    def category_name(self, category_id: int) -> str:
        return next((str(c.get("name", c["id"])) for c in self.categories if c["id"] == category_id),
                    str(category_id))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise PredictError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"device {name!r}: no CUDA device here (use cpu or auto)")
    return dev


def predict(checkpoint: str | os.PathLike, images, top_k: int | None = None, device: str = "auto",
            min_score: float = 0.0, round_trip: bool = True, batch_size: int = 32,
            on_skip: Callable[[str, str], None] | None = None) -> list[dict[str, Any]]:
    """Run the model of ``checkpoint`` (a training --out folder or a checkpoint file) on the plain ``images``
    (a path or a list of paths; folders are walked for image files, sorted), each transformed as its shards
    were (module docstring), with no key: the shuffled schemes' models are invariant to the order and the
    orientation of the cells, so only MI's averaging (mi, mi-shuffle) or nothing (rs, none) is applied.

    Classification: one record per image, ``{"image", "index", "top_k": [{"label", "class", "prob"}]}`` with
    the ``top_k`` (default 5) most probable classes. Detection: COCO results ``{"image_id", "category_id",
    "bbox", "score", "file_name"}`` in each image's own frame, at most ``top_k`` (default 100) per image scoring
    above ``min_score``; ``image_id`` is the image's position among the inputs. Inputs that can't be used
    (missing, not an image, corrupt) are told to ``on_skip(path, reason)`` (default: one line on stderr) and
    left out. Raises :class:`PredictError` for a checkpoint that is not ours or is damaged."""
    return Predictor(checkpoint, device, round_trip, batch_size).predict(images, top_k, min_score, on_skip)
