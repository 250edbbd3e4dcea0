"""What every source shares: the records (:class:`Input`, :class:`Source`), the errors, where a file's bytes are
(:class:`File`, :class:`Url`), and the shard-level reader (:class:`ShardReader`, :func:`read_input`).

An input's ``loc`` is a small picklable record owned by the module of its source kind (a file here, a tar member
in :mod:`.webdataset`, a parquet row in :mod:`.parquet`); its class names the reader of its kind (``reader``). A
worker reads a shard's inputs through one :class:`ShardReader`, which makes one reader per kind for the whole
shard: a tar or a parquet file is opened once per shard, not once per member.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import InputError  # one input skipped with its reason (re-exported: himr_pipe.sources.InputError)
from ..specials import NotRegularFile, not_regular, open_regular
from ..storage import bounded, is_url, retrying, url_fs
from ..errors import Refused

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pnm", ".tif", ".tiff", ".webp")
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# The largest class label a source may give, plus one (ImageNet-21k has 21,841 classes).
LABEL_LIMIT = 1 << 20


class SourceError(Refused, ValueError):
    """SRC can't be used at all (missing, empty, not a dataset)."""


class CocoRootError(SourceError):
    """SRC is the root of a COCO-format dataset (annotations/ beside the images folders): see
    :func:`.folder.coco_root_error`."""


@dataclass(frozen=True)
class Input:
    index: int                 # sample id: position in the stable source order
    ref: str                   # owner-side name; never written to OUT unless asked
    label: int | None          # class index; -1 when rejected before a label is known; None: an unlabelled source
    loc: object = None         # where its bytes are: a File, Url, webdataset.Member or parquet.Row (None: nowhere)
    skip: str | None = None    # reason when the source rejects the input itself
    target: object = None      # detection: its annotations (coco.ImageTarget)


@dataclass
class Source:
    kind: str                          # a name of sources.SOURCES, or "coco"
    root: str
    inputs: list[Input]
    classes: list[str] | None = None
    empty_classes: list[str] = field(default_factory=list)
    fingerprint: str = ""              # hash of names and sizes: detects a changed SRC on resume
    in_process: bool = False           # memory://: readable in this process only
    detection: object = None           # a COCO source: coco.CocoInfo (categories, dropped annotations)
    labelled: bool = True              # False: no input has a label (samples without .cls; train refuses them)


def too_large(size: int, max_bytes: int) -> InputError:
    return InputError(f"file-too-large: {size} bytes exceeds the limit of {max_bytes}")


class _FileReader:
    """Reads :class:`File` and :class:`Url` inputs: one whole file (or object) each, nothing to keep open."""

    def __init__(self, locs: list, max_bytes: int):
        self.max_bytes = max_bytes

    def read(self, loc) -> bytes:
        if isinstance(loc, File):
            with open_regular(loc.path) as f:  # a FIFO, socket or device is never read (it could block forever)
                size = os.fstat(f.fileno()).st_size
                if size > self.max_bytes:
                    raise too_large(size, self.max_bytes)
                return f.read()
        if loc.size > self.max_bytes:
            raise too_large(loc.size, self.max_bytes)
        fs, p = url_fs(loc.url)
        data = retrying(f"reading {p.rsplit('/', 1)[-1]}", loc.url, lambda: fs.cat_file(p, **bounded(fs, loc.size)))
        if len(data) > self.max_bytes:
            raise too_large(len(data), self.max_bytes)
        return data

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class File:
    """A local file."""

    path: str
    reader: ClassVar[type] = _FileReader
    remote: ClassVar[bool] = False


@dataclass(frozen=True)
class Url:
    """An object on a store (fsspec URL) of a listed size."""

    url: str
    size: int
    reader: ClassVar[type] = _FileReader
    remote: ClassVar[bool] = True


class ShardReader:
    """The bytes of a shard's inputs, read in one pass: one reader per kind of location for the whole shard
    (given every location up front, so a kind can plan: parquet reads each row group it needs once).

    :meth:`read` raises :class:`InputError` with a reason for an input that cannot be read. On an object store, a
    missing or forbidden object is that input's problem; any other error (the network, the service) is the run's:
    it propagates, the shard fails, and a rerun resumes, so an outage never turns into a run of skipped inputs."""

    def __init__(self, locs, max_bytes: int = DEFAULT_MAX_BYTES):
        kinds: dict[type, list] = {}
        for loc in locs:
            if loc is not None:
                kinds.setdefault(type(loc).reader, []).append(loc)
        self._readers = {kind: kind(ls, max_bytes) for kind, ls in kinds.items()}

    def read(self, loc) -> bytes:
        try:
            return self._readers[type(loc).reader].read(loc)
        except InputError:
            raise
        except NotRegularFile as e:  # a FIFO, socket or device where the listing saw a file: never read
            raise InputError(e.reason) from None
        except IsADirectoryError:
            raise InputError("unreadable: is a directory") from None
        except FileNotFoundError:
            raise InputError("unreadable: file not found (dangling link or removed during the run)") from None
        except PermissionError:
            raise InputError("unreadable: permission denied") from None
        except OSError as e:
            if loc.remote:
                raise
            raise InputError(f"unreadable: {e.strerror or type(e).__name__}") from None

    def close(self) -> None:
        for r in self._readers.values():
            r.close()

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_input(loc, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The encoded bytes of one input (the audit's and predict's reads; a shard's go through one ShardReader)."""
    with ShardReader([loc], max_bytes) as r:
        return r.read(loc)


def file_row(path: str) -> tuple | None:
    """(path, size, version) of a file, or None when it is not one: the fingerprint's row."""
    if is_url(path):
        fs, p = url_fs(path)
        try:
            info = retrying(f"looking at {p.rsplit('/', 1)[-1]}", path, lambda: fs.info(p, **bounded(fs)))
        except FileNotFoundError:
            return None
        if info.get("type") != "file":
            return None
        return (path, int(info.get("size") or 0), version(info))
    if not os.path.isfile(path):
        return None
    st = os.stat(path)
    return (path, st.st_size, st.st_mtime_ns)


def local_entry(rel: str, path: str, irregular: dict) -> tuple:
    """(relative path, File, fingerprint row) of a listed local file; a FIFO, socket or device goes into
    ``irregular`` (rel -> reason), to be skipped with it and never opened."""
    try:
        st = os.stat(path)
        fp = (rel, st.st_size, st.st_mtime_ns)
    except OSError:  # a dangling link, a link loop: its reader says why
        return rel, File(path), (rel, -1, -1)
    why = not_regular(st.st_mode)
    if why:
        irregular[rel] = why
    return rel, File(path), fp


def shown_name(name: str) -> str:
    """A file name as valid UTF-8 text: a name that is not UTF-8 on disk (Python keeps its bytes as lone
    surrogates, ``"\udcffclass"``, which no UTF-8 JSON reader takes) shows those bytes escaped, ``"\\xffclass"``;
    a valid name is itself. A class folder's name in the manifest's ``classes`` is this."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def version(info: dict) -> str:
    """What changes when an object is rewritten: its ETag, else its modification time."""
    for k in ("ETag", "etag", "md5Hash", "generation", "LastModified", "mtime", "updated", "created"):
        if info.get(k) is not None:
            return str(info[k])
    return ""


def fingerprint(rows) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(repr(r).encode())
        h.update(b"\0")
    return h.hexdigest()


def is_image(rel: str) -> bool:
    return os.path.splitext(rel)[1].lower() in IMAGE_EXTS


def safe_member_name(name: str) -> bool:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return False
    parts = name.replace("\\", "/").split("/")
    return ".." not in parts


def label_map(values) -> tuple[list[str] | None, dict]:
    """Class names and value -> label for the labels a table gives (a CSV's, a parquet column without class
    names): non-negative integers are the labels themselves (no names, as WebDataset's .cls); anything else
    names a class, labels 0..K-1 in sorted order of the names."""
    distinct = {v for v in values if v is not None}
    ints = {v: _as_int(v) for v in distinct}
    if all(i is not None and i >= 0 for i in ints.values()):
        return None, ints
    names = sorted(str(v) for v in distinct)
    index = {n: i for i, n in enumerate(names)}
    return names, {v: index[str(v)] for v in distinct}


def _as_int(v) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    try:
        return int(str(v).strip())
    except ValueError:
        return None
