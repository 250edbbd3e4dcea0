"""Sources: enumerate the inputs of a dataset in a stable order, and read them a shard at a time.

A source turns SRC into a :class:`Source`, a list of :class:`Input` records. The position of an input in that
list is its sample id: the order is a pure function of the source's contents (sorted names, rows in file order),
which is what makes a run deterministic and resumable. Inputs the source itself must reject (a stray non-image
file, an unsafe tar member name, a sample without a label) are listed too, with ``skip`` set, so that every input
is accounted for. A worker reads a shard's inputs through one :class:`ShardReader` (:mod:`.base`).

SRC may be a local path or an fsspec URL (``s3://bucket/imagenet/``, ``gs://``, ``memory://``; see
:mod:`..storage`); the listing, the order and the sample ids are the same for the same files wherever they live.

The kinds, one module each, registered in :data:`SOURCES` in the order :func:`open_source` asks them whether a
folder SRC is theirs (``claims``); SRC that names files (one file, a brace pattern, a glob) goes to the kind of
their suffix (``SUFFIX``):

* :mod:`.webdataset`: ``.tar`` shards (a file, a folder of them, a brace pattern); samples need a ``.cls``;
* :mod:`.parquet`: the Hugging Face datasets layout (a ``.parquet`` file, a folder of them, a glob);
* :mod:`.flat`: a folder of images labelled by ``labels.csv`` beside them, or a folder of images with no
  sub-folder and no labels (unlabelled samples);
* :mod:`.folder`: an ImageNet-style folder, one sub-folder per class.

A COCO images folder is listed against its annotations by :mod:`himr_pipe.coco` (the detection task opens it, as
the annotation records decide its inputs); its inputs are plain :class:`File` / :class:`Url` locations.
A new kind is one module with ``KIND``, ``claims``, ``open_local``/``open_remote`` (a folder SRC) and
``SUFFIX``/``open_files`` (named files), its location record and reader, and one line in :data:`SOURCES`.
"""

from __future__ import annotations

import glob as _glob
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import braceexpand

from ..specials import local_not_regular
from ..storage import bounded, in_process_only, is_url, local_path, open_url, retrying, url_fs
from . import flat, folder, parquet, webdataset
from .base import (DEFAULT_MAX_BYTES, IMAGE_EXTS, LABEL_LIMIT, CocoRootError, File, Input, InputError, ShardReader,
                   Source, SourceError, Url, fingerprint, read_input, safe_member_name)
from .folder import coco_root_error
from .webdataset import WDS_IMAGE_EXTS

# kind -> its module, in the order a folder SRC is offered to them (flat's labels.csv before folder's classes)
SOURCES = {m.KIND: m for m in (webdataset, parquet, flat, folder)}
# the kinds SRC can name files of, by suffix
_BY_SUFFIX = {m.SUFFIX: m for m in SOURCES.values() if getattr(m, "SUFFIX", None)}


@dataclass
class Listing:
    """A folder SRC on an object store, from one listing of everything under it (hidden folders left out)."""

    root: str                 # SRC without its trailing slash
    base: str                 # the path within the store
    scheme: str
    files: list               # (relative path, info), sorted
    top: list                 # names of the files directly under SRC
    dirs: list                # its sub-folders

    def url(self, rel: str) -> str:
        return f"{self.root}/{rel}" if "://" in self.root else f"{self.scheme}://{self.base}/{rel}"


def open_source(src: str) -> Source:
    """Pick the source kind for SRC and enumerate it."""
    if is_url(src):
        source = _open_remote(src)
        source.in_process = in_process_only(src)
        return source
    src = local_path(src)
    if any(ch in src for ch in "{}*?[") and not os.path.exists(src):
        return _open_files(src, _expand(src))
    p = Path(src)
    if not p.exists():
        raise SourceError(f"SRC {src!r} does not exist")
    if p.is_file():
        return _open_files(src, [str(p)], single=True)
    if not p.is_dir():  # a FIFO, socket or device: never opened (a FIFO's read could block forever)
        why = local_not_regular(src) or "not-a-regular-file"
        raise SourceError(f"SRC {src!r} is neither a folder nor a regular file ({why.split(': ', 1)[-1]})")
    entries = sorted(os.listdir(p))
    top = [e for e in entries if not (p / e).is_dir()]
    dirs = [e for e in entries if (p / e).is_dir() and not e.startswith(".")]
    for kind in SOURCES.values():
        if kind.claims(top, dirs):
            return kind.open_local(src, top, dirs)
    raise SourceError(f"SRC {src!r} holds neither class sub-folders, images, .tar shards nor .parquet files")


def _expand(src: str) -> list[str]:
    """The files a pattern names, sorted: a brace pattern (``{000000..000009}``) or a glob (``*``, ``?``, ``[``)."""
    if any(ch in src for ch in "{}"):
        return sorted(braceexpand.braceexpand(src))
    if is_url(src):
        fs, p = url_fs(src)
        scheme = src.split("://", 1)[0]
        return sorted(f"{scheme}://{x}" for x in retrying("listing SRC", src, lambda: fs.glob(p, **bounded(fs))))
    return sorted(_glob.glob(src))


def _open_files(src: str, files: list[str], single: bool = False) -> Source:
    """SRC names files: the kind whose suffix they all have, else WebDataset (brace patterns of tars name any
    suffix); one file named as SRC must then be a tar."""
    if not files:
        raise SourceError(f"SRC {src!r} matches no files")
    kind = next((k for k in _BY_SUFFIX.values() if all(f.endswith(k.SUFFIX) for f in files)), webdataset)
    if kind is webdataset and single:
        with open_url(files[0], 1 << 20) as f:
            if not tarfile.is_tarfile(f):
                raise SourceError(f"SRC {src!r} is a file but not a tar archive (nor a .parquet file)")
    return kind.open_files(src, files)


def _open_remote(src: str) -> Source:
    """SRC on an object store: one listing of everything under the prefix, then the same rules as locally."""
    if any(ch in src for ch in "{}*?["):
        return _open_files(src, _expand(src))
    root = src.rstrip("/")
    fs, base = url_fs(root)
    base = base.rstrip("/")
    fs.invalidate_cache()
    try:
        if retrying("looking at SRC", root, lambda: fs.isfile(base, **bounded(fs))):
            return _open_files(src, [root], single=True)
        found = retrying("listing SRC", root, lambda: fs.find(base, withdirs=False, detail=True, **bounded(fs)))
    except FileNotFoundError:
        found = {}
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
    listing = Listing(root, base, root.split("://", 1)[0], files, [r for r, _ in files if "/" not in r],
                      sorted({r.split("/", 1)[0] for r, _ in files if "/" in r}))
    for kind in SOURCES.values():
        if kind.claims(listing.top, listing.dirs):
            return kind.open_remote(src, listing)
    raise SourceError(f"SRC {src!r} holds neither class sub-folders, images, .tar shards nor .parquet files")


__all__ = ["DEFAULT_MAX_BYTES", "IMAGE_EXTS", "LABEL_LIMIT", "SOURCES", "WDS_IMAGE_EXTS", "CocoRootError", "File",
           "Input", "InputError", "Listing", "ShardReader", "Source", "SourceError", "Url", "coco_root_error",
           "fingerprint", "open_source", "read_input", "safe_member_name"]
