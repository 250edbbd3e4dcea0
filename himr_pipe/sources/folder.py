"""An ImageNet-style folder: one sub-folder per class (sorted names give labels 0..K-1), images anywhere below
it, on a local disk or an object store (one listing of everything under the prefix).

A folder that is not one is refused before any work, with the reason (:func:`_classify_folder`): the root of a
COCO dataset, a folder of labels beside the images, a folder with no image in any sub-folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .base import (CocoRootError, Input, Source, SourceError, Url, fingerprint, is_image, local_entry, shown_name,
                   version)

KIND = "folder"


def claims(top: list[str], dirs: list[str]) -> bool:
    """A folder SRC with sub-folders is a folder of classes."""
    return bool(dirs)


def open_local(src: str, top: list[str], dirs: list[str]) -> Source:
    return _folder_source(Path(src))


def open_remote(src: str, listing) -> Source:
    """A folder of classes on an object store, from the one listing of everything under SRC."""
    def row(r: str, i: dict) -> tuple:
        size = int(i.get("size") or 0)
        return r, Url(listing.url(r), size), (r, size, version(i))

    top_files = [row(r, i) for r, i in listing.files if "/" not in r]
    by_class: dict[str, list] = {c: [] for c in listing.dirs}
    for r, i in listing.files:
        if "/" in r:
            by_class[r.split("/", 1)[0]].append(row(r, i))
    return _classify_folder(src, top_files, by_class)


def _folder_source(root: Path) -> Source:
    classes = sorted(e for e in os.listdir(root) if (root / e).is_dir() and not e.startswith("."))
    if not classes:
        raise SourceError(f"SRC {str(root)!r} has no class sub-folders")

    irregular: dict[str, str] = {}  # FIFOs, sockets, devices: skipped with the reason, never opened

    def entry(rel: str, path: str) -> tuple:
        return local_entry(rel, path, irregular)

    top_files = [entry(e, str(root / e)) for e in sorted(os.listdir(root)) if not (root / e).is_dir()]
    by_class = {}
    for cls in classes:
        files = []
        for dirpath, dirnames, filenames in os.walk(root / cls):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                files.append((os.path.relpath(full, root), full))
        by_class[cls] = [entry(rel, full) for rel, full in sorted(files)]
    return _classify_folder(str(root), top_files, by_class, irregular)


def coco_root_error(root: str, by_class: dict[str, list[str]]) -> str | None:
    """Why SRC, a folder whose sub-folders are ``by_class`` (name -> relative paths of the files below it), is
    the root of a COCO-format dataset and not a folder of classes; None when it is not one.

    The usual layout (COCO itself, torchvision's ``CocoDetection(root, annFile)``, detectron2's
    ``register_coco_instances(name, {}, json_file, image_root)``) keeps the JSON files in ``annotations/``
    beside one images folder per split. Read as classes, that would be a two-class set named after the
    folders: a run that "succeeds" at something else. So it is refused, naming the images folder(s) to pass:
    a COCO images folder is one split, and its instances JSON is found beside it (``coco.find_annotations``).
    """
    ann = next((d for d in by_class if d.lower() == "annotations"), None)
    if ann is None:
        return None
    files = [r for r in by_class[ann] if not os.path.basename(r).startswith(".")]
    jsons = sorted(os.path.basename(r) for r in files if r.lower().endswith(".json"))
    if not jsons or any(is_image(r) for r in files):
        return None
    image_dirs = {d: sum(is_image(r) for r in rels) for d, rels in by_class.items() if d != ann}
    src = root.rstrip("/")
    pairs, loose = [], []
    for j in jsons:
        if j.startswith("instances_") and j[len("instances_"):-len(".json")] in image_dirs:
            pairs.append((j[len("instances_"):-len(".json")], j))
        elif j.startswith("instances_") or "_" not in j:
            loose.append(j)
    lines = [f"SRC {root!r} is the root of a COCO-format dataset ({ann}/ holds {', '.join(jsons[:6])}"
             f"{' ...' if len(jsons) > 6 else ''}), not a folder of classes: read as one it would become a "
             f"{len(by_class)}-class set named after its folders. Encrypt one images folder (one split) at a time:"]
    for split, j in pairs:
        name = re.sub(r"\d+$", "", split) or split  # train2017 -> the split "train", as timm's --train-split
        lines.append(f"  himr-pipe encrypt-shards {src}/{split} OUT_{name} --split {name}   "
                     f"({image_dirs[split]} images; {ann}/{j} is found beside it)")
    if not pairs:
        dirs = [d for d, n in sorted(image_dirs.items()) if n] or ["IMAGES"]
        target = loose[0] if loose else "instances_<split>.json"
        for d in dirs[:3]:
            lines.append(f"  himr-pipe encrypt-shards {src}/{d} OUT --annotations {src}/{ann}/{target}")
        if not loose:
            lines.append(f"  ({ann}/ holds no instances_*.json: detection needs the instances (boxes) file)")
    return "\n".join(lines)


def _classify_folder(root: str, top_files: list, by_class: dict[str, list], irregular: dict | None = None) -> Source:
    """The inputs of an ImageNet-style folder from its listing: (relative path, loc, fingerprint row) per file,
    files directly under SRC, and the files of each class folder in sorted order.

    Refused before any work (:class:`SourceError`, with the reason): a COCO dataset's root
    (:func:`coco_root_error`); a sub-folder that holds files of which none is an image (``labels/`` of .txt
    files beside ``images/``: not a class, and every file in it would be "skipped"); and a folder with no
    image in any sub-folder. A class folder with no files at all stays an empty class (the manifest's
    ``empty_classes``). ``irregular``: relative path -> why it is no regular file (a FIFO), skipped with that."""
    irregular = irregular or {}
    names = {c: [r for r, _, _ in rows] for c, rows in by_class.items()}
    coco = coco_root_error(root, names)
    if coco:
        raise CocoRootError(coco)
    not_classes = {c: rels for c, rels in names.items() if rels and not any(is_image(r) for r in rels)}
    if not_classes and len(not_classes) == len([c for c in names if names[c]]):
        exts = sorted({os.path.splitext(r)[1].lower() or "(none)" for rels in names.values() for r in rels})
        raise SourceError(f"SRC {root!r} holds no image in any sub-folder (files: {', '.join(exts[:8])}): it is "
                          "not an ImageNet-style folder (one sub-folder of images per class), nor .tar shards"
                          + ("; for parquet files, name one split's: SRC/<folder>/train-*.parquet" if ".parquet" in exts
                             else ""))
    if not_classes:
        desc = "; ".join(f"{c}/ ({len(r)} files: "
                         f"{', '.join(sorted({os.path.splitext(x)[1].lower() or '(none)' for x in r})[:4])})"
                         for c, r in sorted(not_classes.items()))
        raise SourceError(f"SRC {root!r}: sub-folder(s) with files but no image in them: {desc}. Every sub-folder "
                          "of SRC is a class of images; a folder of labels or metadata beside the images means "
                          "SRC is not an ImageNet-style folder: pass the folder of classes (or, for COCO, an "
                          "images folder with --annotations)")
    classes = sorted(by_class)
    inputs: list[Input] = []
    fp_rows = []
    empty = []

    def add(rel: str, loc: tuple, fp: tuple, label: int, skip: str | None):
        fp_rows.append(fp)
        inputs.append(Input(len(inputs), rel, label, loc, skip))

    # Files directly under SRC belong to no class: accounted for, not guessed.
    for rel, loc, fp in top_files:
        add(rel, loc, fp, -1, "not-in-a-class-folder: files must sit inside a class sub-folder")
    for label, cls in enumerate(classes):
        n_images = 0
        for rel, loc, fp in by_class[cls]:
            ext = os.path.splitext(rel)[1].lower()
            if rel in irregular:
                add(rel, loc, fp, label, irregular[rel])
            elif is_image(rel):
                n_images += 1
                add(rel, loc, fp, label, None)
            else:
                add(rel, loc, fp, label, f"unsupported-extension: {ext or '(none)'} is not an image extension")
        if n_images == 0:
            empty.append(cls)
    # labels follow the sorted names as listed; a name that is not UTF-8 is shown with its bytes escaped
    return Source(KIND, root, inputs, [shown_name(c) for c in classes], [shown_name(c) for c in empty],
                  fingerprint(fp_rows))


