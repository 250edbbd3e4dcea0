"""The shard sink: WebDataset tar shards written atomically and reproducibly.

A shard is the unit of work. It is written under a temporary name (``.{name}.tmp``
inside a local OUT, a local spool file for an object store), hashed while it
is written, and published (renamed, or uploaded in one piece) only when it is
complete, so a crash never leaves a half-written shard under a final name
(:mod:`.storage`). Tar headers carry no time, user or group, which makes a shard a
pure function of its samples: a resumed run writes the same bytes as an
uninterrupted one.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass



def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def tmp_name(name: str) -> str:
    return f".{name}.tmp"


class _HashingFile:
    """A write-only file wrapper that hashes and counts what passes through."""

    def __init__(self, f):
        self.f = f
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.bytes += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


@dataclass(frozen=True)
class ShardInfo:
    name: str
    samples: int
    bytes: int
    sha256: str


class ShardWriter:
    """Write one shard: ``add`` samples, then ``commit`` (rename into place) or ``abort``."""

    def __init__(self, out, name: str):
        import webdataset as wds  # here, not at import: it loads torch (~0.5 GiB RSS), which the
                                  # main process of a run does not need
        from .storage import Location

        self.out = out if isinstance(out, Location) else Location(out)
        self.name = name
        self.tmp = self.out.staging_path(name)
        self._raw = open(self.tmp, "wb")
        self._hf = _HashingFile(self._raw)
        # mtime=0 and empty owner names: reproducible bytes, nothing about the owner's machine.
        self._tw = wds.TarWriter(self._hf, user="", group="", mode=0o444, mtime=0, encoder=False)
        self.samples = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        sample = {"__key__": key}
        sample.update(members)
        self._tw.write(sample)
        self.samples += 1

    def commit(self) -> ShardInfo:
        """Finish the tar, make it durable, and return its record (the rename is :meth:`publish`)."""
        self._tw.close()  # closes the tar stream; the raw file stays ours
        self._hf.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        return ShardInfo(self.name, self.samples, self._hf.bytes, self._hf.sha.hexdigest())

    def publish(self) -> None:
        self.out.publish(self.tmp, self.name)

    def abort(self) -> None:
        try:
            try:
                self._tw.close()  # marks the tar stream closed, so it does not write again when collected
            except Exception:
                pass
            self._raw.close()
        finally:
            self.out.discard(self.tmp)


def decode_image(blob: bytes, ext: str):
    """A stored image (``jpg``, ``png`` or ``npy`` member) as a writable, contiguous uint8 HWC array."""
    import io

    import numpy as np

    if ext == "jpg":
        import simplejpeg

        arr = simplejpeg.decode_jpeg(blob, colorspace="RGB")
    elif ext == "npy":
        arr = np.load(io.BytesIO(blob), allow_pickle=False)
    else:
        from PIL import Image

        arr = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # Pillow hands out read-only views
        arr = arr.copy()
    return arr


def iter_samples(path: str, fileobj=None):
    """Yield (key, {ext: bytes}) from a shard in order (for verify and tests); ``fileobj``: read it
    from that open file instead (a shard on an object store: read as one stream)."""
    with tarfile.open(path if fileobj is None else None, "r:" if fileobj is None else "r|",
                      fileobj=fileobj) as tf:
        key, cur = None, {}
        for m in tf:
            if not m.isfile():
                raise tarfile.TarError(f"unexpected non-file member {m.name!r}")
            k, _, ext = m.name.partition(".")
            if k != key:
                if key is not None:
                    yield key, cur
                key, cur = k, {}
            cur[ext] = tf.extractfile(m).read()
        if key is not None:
            yield key, cur


def iter_shard(out, name: str):
    """(key, {ext: bytes}) of shard ``name`` in OUT (a :class:`~himr_pipe.storage.Location` or a path)."""
    from .storage import Location

    out = out if isinstance(out, Location) else Location(out)
    if not out.remote:
        yield from iter_samples(out.url(name))
        return
    with out.open(name) as f:
        yield from iter_samples(name, fileobj=f)
