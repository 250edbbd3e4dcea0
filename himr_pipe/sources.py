"""Sources: enumerate the inputs of a dataset in a stable order.

A source turns SRC into a list of :class:`Input` records. The position of an
input in that list is its sample id: the order is a pure function of the
source's contents (sorted names), which is what makes a run deterministic and
resumable. Inputs the source itself must reject (a stray non-image file, an
unsafe tar member name, a sample without a label) are listed too, with
``skip`` set, so that every input is accounted for.

Reading the bytes of an input is :func:`read_input`, a plain function of the
picklable ``loc`` tuple, so worker processes can read without the source.

SRC may be a local path or an fsspec URL (``s3://bucket/imagenet/``, ``gs://``,
``memory://``; see :mod:`.storage`); the listing, the order and the sample ids
are the same for the same files wherever they live.

Supported SRC:

* an ImageNet-style folder: one sub-folder per class (sorted names give labels
  0..K-1), images anywhere below it;
* WebDataset shards: one ``.tar``, a folder of ``.tar`` files, or a brace
  pattern such as ``train-{000000..000009}.tar``; each sample needs an image
  member and a ``.cls`` label.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand

from .storage import in_process_only, is_url, local_path, bounded, open_url, retrying, url_fs

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pnm", ".tif", ".tiff", ".webp")
# WebDataset member extensions that hold the image, in order of preference.
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "pnm", "tif", "tiff")

DEFAULT_MAX_BYTES = 256 * 1024 * 1024


class SourceError(ValueError):
    """SRC can't be used at all (missing, empty, not a dataset)."""


class CocoRootError(SourceError):
    """SRC is the root of a COCO-format dataset (annotations/ beside the images folders): see
    :func:`coco_root_error`."""


class InputError(Exception):
    """One input can't be read; ``reason`` is a short, path-free category + detail."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Input:
    index: int                 # sample id: position in the stable source order
    ref: str                   # owner-side name; never written to OUT unless asked
    label: int                 # class index, -1 when the input is rejected before a label is known
    loc: tuple = ()            # ("file", path), ("url", url, size) or ("tar", path-or-url, offset, size)
    skip: str | None = None    # reason when the source rejects the input itself
    target: object = None      # detection: its annotations (coco.ImageTarget)


@dataclass
class Source:
    kind: str                          # "folder" | "webdataset" | "coco"
    root: str
    inputs: list[Input]
    classes: list[str] | None = None
    empty_classes: list[str] = field(default_factory=list)
    fingerprint: str = ""              # hash of names and sizes: detects a changed SRC on resume
    in_process: bool = False           # memory://: readable in this process only
    detection: object = None           # a COCO source: coco.CocoInfo (categories, dropped annotations)


def read_input(loc: tuple, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Read the encoded bytes of one input. Raises InputError with a reason.

    On an object store, a missing or forbidden object is this input's problem (skipped with a reason);
    any other error (the network, the service) is the run's: it propagates, the shard fails, and a
    rerun resumes, so an outage never turns into a run of skipped inputs."""
    try:
        if loc[0] == "file":
            path = loc[1]
            size = os.stat(path).st_size
            if size > max_bytes:
                raise InputError(f"file-too-large: {size} bytes exceeds the limit of {max_bytes}")
            with open(path, "rb") as f:
                return f.read()
        if loc[0] == "url":
            _, url, size = loc
            if size > max_bytes:
                raise InputError(f"file-too-large: {size} bytes exceeds the limit of {max_bytes}")
            fs, p = url_fs(url)
            data = retrying(f"reading {p.rsplit('/', 1)[-1]}", url, lambda: fs.cat_file(p, **bounded(fs, size)))
            if len(data) > max_bytes:
                raise InputError(f"file-too-large: {len(data)} bytes exceeds the limit of {max_bytes}")
            return data
        if loc[0] == "tar":
            _, path, offset, size = loc
            if size > max_bytes:
                raise InputError(f"file-too-large: {size} bytes exceeds the limit of {max_bytes}")
            data = _read_range(path, offset, size)
            if len(data) != size:
                raise InputError(f"unreadable: tar member cut short ({len(data)} of {size} bytes)")
            return data
    except InputError:
        raise
    except IsADirectoryError:
        raise InputError("unreadable: is a directory") from None
    except FileNotFoundError:
        raise InputError("unreadable: file not found (dangling link or removed during the run)") from None
    except PermissionError:
        raise InputError("unreadable: permission denied") from None
    except OSError as e:
        if loc[0] == "url" or (loc[0] == "tar" and is_url(loc[1])):
            raise
        raise InputError(f"unreadable: {e.strerror or type(e).__name__}") from None
    raise ValueError(f"unknown input location {loc!r}")


def _read_range(path: str, offset: int, size: int) -> bytes:
    if is_url(path):
        fs, p = url_fs(path)
        return retrying(f"reading {p.rsplit('/', 1)[-1]}", path,
                        lambda: fs.cat_file(p, start=offset, end=offset + size, **bounded(fs, size)))
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _file_row(path: str) -> tuple | None:
    """(path, size, version) of a file, or None when it is not one: the fingerprint's row."""
    if is_url(path):
        fs, p = url_fs(path)
        try:
            info = retrying(f"looking at {p.rsplit('/', 1)[-1]}", path, lambda: fs.info(p, **bounded(fs)))
        except FileNotFoundError:
            return None
        if info.get("type") != "file":
            return None
        return (path, int(info.get("size") or 0), _version(info))
    if not os.path.isfile(path):
        return None
    st = os.stat(path)
    return (path, st.st_size, st.st_mtime_ns)


def _version(info: dict) -> str:
    """What changes when an object is rewritten: its ETag, else its modification time."""
    for k in ("ETag", "etag", "md5Hash", "generation", "LastModified", "mtime", "updated", "created"):
        if info.get(k) is not None:
            return str(info[k])
    return ""


def open_source(src: str) -> Source:
    """Pick the source type for SRC and enumerate it."""
    if is_url(src):
        source = _open_remote(src)
        source.in_process = in_process_only(src)
        return source
    src = local_path(src)
    if any(ch in src for ch in "{}") and not os.path.exists(src):
        return _webdataset_source(src, sorted(braceexpand.braceexpand(src)))
    p = Path(src)
    if not p.exists():
        raise SourceError(f"SRC {src!r} does not exist")
    if p.is_file():
        if not tarfile.is_tarfile(p):
            raise SourceError(f"SRC {src!r} is a file but not a tar archive")
        return _webdataset_source(src, [str(p)])
    entries = sorted(os.listdir(p))
    tars = [str(p / e) for e in entries if e.endswith(".tar") and (p / e).is_file()]
    dirs = [e for e in entries if (p / e).is_dir() and not e.startswith(".")]
    if tars and not dirs:
        return _webdataset_source(src, tars)
    if dirs:
        return _folder_source(p)
    raise SourceError(f"SRC {src!r} holds neither class sub-folders nor .tar shards")


def _open_remote(src: str) -> Source:
    """SRC on an object store: one listing of everything under the prefix, then the same rules as locally."""
    if any(ch in src for ch in "{}"):
        return _webdataset_source(src, sorted(braceexpand.braceexpand(src)))
    root = src.rstrip("/")
    fs, base = url_fs(root)
    base = base.rstrip("/")
    fs.invalidate_cache()
    try:
        if retrying("looking at SRC", root, lambda: fs.isfile(base, **bounded(fs))):
            with open_url(root, 1 << 20) as f:
                if not tarfile.is_tarfile(f):
                    raise SourceError(f"SRC {src!r} is a file but not a tar archive")
            return _webdataset_source(src, [root])
        found = retrying("listing SRC", root, lambda: fs.find(base, withdirs=False, detail=True, **bounded(fs)))
    except FileNotFoundError:
        found = {}
    scheme = root.split("://", 1)[0]
    files = []  # (relative path, info), hidden folders left out as locally
    for name, info in found.items():
        rel = name[len(base):].lstrip("/") if name.startswith(base) else name
        parts = rel.split("/")
        if not rel or any(x.startswith(".") for x in parts[:-1]):
            continue
        files.append((rel, info))
    if not files:
        raise SourceError(f"SRC {src!r} does not exist or holds no files")
    files.sort()
    top = [r for r, _ in files if "/" not in r]
    dirs = sorted({r.split("/", 1)[0] for r, _ in files if "/" in r})
    tars = [f"{root}/{r}" for r in top if r.endswith(".tar")]
    if tars and not dirs:
        return _webdataset_source(src, tars)
    if not dirs:
        raise SourceError(f"SRC {src!r} holds neither class sub-folders nor .tar shards")

    def url(rel: str) -> str:
        return f"{root}/{rel}" if "://" in root else f"{scheme}://{base}/{rel}"

    top_files = [(r, ("url", url(r), int(i.get("size") or 0)), (r, int(i.get("size") or 0), _version(i)))
                 for r, i in files if "/" not in r]
    by_class: dict[str, list] = {c: [] for c in dirs}
    for r, i in files:
        if "/" in r:
            by_class[r.split("/", 1)[0]].append((r, ("url", url(r), int(i.get("size") or 0)),
                                                  (r, int(i.get("size") or 0), _version(i))))
    return _classify_folder(src, top_files, by_class)


def _fingerprint(rows) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(repr(r).encode())
        h.update(b"\0")
    return h.hexdigest()


def _folder_source(root: Path) -> Source:
    classes = sorted(e for e in os.listdir(root) if (root / e).is_dir() and not e.startswith("."))
    if not classes:
        raise SourceError(f"SRC {str(root)!r} has no class sub-folders")

    def entry(rel: str, path: str) -> tuple:
        try:
            st = os.stat(path)
            fp = (rel, st.st_size, st.st_mtime_ns)
        except OSError:
            fp = (rel, -1, -1)
        return rel, ("file", path), fp

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
    return _classify_folder(str(root), top_files, by_class)


def _is_image(rel: str) -> bool:
    return os.path.splitext(rel)[1].lower() in IMAGE_EXTS


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
    if not jsons or any(_is_image(r) for r in files):
        return None
    image_dirs = {d: sum(_is_image(r) for r in rels) for d, rels in by_class.items() if d != ann}
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


def _classify_folder(root: str, top_files: list, by_class: dict[str, list]) -> Source:
    """The inputs of an ImageNet-style folder from its listing: (relative path, loc, fingerprint row) per file,
    files directly under SRC, and the files of each class folder in sorted order.

    Refused before any work (:class:`SourceError`, with the reason): a COCO dataset's root
    (:func:`coco_root_error`); a sub-folder that holds files of which none is an image (``labels/`` of .txt
    files beside ``images/``: not a class, and every file in it would be "skipped"); and a folder with no
    image in any sub-folder. A class folder with no files at all stays an empty class (the manifest's
    ``empty_classes``)."""
    names = {c: [r for r, _, _ in rows] for c, rows in by_class.items()}
    coco = coco_root_error(root, names)
    if coco:
        raise CocoRootError(coco)
    not_classes = {c: rels for c, rels in names.items() if rels and not any(_is_image(r) for r in rels)}
    if not_classes and len(not_classes) == len([c for c in names if names[c]]):
        exts = sorted({os.path.splitext(r)[1].lower() or "(none)" for rels in names.values() for r in rels})
        raise SourceError(f"SRC {root!r} holds no image in any sub-folder (files: {', '.join(exts[:8])}): it is "
                          "not an ImageNet-style folder (one sub-folder of images per class), nor .tar shards")
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
            if _is_image(rel):
                n_images += 1
                add(rel, loc, fp, label, None)
            else:
                add(rel, loc, fp, label, f"unsupported-extension: {ext or '(none)'} is not an image extension")
        if n_images == 0:
            empty.append(cls)
    return Source("folder", root, inputs, classes, empty, _fingerprint(fp_rows))


def _safe_member_name(name: str) -> bool:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return False
    parts = name.replace("\\", "/").split("/")
    return ".." not in parts


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the basename."""
    d, b = os.path.split(name)
    if "." not in b:
        return name, ""
    stem, ext = b.split(".", 1)
    return (os.path.join(d, stem) if d else stem), ext.lower()


# The largest class label a WebDataset SRC's ``.cls`` may hold, plus one (ImageNet-21k has 21,841 classes).
LABEL_LIMIT = 1 << 20


def _webdataset_source(src: str, tars: list[str]) -> Source:
    if not tars:
        raise SourceError(f"SRC {src!r} names no .tar shards")
    rows = [_file_row(t) for t in tars]
    missing = [t for t, r in zip(tars, rows) if r is None]
    if missing:
        raise SourceError(f"{len(missing)} shard(s) of SRC do not exist, e.g. {missing[0]!r}")
    inputs: list[Input] = []
    fp_rows = []

    def emit(tar: str, key: str, members: list[tarfile.TarInfo], extra_skips: list[tuple[str, str]]):
        rel = f"{os.path.basename(tar)}::{key}"
        for ref, reason in extra_skips:
            inputs.append(Input(len(inputs), ref, -1, (), reason))
        if not members:
            return
        by_ext = {}
        for m in members:
            _, ext = _split_key(m.name)
            if ext in by_ext:
                inputs.append(Input(len(inputs), f"{os.path.basename(tar)}::{m.name}", -1, (),
                                    f"duplicate-name: a second '{ext}' member for sample key {key!r}"))
                continue
            by_ext[ext] = m
        img_ext = next((e for e in WDS_IMAGE_EXTS if e in by_ext), None)
        if img_ext is None:
            inputs.append(Input(len(inputs), rel, -1, (), "no-image: the sample has no image member"))
            return
        m = by_ext[img_ext]
        loc = ("tar", tar, m.offset_data, m.size)
        fp_rows.append((rel, m.size))
        cls = by_ext.get("cls")
        if cls is None:
            inputs.append(Input(len(inputs), rel, -1, loc, "no-label: the sample has no .cls member"))
            return
        try:
            label = int(_read_range(tar, cls.offset_data, min(cls.size, 64)).decode("utf-8").strip())
            if label < 0:
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            inputs.append(Input(len(inputs), rel, -1, loc, "bad-label: .cls is not a non-negative integer"))
            return
        if label >= LABEL_LIMIT:  # a classifier's head has one row per label: 1e11 would ask for terabytes
            inputs.append(Input(len(inputs), rel, -1, loc, f"bad-label: .cls {label} is out of range (labels are "
                                f"0..{LABEL_LIMIT - 1})"))
            return
        if key in seen:  # WebDataset groups by adjacent keys; a key met again later would be a second sample
            inputs.append(Input(len(inputs), rel, -1, loc, f"duplicate-key: sample key {key!r} appears again, "
                                "not next to its first members"))
            return
        seen.add(key)
        inputs.append(Input(len(inputs), rel, label, loc, None))

    for tar, row in zip(tars, rows):
        fp_rows.append(row)
        seen: set[str] = set()  # this shard's written keys
        cur_key, cur_members, cur_skips = None, [], []
        try:
            with open_url(tar, 1 << 20) as f, tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf:
                    if m.isdir():
                        continue
                    name = m.name
                    if not _safe_member_name(name):
                        cur_skips.append((f"{os.path.basename(tar)}::{name}",
                                          "unsafe-member-name: absolute path or '..' in a tar member"))
                        continue
                    if not m.isfile():
                        cur_skips.append((f"{os.path.basename(tar)}::{name}",
                                          "not-a-regular-file: link or device member in a tar"))
                        continue
                    key, _ = _split_key(name)
                    if key != cur_key:
                        if cur_key is not None or cur_skips:
                            emit(tar, cur_key or "", cur_members, cur_skips)
                        cur_key, cur_members, cur_skips = key, [], []
                    cur_members.append(m)
        except (tarfile.TarError, OSError) as e:
            if cur_key is not None or cur_skips:
                emit(tar, cur_key or "", cur_members, cur_skips)
                cur_key, cur_members, cur_skips = None, [], []
            inputs.append(Input(len(inputs), f"{os.path.basename(tar)}::(rest)", -1, (),
                                f"bad-tar: the shard is corrupt or truncated after this point ({type(e).__name__})"))
        if cur_key is not None or cur_skips:
            emit(tar, cur_key or "", cur_members, cur_skips)
    return Source("webdataset", src, inputs, None, [], _fingerprint(fp_rows))
