"""A flat folder of images: labelled by ``labels.csv`` beside them, or not labelled at all.

* With ``SRC/labels.csv`` (rows ``path,label``, paths relative to SRC, an optional ``path,label`` header): every
  file under SRC is an input, in sorted order of its relative path; its label is the CSV's (non-negative integers
  are labels themselves, other values class names, labels in their sorted order: :func:`.base.label_map`). A file
  the CSV does not name is skipped (``no-label``), and so is a row naming a file SRC lacks (``missing-file``).
* Without it, SRC's own files (no sub-folders) are the inputs, unlabelled: the samples are written without
  ``.cls``, the manifest says ``"labelled": false``, and ``himr-pipe train`` refuses them.
"""

from __future__ import annotations

import csv
import io
import os

from ..specials import local_not_regular
from .base import Input, Source, SourceError, Url, fingerprint, is_image, label_map, local_entry, version

KIND = "flat"
LABELS = "labels.csv"


def claims(top: list[str], dirs: list[str]) -> bool:
    """A folder SRC with labels.csv, or with images and no sub-folder."""
    return LABELS in top or (not dirs and any(is_image(n) for n in top))


def open_local(src: str, top: list[str], dirs: list[str]) -> Source:
    files = []  # (relative path, loc, fingerprint row)
    irregular: dict[str, str] = {}  # FIFOs, sockets, devices: skipped with the reason, never opened
    if LABELS not in top:
        walk = [(src, [], top)]
    else:
        walk = os.walk(src)
    for dirpath, dirnames, filenames in walk:
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            full = os.path.join(dirpath, fn)
            rel = os.path.relpath(full, src).replace(os.sep, "/")
            files.append(local_entry(rel, full, irregular))
    table = None
    if LABELS in top:
        why = local_not_regular(os.path.join(src, LABELS))
        if why:
            raise SourceError(f"{LABELS} of SRC can't be read ({why})")
        try:
            with open(os.path.join(src, LABELS), "rb") as f:
                table = f.read()
        except OSError as e:
            raise SourceError(f"{LABELS} of SRC can't be read ({e.strerror or e})") from None
    return _inputs(src, sorted(files), table, irregular)


def open_remote(src: str, listing) -> Source:
    labelled = LABELS in listing.top
    files = [(r, Url(listing.url(r), int(i.get("size") or 0)), (r, int(i.get("size") or 0), version(i)))
             for r, i in listing.files if labelled or "/" not in r]
    table = None
    if labelled:
        from ..storage import Location

        table = Location(listing.root).read_bytes(LABELS)
    return _inputs(src, files, table)


def _inputs(src: str, files: list, table: bytes | None, irregular: dict | None = None) -> Source:
    irregular = irregular or {}
    if table is None:
        inputs = [Input(i, rel, -1, loc, irregular[rel]) if rel in irregular else
                  Input(i, rel, None if is_image(rel) else -1, loc,
                        None if is_image(rel) else
                        f"unsupported-extension: {os.path.splitext(rel)[1].lower() or '(none)'} is not an image "
                        "extension")
                  for i, (rel, loc, _) in enumerate(files)]
        return Source(KIND, src, inputs, None, [], fingerprint(fp for *_, fp in files), labelled=False)
    labels = _read_labels(table)
    classes, index = label_map(labels.values())
    present = set()
    inputs: list[Input] = []
    for rel, loc, _ in files:
        if rel == LABELS:
            continue
        present.add(rel)
        if rel in irregular:
            inputs.append(Input(len(inputs), rel, -1, loc, irregular[rel]))
        elif rel not in labels:
            inputs.append(Input(len(inputs), rel, -1, loc, f"no-label: {LABELS} does not name this file"))
        elif not is_image(rel):
            inputs.append(Input(len(inputs), rel, -1, loc, f"unsupported-extension: "
                                f"{os.path.splitext(rel)[1].lower() or '(none)'} is not an image extension"))
        else:
            inputs.append(Input(len(inputs), rel, index[labels[rel]], loc, None))
    for rel in sorted(set(labels) - present):
        inputs.append(Input(len(inputs), rel, -1, None, f"missing-file: {LABELS} names a file that is not in SRC"))
    return Source(KIND, src, inputs, classes, [], fingerprint([fp for *_, fp in files] + [(LABELS, table)]))


def _read_labels(table: bytes) -> dict[str, str]:
    """path -> label of labels.csv (refused before any work when it is not a two-column CSV or names a file
    twice)."""
    try:
        rows = list(csv.reader(io.StringIO(table.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as e:
        raise SourceError(f"{LABELS} of SRC is not a UTF-8 CSV ({e})") from None
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0]] == ["path", "label"]:
        rows = rows[1:]
    out: dict[str, str] = {}
    for n, r in enumerate(rows, 1):
        if len(r) != 2 or not r[0].strip():
            raise SourceError(f"{LABELS} of SRC: row {n} is not 'path,label'")
        path = r[0].strip()
        path = path[2:] if path.startswith("./") else path
        if path in out:
            raise SourceError(f"{LABELS} of SRC names {path!r} twice")
        out[path] = r[1].strip()
    return out
