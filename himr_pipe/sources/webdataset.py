"""WebDataset shards: one ``.tar``, a folder of ``.tar`` files, or a brace pattern such as
``train-{000000..000009}.tar``; each sample needs an image member and a ``.cls`` label.

An input's bytes are a :class:`Member` (offset and size in its tar); a shard's reader opens each local tar once
and reads its members by offset (on an object store, one ranged request each).
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..specials import local_not_regular, open_regular
from ..storage import bounded, is_url, open_url, retrying, url_fs
from .base import (LABEL_LIMIT, Input, InputError, Source, SourceError, file_row, fingerprint, safe_member_name,
                   too_large)

KIND = "webdataset"
SUFFIX = ".tar"
# WebDataset member extensions that hold the image, in order of preference.
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "pnm", "tif", "tiff")


def claims(top: list[str], dirs: list[str]) -> bool:
    """A folder SRC of .tar files and no sub-folders."""
    return not dirs and any(n.endswith(SUFFIX) for n in top)


def open_local(src: str, top: list[str], dirs: list[str]) -> Source:
    root = Path(src)
    return open_files(src, [str(root / e) for e in top if e.endswith(SUFFIX) and (
        (root / e).is_file() or local_not_regular(str(root / e)))])  # a FIFO named .tar: skipped with its reason


def open_remote(src: str, listing) -> Source:
    return open_files(src, [f"{listing.root}/{r}" for r in listing.top if r.endswith(SUFFIX)])


def _open_tar(path: str):
    """A local tar, opened for a shard's reads (one per tar and shard); never a FIFO or a device."""
    return open_regular(path)


class _TarReader:
    """Reads :class:`Member` inputs: each local tar opened once for the shard, members read by offset."""

    def __init__(self, locs: list, max_bytes: int):
        self.max_bytes = max_bytes
        self._open: dict = {}

    def read(self, loc) -> bytes:
        if loc.size > self.max_bytes:
            raise too_large(loc.size, self.max_bytes)
        data = _read_range(loc.tar, loc.offset, loc.size, self._open)
        if len(data) != loc.size:
            raise InputError(f"unreadable: tar member cut short ({len(data)} of {loc.size} bytes)")
        return data

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()


@dataclass(frozen=True)
class Member:
    """A member of a tar (a local path or a URL): its data's offset and size."""

    tar: str
    offset: int
    size: int
    reader: ClassVar[type] = _TarReader

    @property
    def remote(self) -> bool:
        return is_url(self.tar)


def _read_range(path: str, offset: int, size: int, handles: dict | None = None) -> bytes:
    if is_url(path):
        fs, p = url_fs(path)
        return retrying(f"reading {p.rsplit('/', 1)[-1]}", path,
                        lambda: fs.cat_file(p, start=offset, end=offset + size, **bounded(fs, size)))
    if handles is None:
        with _open_tar(path) as f:
            f.seek(offset)
            return f.read(size)
    f = handles.get(path)
    if f is None:
        f = handles[path] = _open_tar(path)
    f.seek(offset)
    return f.read(size)


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the basename."""
    d, b = os.path.split(name)
    if "." not in b:
        return name, ""
    stem, ext = b.split(".", 1)
    return (os.path.join(d, stem) if d else stem), ext.lower()


def open_files(src: str, tars: list[str]) -> Source:
    """The samples of these tars, in order: every member accounted for."""
    if not tars:
        raise SourceError(f"SRC {src!r} names no .tar shards")
    irregular = {t: why for t in tars if not is_url(t) and (why := local_not_regular(t))}
    rows = [(t, why) if t in irregular else file_row(t) for t in tars]
    missing = [t for t, r in zip(tars, rows) if r is None]
    if missing:
        raise SourceError(f"{len(missing)} shard(s) of SRC do not exist, e.g. {missing[0]!r}")
    inputs: list[Input] = []
    fp_rows = []
    handles: dict = {}  # each local tar opened once for its labels too

    def emit(tar: str, key: str, members: list[tarfile.TarInfo], extra_skips: list[tuple[str, str]]):
        rel = f"{os.path.basename(tar)}::{key}"
        for ref, reason in extra_skips:
            inputs.append(Input(len(inputs), ref, -1, None, reason))
        if not members:
            return
        by_ext = {}
        for m in members:
            _, ext = _split_key(m.name)
            if ext in by_ext:
                inputs.append(Input(len(inputs), f"{os.path.basename(tar)}::{m.name}", -1, None,
                                    f"duplicate-name: a second '{ext}' member for sample key {key!r}"))
                continue
            by_ext[ext] = m
        img_ext = next((e for e in WDS_IMAGE_EXTS if e in by_ext), None)
        if img_ext is None:
            inputs.append(Input(len(inputs), rel, -1, None, "no-image: the sample has no image member"))
            return
        m = by_ext[img_ext]
        loc = Member(tar, m.offset_data, m.size)
        fp_rows.append((rel, m.size))
        cls = by_ext.get("cls")
        if cls is None:
            inputs.append(Input(len(inputs), rel, -1, loc, "no-label: the sample has no .cls member"))
            return
        try:
            label = int(_read_range(tar, cls.offset_data, min(cls.size, 64), handles).decode("utf-8").strip())
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
        if tar in irregular:  # a FIFO, socket or device named .tar: never opened (it could block forever)
            inputs.append(Input(len(inputs), os.path.basename(tar), -1, None, irregular[tar]))
            continue
        seen: set[str] = set()  # this shard's written keys
        cur_key, cur_members, cur_skips = None, [], []
        try:
            with open_url(tar, 1 << 20) as f, tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf:
                    if m.isdir():
                        continue
                    name = m.name
                    if not safe_member_name(name):
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
            inputs.append(Input(len(inputs), f"{os.path.basename(tar)}::(rest)", -1, None,
                                f"bad-tar: the shard is corrupt or truncated after this point ({type(e).__name__})"))
        if cur_key is not None or cur_skips:
            emit(tar, cur_key or "", cur_members, cur_skips)
    for f in handles.values():
        f.close()
    return Source(KIND, src, inputs, None, [], fingerprint(fp_rows))
