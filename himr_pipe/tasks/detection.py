"""Detection: a COCO images folder with its instances JSON; each sample an image, its boxes and its frame.

Boxes keep their place only if patches do, so shuffling schemes and cropping are refused. The boxes are moved
onto the canvas with the pixels (letterbox, views) and written, normalised, in each sample's JSON; OUT gains
the sanitised COCO ground truth (``ground-truth-{split}.json``) that evaluation scores against, with opaque
image ids unless ``--keep-image-ids``.
"""

from __future__ import annotations

import json
import os

from ..schemes.base import timm_names
from ..shards import META, make_members
from .base import Task

GT_PREFIX = "ground-truth-"  # OUT/ground-truth-{split}.json, the sanitised COCO ground truth


class Detection(Task):
    name = "detection"
    default_size = "512"
    default_scheme = "mi"   # it keeps every patch where it was, so boxes stay true
    default_resize = "letterbox"
    takes_annotations = True

    def claims(self, src, annotations):
        from ..coco import find_annotations

        return bool(annotations) or find_annotations(src) is not None

    def open_source(self, src, annotations=None):
        from ..coco import find_annotations, open_coco_source
        from ..sources import SourceError

        ann = annotations or find_annotations(src)
        if ann is None:
            from ..sources import CocoRootError, open_source

            try:  # SRC the root of a COCO dataset: say which images folder to pass
                open_source(src)
            except CocoRootError:
                raise
            except SourceError:
                pass
            raise SourceError(f"detection needs the COCO instances JSON of {src!r}: pass --annotations PATH (it "
                             "was not found at ../annotations/instances_<folder>.json either)")
        source, info = open_coco_source(src, ann)
        source.detection = info
        return source

    def source_record(self, source):
        from ..storage import is_url

        ann = source.detection.annotations
        return {"annotations": ann if is_url(ann) else os.path.abspath(ann)}

    def refusal(self, cfg):
        if cfg.scheme.definition.family(self.name, cfg.scheme) is None:
            return (f"--scheme {cfg.scheme.name} is refused for detection: shuffling moves patches, so boxes lose "
                    "their place; use mi (the default for detection: it keeps every patch where it was) or none")
        if cfg.resize == "crop":
            return ("--resize crop is refused for detection: it cuts objects away unseen; use letterbox (the "
                    "default for detection)")
        if cfg.resize == "stretch":  # its decode applies EXIF orientation, which COCO's boxes know nothing of
            return ("--resize stretch is refused for detection: it carries no frame to keep the boxes true (it "
                    "applies the EXIF orientation, and predict maps boxes back through a letterbox frame only); use "
                    "letterbox (the default for detection)")
        return None

    def job_record(self, cfg):
        return {"image_ids": "source" if cfg.keep_image_ids else "opaque"}

    def image_ids(self, source, key_hex, cfg):
        """Opaque ids (a permutation of 1..n drawn from the job key) unless --keep-image-ids."""
        if cfg.keep_image_ids:
            return lambda x: int(x.target.coco_id)
        from ..keys import image_ids

        ids = image_ids(key_hex, len(source.inputs))
        return lambda x: int(ids[x.index])

    timm_trainable = False
    # registered geometry of the detector family (train/peyolos.py registers these names): 512x512, P=16
    REGISTERED = (16, 512)
    SIZES = ("tiny", "small")

    def num_classes(self, manifest):
        return len(manifest["detection"]["categories"])  # object classes (the detector adds "no object")

    def model_record(self, scheme):
        # train/peyolos.py registers peyolos_{tiny,small}[_none]_patch16_512 (MI: 256x256 input, patch 8)
        fam = scheme.definition.family(self.name, scheme)  # peyolos (mi), peyolos_none (none)
        p, n = self.REGISTERED
        names = timm_names(fam, self.SIZES, p, n)
        kwargs = {} if (scheme.patch, scheme.height, scheme.width) == (p, n, n) else \
            {"img_size": list(scheme.out_size), "patch_size": scheme.out_cell}
        return {"family": fam, "timm": names, "input_size": [3, *scheme.out_size],
                "crop_pct": 1.0, "kwargs": kwargs,
                "create": f"import himr_pipe.train.peyolos; timm.create_model('{names[0]}', shards=OUT) "
                          "(himr-pipe train OUT --out RUN trains it)"}

    def members(self, ext):
        return {ext, META}

    def new_counts(self):
        return {"boxes": 0, "boxes_cut": 0}  # training boxes written; boxes cut by views or too small

    def member_writer(self, cfg, meta):
        from ..boxes import boxes_to_canvas

        def write(sc, blob, counts):
            """The sample's targets: non-crowd boxes on the canvas (normalised cxcywh), labels, and the frame."""
            t, it = sc.sample.target, sc.sample
            idx = [i for i, c in enumerate(t.crowd) if not c]
            b, keep = boxes_to_canvas([t.boxes[i] for i in idx], sc.frame)
            counts["boxes"] += len(keep)
            counts["boxes_cut"] += len(idx) - len(keep)
            d = {**meta, "image_id": int(it.image_id),
                 "boxes": [[round(float(v), 6) for v in r] for r in b],
                 "labels": [int(t.labels[idx[k]]) for k in keep], "frame": sc.frame.to_dict()}
            if cfg.views > 1:
                d["view"] = it.view
            if cfg.include_paths:
                d["source"] = it.ref
            return make_members(cfg.fmt.ext, blob, json.dumps(d).encode())

        return write

    def finish(self, cfg, source, outl, ostate, done, written, image_id):
        """Write the sanitised ground truth into OUT and the owner's map into the state; return the manifest's
        ``detection`` record (categories, the ground truth's file and sha256, what happened to every annotation)."""
        from ..coco import ground_truth
        from ..manifest import reason_counts

        info = source.detection
        gt, owner = ground_truth(source, written, image_id)
        name = f"{GT_PREFIX}{cfg.split}.json"
        sha = outl.write_json(name, gt)
        ostate.write_extra("image_ids.json", owner)
        ostate.write_extra("dropped_annotations.json",
                           [{"annotation": a, "file": f, "reason": r} for a, f, r in info.dropped])
        return {
            "categories": info.category_map(),
            "ground_truth": {"file": name, "sha256": sha, "images": len(gt["images"]),
                             "annotations": len(gt["annotations"]),
                             "crowd": sum(a["iscrowd"] for a in gt["annotations"])},
            "annotations": {
                "in_source": info.total_annotations,
                "dropped": len(info.dropped), "drop_reasons": reason_counts(r for _, _, r in info.dropped),
                # in_source = dropped + of_skipped_images + in_ground_truth
                "of_skipped_images": sum(len(x.target.boxes) for x in source.inputs
                                         if x.target is not None and x.index not in written),
                "in_ground_truth": len(gt["annotations"]),
                "training_boxes": sum(st.boxes or 0 for st in done.values()),
                "cut_from_training": sum(st.boxes_cut or 0 for st in done.values()),
            },
            "boxes": "normalised cx, cy, w, h on the stored canvas; each sample's .json 'frame' maps them back to "
                     "its image (boxes.canvas_to_orig)",
        }

    def owns_file(self, name):
        return name.startswith(GT_PREFIX) and name.endswith(".json")

    def check_sample(self, meta):
        """A sample's targets: as many labels as boxes, boxes normalised and inside the canvas."""
        boxes, labels = meta.get("boxes"), meta.get("labels")
        if not isinstance(boxes, list) or not isinstance(labels, list) or len(boxes) != len(labels):
            return "detection targets malformed (boxes and labels must be lists of one length)"
        for b in boxes:
            if len(b) != 4 or not all(0.0 <= v <= 1.0 for v in b) or b[2] <= 0 or b[3] <= 0:
                return f"box {b} is not a normalised cx, cy, w, h inside the canvas"
        if "frame" not in meta or "image_id" not in meta:
            return "detection sample lacks its frame or image_id"
        return None

    def check_out(self, manifest, loc, sizes):
        gt = manifest.get("detection", {}).get("ground_truth", {})
        name = gt.get("file")
        if not name or name not in sizes:
            return [f"the ground truth {name or '(unnamed)'} is missing"]
        if loc.sha256(name)[0] != gt.get("sha256"):
            return [f"{name}: sha256 mismatch (the ground truth was changed or damaged)"]
        return []

    def summary(self, manifest):
        rec = manifest.get("detection")
        if not rec:
            return None
        a = rec["annotations"]
        return (f"detection: {a['training_boxes']} training boxes, {a['in_ground_truth']} ground-truth "
                f"annotations in {rec['ground_truth']['file']}, {a['dropped']} annotations dropped"
                + (f" ({', '.join(f'{k}: {v}' for k, v in a['drop_reasons'].items())})" if a["dropped"] else "")
                + (f", {a['cut_from_training']} boxes cut by views or too small" if a["cut_from_training"] else ""))
