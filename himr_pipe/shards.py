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



# The members of a sample (one key of a shard): the encrypted image under its format's extension, the label
# (classification only) and the sample's JSON (scheme, size and cell; a detection sample's boxes and frame).
# Each task (:mod:`.tasks`) says which its samples have and builds them with make_members; verify checks them
# and the training loader reads them by these names.
LABEL, META = "cls", "json"


def make_members(ext: str, image: bytes, meta: bytes, label: int | None = None) -> dict[str, bytes]:
    """One sample's members (``label`` None: a detection sample, whose targets are in ``meta``)."""
    members = {ext: image}
    if label is not None:
        members[LABEL] = str(label).encode()
    members[META] = meta
    return members


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # tarfile's record: a stream is padded to a whole number of them


def _ustar_template() -> bytearray:
    """The header every member shares: mode 0444, uid/gid 0, no owner names, mtime 0, a regular file
    (exactly what ``tarfile`` writes for such a TarInfo in its default PAX format, names under 100 bytes)."""
    ti = tarfile.TarInfo("x")
    ti.mode, ti.mtime, ti.uname, ti.gname = 0o444, 0, "", ""
    h = bytearray(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    h[0:100] = bytes(100)
    h[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    return h


_TEMPLATE = _ustar_template()


def tar_member(name: str, data: bytes) -> list:
    """One tar member as [header, data, padding], byte-identical to ``tarfile`` (and so to WebDataset's
    TarWriter with mtime 0, mode 0444 and empty owner names), built without tarfile's per-member Python.

    Names that do not fit a plain ustar header (over 99 bytes or not ASCII) and sizes of 8 GiB or more
    take tarfile's own path (a PAX header), so the bytes stay what tarfile would write."""
    size = len(data)
    raw = name.encode("ascii", "surrogateescape") if name.isascii() else None
    if raw is None or len(raw) > 99 or size >= 8 ** 11:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime, ti.uname, ti.gname = size, 0o444, 0, "", ""
        head = ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    else:
        h = _TEMPLATE.copy()
        h[0:len(raw)] = raw
        h[124:136] = b"%011o\0" % size
        h[148:155] = b"%06o\0" % sum(h)
        head = bytes(h)
    return [head, data, bytes(-size % TAR_BLOCK)]


@dataclass(frozen=True)
class ShardInfo:
    name: str
    samples: int
    bytes: int
    sha256: str


class ShardWriter:
    """Write one shard: ``add`` samples, then ``commit`` (make it durable) and ``publish``, or ``abort``.

    Unlike WebDataset's ShardWriter, which rotates over many shards (a new file every ``maxcount`` samples or
    ``maxsize`` bytes), this one never starts another file: the caller decides what goes into the shard it
    names, and opens one ShardWriter per shard.

    The bytes are those of WebDataset's TarWriter (members of a sample in sorted order, the stream closed
    with two zero blocks and padded to tarfile's 10 KiB record; ``tests/test_shards.py`` holds them
    equal), built here directly: tarfile's per-member Python cost about 70 us a member, a third of the
    CPU path's time per image. ``add`` only queues a sample's buffers; ``flush`` (a batch at a time, in
    the worker's writer thread) hashes and writes them in one piece: both release the GIL.
    """

    def __init__(self, out, name: str):
        from .storage import Location

        self.out = out if isinstance(out, Location) else Location(out)
        self.name = name
        self.tmp = self.out.staging_path(name)
        self._raw = open(self.tmp, "wb")
        self._sha = hashlib.sha256()
        self._parts: list = []
        self.bytes = 0
        self.samples = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        for ext in sorted(members):
            self._parts += tar_member(f"{key}.{ext}", members[ext])
        self.samples += 1

    def flush(self) -> None:
        """Hash and write what ``add`` queued."""
        if self._parts:
            buf = b"".join(self._parts)
            self._parts = []
            self._sha.update(buf)
            self._raw.write(buf)
            self.bytes += len(buf)

    def commit(self) -> ShardInfo:
        """Finish the tar, make it durable, and return its record (the rename is :meth:`publish`)."""
        self._parts.append(bytes(2 * TAR_BLOCK))  # the end of the archive
        end = self.bytes + sum(len(p) for p in self._parts)
        self._parts.append(bytes(-end % TAR_RECORD))
        self.flush()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        return ShardInfo(self.name, self.samples, self.bytes, self._sha.hexdigest())

    def publish(self) -> None:
        self.out.publish(self.tmp, self.name)

    def abort(self) -> None:
        try:
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
