"""COCO as a source of encrypt-shards: detection, from an images folder plus its instances JSON.

SRC is the images folder (``coco/val2017``). Its annotations come from
``--annotations PATH``, or from the usual layout: ``../annotations/instances_{folder}.json``
beside the folder. Either may be a local path or an fsspec URL (:mod:`.storage`).

What is checked, and what happens (every image and every annotation is accounted for):

* a JSON that is not COCO (unparseable, no ``images`` / ``annotations`` /
  ``categories`` lists, categories without integer ids) is a clear error
  before any work (:class:`~himr_pipe.sources.SourceError`);
* per image, skipped with a reason: a duplicate image id, an unsafe
  ``file_name`` (absolute, ``..``), a missing file, a size in the JSON that is
  not a positive integer, and files of the folder that no image record names
  (``not-in-annotations``); a file whose decoded size differs from its record
  is skipped by the worker (``size-mismatch``), since its boxes would not fit;
* per annotation, dropped with a reason (counted in the manifest, listed by
  id in the owner's state): a duplicate annotation id, an unknown image id or
  category id, a malformed box, a box of zero area, a box wholly outside its
  image. A box partly outside is clipped to the image.
* crowd annotations (``iscrowd: 1``) stay in the ground truth (COCOeval
  ignores detections matched to them) and out of the training targets.

Labels are contiguous, ``0..K-1`` in the order of the category ids; the
manifest records the map back (label -> COCO id and name).

Boxes keep COCO's frame: the image's pixels as stored, without applying an
EXIF orientation (pycocotools and torchvision's CocoDetection read them so),
which is why detection decodes ignore EXIF orientation.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

from .sources.base import IMAGE_EXTS, File, Input, Source, SourceError, Url, fingerprint, safe_member_name
from .specials import local_not_regular
from .storage import Location, bounded, is_url, local_path, retrying, url_fs


@dataclass(frozen=True)
class ImageTarget:
    """One image's annotations as read from the JSON (COCO frame, pixels), after the checks above."""

    coco_id: int
    width: int
    height: int
    boxes: tuple = ()        # (x, y, w, h) per kept annotation, clipped to the image
    categories: tuple = ()   # COCO category id per kept annotation
    labels: tuple = ()       # contiguous label per kept annotation
    crowd: tuple = ()        # bool per kept annotation
    areas: tuple = ()        # COCO "area" per kept annotation (the mask area; box area when absent)
    ann_ids: tuple = ()      # source annotation ids (owner's side)


@dataclass
class CocoInfo:
    """What a detection job needs beyond the inputs: categories, the JSON's location, dropped annotations."""

    annotations: str                                   # where the instances JSON was read
    categories: list[dict]                             # [{"label", "id", "name"}] in label order
    dropped: list[tuple] = field(default_factory=list)  # (annotation id, image file or "?", reason)
    total_annotations: int = 0

    def category_map(self) -> list[dict]:
        return [dict(c) for c in self.categories]


def find_annotations(src: str) -> str | None:
    """The usual COCO layout: ``coco/val2017`` -> ``coco/annotations/instances_val2017.json``, if it exists."""
    root = src.rstrip("/")
    if is_url(root):
        parent, leaf = root.rsplit("/", 1)
        cand = f"{parent}/annotations/instances_{leaf}.json"
        # SRC itself first: a store that does not answer is said to be SRC's, not an annotations file's
        fs, p = url_fs(root)
        retrying("looking at SRC", root, lambda: fs.exists(p, **bounded(fs)))
        loc = Location(parent + "/annotations")
        return cand if loc.exists(f"instances_{leaf}.json") else None
    root = local_path(root)
    cand = os.path.join(os.path.dirname(os.path.abspath(root)), "annotations",
                        f"instances_{os.path.basename(os.path.abspath(root))}.json")
    return cand if os.path.isfile(cand) else None


def _read_json(path: str) -> dict:
    try:
        if is_url(path):
            parent, name = path.rstrip("/").rsplit("/", 1)
            data = Location(parent).read_bytes(name)
        else:
            why = local_not_regular(local_path(path))
            if why:  # a FIFO would block the read forever
                raise SourceError(f"the annotations file {path!r} can't be read ({why})")
            with open(local_path(path), "rb") as f:
                data = f.read()
    except FileNotFoundError:
        raise SourceError(f"the annotations file {path!r} does not exist") from None
    except OSError as e:
        raise SourceError(f"the annotations file {path!r} can't be read ({e})") from None
    try:
        d = json.loads(data)
    except ValueError as e:
        raise SourceError(f"the annotations file {path!r} is not valid JSON ({e})") from None
    if not isinstance(d, dict) or not all(isinstance(d.get(k), list) for k in ("images", "annotations", "categories")):
        raise SourceError(f"the annotations file {path!r} is not a COCO instances file (it needs 'images', "
                          "'annotations' and 'categories' lists)")
    return d


def _int(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _box(b, w: int, h: int) -> tuple[tuple | None, str | None]:
    """A COCO box clipped to the image, or (None, reason)."""
    if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b):
        return None, "malformed-box: bbox is not four finite numbers"
    x, y, bw, bh = map(float, b)
    if bw <= 0 or bh <= 0:
        return None, "zero-area-box: width or height is not positive"
    x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(float(w), x + bw), min(float(h), y + bh)
    if x1 <= x0 or y1 <= y0:
        return None, "box-outside-image: the box lies wholly outside its image"
    return (x0, y0, x1 - x0, y1 - y0), None


def open_coco_source(src: str, annotations: str) -> tuple[Source, CocoInfo]:
    """Enumerate a COCO images folder against its instances JSON (see the module's docstring)."""
    d = _read_json(annotations)
    cats = []
    for c in d["categories"]:
        if not isinstance(c, dict) or _int(c.get("id")) is None:
            raise SourceError(f"{annotations!r}: every category needs an integer 'id' (got {c!r:.80})")
        cats.append(c)
    ids = [c["id"] for c in cats]
    if len(set(ids)) != len(ids):
        raise SourceError(f"{annotations!r}: duplicate category ids")
    if not cats:
        raise SourceError(f"{annotations!r}: no categories")
    cats.sort(key=lambda c: c["id"])
    label_of = {c["id"]: i for i, c in enumerate(cats)}
    categories = [{"label": i, "id": c["id"], "name": str(c.get("name", c["id"]))} for i, c in enumerate(cats)]

    root = src.rstrip("/")
    loc = Location(root)
    irregular: dict[str, str] = {}  # FIFOs, sockets, devices: skipped with the reason, never opened
    try:
        listed = set(loc.sizes()) if loc.remote else (
            set(e for e in os.listdir(local_path(root)) if os.path.isfile(os.path.join(local_path(root), e)))
            if os.path.isdir(local_path(root)) else None)
        if listed is not None and not loc.remote:
            for e in os.listdir(local_path(root)):
                why = e not in listed and local_not_regular(os.path.join(local_path(root), e))
                if why and not why.endswith("directory"):
                    irregular[e] = why
    except OSError as e:
        raise SourceError(f"SRC {src!r} can't be listed ({e})") from None
    if listed is None:
        raise SourceError(f"SRC {src!r} is not a folder of images")

    info = CocoInfo(annotations, categories)
    # images: (record, skip reason)
    images: dict[int, dict] = {}
    records: list[tuple[str, dict | None, str | None]] = []  # (ref, record, skip)
    for im in d["images"]:
        if not isinstance(im, dict):
            records.append(("?", None, "malformed-image-record: not an object"))
            continue
        iid, fn = _int(im.get("id")), im.get("file_name")
        ref = fn if isinstance(fn, str) else f"image-id:{im.get('id')!r}"
        if iid is None or not isinstance(fn, str) or not fn:
            records.append((ref, None, "malformed-image-record: needs an integer 'id' and a 'file_name'"))
            continue
        if iid in images:
            records.append((ref, None, f"duplicate-image-id: image id {iid} appears more than once"))
            continue
        if not safe_member_name(fn) or "/" in fn.replace("\\", "/"):
            records.append((ref, None, "unsafe-file-name: absolute path, '..' or a sub-folder in file_name"))
            images[iid] = {"bad": True}
            continue
        w, h = _int(im.get("width")), _int(im.get("height"))
        if not w or not h or w <= 0 or h <= 0:
            records.append((ref, None, "malformed-image-record: width and height must be positive integers"))
            images[iid] = {"bad": True}
            continue
        images[iid] = {"id": iid, "file": fn, "width": w, "height": h, "anns": []}
        records.append((fn, images[iid], None))

    seen_ann: set = set()
    for a in d["annotations"]:
        info.total_annotations += 1
        if not isinstance(a, dict):
            info.dropped.append(("?", "?", "malformed-annotation: not an object"))
            continue
        aid, iid, cid = a.get("id"), _int(a.get("image_id")), _int(a.get("category_id"))
        im = images.get(iid) if iid is not None else None
        where = im["file"] if im and "file" in im else "?"
        if aid in seen_ann:
            info.dropped.append((aid, where, f"duplicate-annotation-id: annotation id {aid!r} appears more than once"))
            continue
        seen_ann.add(aid)
        if im is None:
            info.dropped.append((aid, "?", f"unknown-image: image id {a.get('image_id')!r} is not in 'images'"))
            continue
        if "file" not in im:
            info.dropped.append((aid, "?", "image-skipped: its image record was rejected"))
            continue
        if cid not in label_of:
            info.dropped.append((aid, where, f"unknown-category: category id {a.get('category_id')!r} is not in "
                                             "'categories'"))
            continue
        box, why = _box(a.get("bbox"), im["width"], im["height"])
        if box is None:
            info.dropped.append((aid, where, why))
            continue
        area = a.get("area")
        area = float(area) if isinstance(area, (int, float)) and not isinstance(area, bool) and area > 0 else (
            box[2] * box[3])
        im["anns"].append((box, cid, label_of[cid], bool(a.get("iscrowd", 0)), area, aid))

    inputs: list[Input] = []
    fp_rows = []
    named = set()
    for ref, rec, skip in sorted(records, key=lambda r: (r[0], r[2] or "")):
        if rec is None:
            inputs.append(Input(len(inputs), ref, -1, None, skip))
            named.add(ref)  # its file is accounted for by this skip, not again as not-in-annotations
            continue
        fn = rec["file"]
        named.add(fn)
        if os.path.splitext(fn)[1].lower() not in IMAGE_EXTS:
            inputs.append(Input(len(inputs), fn, -1, None, "unsupported-extension: not an image extension"))
            continue
        if fn in irregular:
            inputs.append(Input(len(inputs), fn, -1, None, irregular[fn]))
            continue
        if fn not in listed:
            inputs.append(Input(len(inputs), fn, -1, None, "missing-file: the annotations name a file that is not "
                                                         "in SRC"))
            continue
        anns = rec["anns"]
        target = ImageTarget(rec["id"], rec["width"], rec["height"], tuple(x[0] for x in anns),
                             tuple(x[1] for x in anns), tuple(x[2] for x in anns), tuple(x[3] for x in anns),
                             tuple(x[4] for x in anns), tuple(x[5] for x in anns))
        path = loc.url(fn)
        if loc.remote:
            inputs.append(Input(len(inputs), fn, 0, Url(path, loc.size(fn) or 0), None, target))
        else:
            inputs.append(Input(len(inputs), fn, 0, File(path), None, target))
        fp_rows.append((fn, rec["width"], rec["height"], len(anns)))
    for fn in sorted((listed | set(irregular)) - named):
        if not fn.startswith("."):
            inputs.append(Input(len(inputs), fn, -1, None, irregular.get(fn) or "not-in-annotations: no image "
                                                                              "record names this file"))
    # the fingerprint covers the JSON's content too: changed annotations must not resume a run
    fp = fingerprint(fp_rows + [("json", _digest(d))] + _file_rows(loc, sorted(named & listed)))
    source = Source("coco", src, inputs, [c["name"] for c in categories], [], fp)
    return source, info


def _digest(d: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def _file_rows(loc: Location, names: list[str]) -> list[tuple]:
    if loc.remote:
        sizes = loc.sizes()
        return [(n, sizes.get(n, -1)) for n in names]
    rows = []
    for n in names:
        try:
            st = os.stat(os.path.join(local_path(loc.root), n))
            rows.append((n, st.st_size, st.st_mtime_ns))
        except OSError:
            rows.append((n, -1, -1))
    return rows


def ground_truth(source: Source, written: set, image_id) -> tuple[dict, list[dict]]:
    """The sanitised COCO ground truth of the written inputs, and the owner's map back to the source.

    The ground truth holds image ids (``image_id(input)``), sizes, boxes (clipped to the image, COCO's
    frame), areas (the source's, so AP-S/M/L mean what they mean on COCO), iscrowd and category ids; no file
    names, URLs, dates, licences or segmentation polygons (they outline people). The map (image id ->
    source id and file) is the owner's, for the state folder only.
    """
    info: CocoInfo = source.detection
    images, anns, owner = [], [], []
    for x in source.inputs:
        if x.index not in written:
            continue
        t, iid = x.target, image_id(x)
        images.append({"id": iid, "width": t.width, "height": t.height})
        owner.append({"image_id": iid, "source_id": t.coco_id, "file": x.ref})
        for b, c, crowd, area in zip(t.boxes, t.categories, t.crowd, t.areas):
            anns.append({"image_id": iid, "bbox": [round(float(v), 3) for v in b], "area": round(float(area), 3),
                         "iscrowd": int(crowd), "category_id": int(c)})
    images.sort(key=lambda r: r["id"])
    anns.sort(key=lambda a: (a["image_id"], a["category_id"], a["bbox"]))
    for i, a in enumerate(anns, 1):
        a["id"] = i
    gt = {"info": {"description": "ground truth of a himr-pipe detection OUT (sanitised: no file names, URLs "
                                  "or polygons)"},
          "images": images, "annotations": anns,
          "categories": [{"id": c["id"], "name": c["name"]} for c in info.categories]}
    return gt, sorted(owner, key=lambda r: r["image_id"])
