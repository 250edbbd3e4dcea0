"""Parquet in the Hugging Face datasets layout: SRC is a ``.parquet`` file, a folder of them
(``data/train-00000-of-00003.parquet``...), or a glob (``ds/data/train-*.parquet``).

Each row is an input, in file order then row order (its sample id is stable). The image column is ``image`` (else
the first column of ``{bytes, path}`` structs or of binary); the label column is ``label`` (else the dataset's
one ``ClassLabel`` feature); with neither, the rows are unlabelled. Class names come from the dataset's features
(the ``huggingface`` key of the schema's metadata: ``{"info": {"features": {"label": {"_type": "ClassLabel",
"names": [...]}}}}``) where present, else from the labels themselves (:func:`.base.label_map`).

A row with a null label, or a label that is no class, is skipped by the listing with its reason; a row with a null
image by its shard's reader. The listing reads the label column only; a shard's reader reads each row group it
needs once (the image column only) and keeps only its own rows' bytes. Shuffled plans spread a row group's rows
over many shards, each of which reads that row group: ``--no-shuffle`` reads each about once.

pyarrow is an optional extra: ``pip install 'himr-pipe[parquet]'``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import ClassVar

from ..specials import local_not_regular
from ..storage import is_url, open_url
from .base import (LABEL_LIMIT, Input, InputError, Source, SourceError, file_row, fingerprint, label_map,
                   too_large)

KIND = "parquet"
SUFFIX = ".parquet"
IMAGE_COLUMN, LABEL_COLUMN = "image", "label"


def claims(top: list[str], dirs: list[str]) -> bool:
    """A folder SRC of .parquet files and no sub-folders."""
    return not dirs and any(n.endswith(SUFFIX) for n in top)


def open_local(src: str, top: list[str], dirs: list[str]) -> Source:
    return open_files(src, [os.path.join(src, e) for e in top if e.endswith(SUFFIX)])


def open_remote(src: str, listing) -> Source:
    return open_files(src, [f"{listing.root}/{r}" for r in listing.top if r.endswith(SUFFIX)])


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceError("SRC is parquet: reading it needs pyarrow: pip install 'himr-pipe[parquet]'") from None
    return pq


def _open(path: str):
    """A parquet file (a local path or a URL) and its handle, opened once per listing and per shard."""
    f = open_url(path)
    try:
        return _pq().ParquetFile(f), f
    except BaseException:
        f.close()
        raise


def _columns(pf, path: str) -> tuple[str, str | None, list[str] | None]:
    """(image column, label column or None, class names or None) of a file, from its schema and features."""
    import pyarrow as pa

    schema = pf.schema_arrow
    meta = (schema.metadata or {}).get(b"huggingface")
    features = {}
    if meta:
        try:
            features = json.loads(meta).get("info", {}).get("features", {}) or {}
        except ValueError:
            features = {}

    def is_image(t) -> bool:
        return pa.types.is_binary(t) or pa.types.is_large_binary(t) or (
            pa.types.is_struct(t) and t.get_field_index("bytes") >= 0)

    names = schema.names
    image = IMAGE_COLUMN if IMAGE_COLUMN in names and is_image(schema.field(IMAGE_COLUMN).type) else next(
        (n for n in names if is_image(schema.field(n).type)), None)
    if image is None:
        raise SourceError(f"{os.path.basename(path)}: no image column (binary, or structs of bytes and path)")
    class_labels = [n for n, f in features.items() if isinstance(f, dict) and f.get("_type") == "ClassLabel"
                    and n in names]
    label = LABEL_COLUMN if LABEL_COLUMN in names else (class_labels[0] if len(class_labels) == 1 else None)
    if label is None and class_labels:
        raise SourceError(f"the dataset has several ClassLabel columns ({', '.join(class_labels)}) and no "
                          f"'{LABEL_COLUMN}' column: which one labels the images is not known")
    classes = features.get(label, {}).get("names") if label else None
    return image, label, (list(map(str, classes)) if isinstance(classes, list) else None)


def open_files(src: str, files: list[str]) -> Source:
    """The rows of these files, in order: every row accounted for."""
    irregular = {f: why for f in files if not is_url(f) and (why := local_not_regular(f))}
    rows = [(f, why) if f in irregular else file_row(f) for f in files]
    missing = [f for f, r in zip(files, rows) if r is None]
    if missing:
        raise SourceError(f"{len(missing)} file(s) of SRC do not exist, e.g. {missing[0]!r}")
    if len(irregular) == len(files):
        f, why = next(iter(irregular.items()))
        raise SourceError(f"no parquet file of SRC can be read: {f!r} is {why.replace(': ', ' (')})")
    tables = []  # (file, image column, row groups' sizes, labels or None)
    shape = None
    for f in files:
        if f in irregular:  # a FIFO, socket or device named .parquet: never opened (it could block forever)
            continue
        try:
            pf, fh = _open(f)
        except (OSError, ValueError) as e:
            if isinstance(e, SourceError):
                raise
            raise SourceError(f"{os.path.basename(f)} is not a readable parquet file ({type(e).__name__}: {e})") \
                from None
        try:
            image, label, classes = _columns(pf, f)
            if shape is None:
                shape = (image, label, classes)
            elif shape != (image, label, classes):
                raise SourceError(f"{os.path.basename(f)}: its columns or class names differ from "
                                  f"{os.path.basename(files[0])}'s: pass the files of one split")
            groups = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
            labels = pf.read(columns=[label]).column(0).to_pylist() if label else None
        finally:
            fh.close()
        tables.append((f, image, groups, labels))
    _, label_col, classes = shape
    if label_col is not None and classes is None:  # no names in the features: the labels themselves
        classes, index = label_map(v for *_, labels in tables for v in labels)
    else:
        index = None
    inputs: list[Input] = [Input(i, os.path.basename(f), -1, None, why)
                           for i, (f, why) in enumerate(irregular.items())]
    for f, image, groups, labels in tables:
        n = 0
        for g, size in enumerate(groups):
            for r in range(size):
                ref = f"{os.path.basename(f)}::{n}"
                lab, skip = _label(labels[n] if labels is not None else None, label_col, classes, index)
                inputs.append(Input(len(inputs), ref, lab, Row(f, g, r, image), skip))
                n += 1
    return Source(KIND, src, inputs, classes, [], fingerprint(rows + [("columns", shape)]),
                  labelled=label_col is not None)


def _label(v, column, classes, index) -> tuple[int | None, str | None]:
    """(label, skip reason) of one row."""
    if column is None:
        return None, None
    if v is None:
        return -1, f"no-label: the row's {column} is null"
    lab = index[v] if index is not None else v
    if not isinstance(lab, int) or isinstance(lab, bool):
        return -1, f"bad-label: {column} {v!r} is not a class index"
    if lab < 0:
        return -1, f"no-label: {column} is {lab} (the dataset's 'no label')"
    limit = len(classes) if classes is not None and index is None else LABEL_LIMIT
    if lab >= limit:
        return -1, f"bad-label: {column} {lab} is out of range (labels are 0..{limit - 1})"
    return lab, None


class _RowReader:
    """Reads :class:`Row` inputs for one shard: each file opened once, each row group it needs read once (the
    image column only), and only this shard's rows kept until they are read."""

    def __init__(self, locs: list, max_bytes: int):
        self.max_bytes = max_bytes
        self._wanted: dict[tuple, set] = {}
        for loc in locs:
            self._wanted.setdefault((loc.file, loc.group), set()).add(loc.row)
        self._files: dict = {}
        self._rows: dict[tuple, object] = {}

    def read(self, loc) -> bytes:
        key = (loc.file, loc.group, loc.row)
        if key not in self._rows:
            self._load(loc)
        data = self._rows.pop(key)
        if isinstance(data, InputError):
            raise data
        if data is None:
            raise InputError("no-image: the row's image is null")
        if len(data) > self.max_bytes:
            raise too_large(len(data), self.max_bytes)
        return data

    def _load(self, loc) -> None:
        import pyarrow as pa

        if loc.file not in self._files:
            self._files[loc.file] = _open(loc.file)
        pf, _ = self._files[loc.file]
        rows = self._wanted.pop((loc.file, loc.group), {loc.row})
        try:
            col = pf.read_row_group(loc.group, columns=[loc.column]).column(0).combine_chunks()
        except (OSError, ValueError) as e:  # pyarrow's errors are these; a store's outage is the run's
            if loc.remote and not isinstance(e, ValueError):
                raise
            bad = InputError(f"unreadable: row group {loc.group} of the parquet file is corrupt ({type(e).__name__})")
            for r in rows:
                self._rows[(loc.file, loc.group, r)] = bad
            return
        if pa.types.is_struct(col.type):
            col = col.field("bytes")
        for r in rows:
            self._rows[(loc.file, loc.group, r)] = col[r].as_py()

    def close(self) -> None:
        for _, fh in self._files.values():
            fh.close()
        self._files.clear()


@dataclass(frozen=True)
class Row:
    """A row of a parquet file: its row group, its row within the group, and the image column."""

    file: str
    group: int
    row: int
    column: str
    reader: ClassVar[type] = _RowReader

    @property
    def remote(self) -> bool:
        return is_url(self.file)
