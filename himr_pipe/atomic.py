"""The one way a local file is replaced whole: the owner's state, a local manifest or JSON of OUT (through
:mod:`.storage`), the trainer's checkpoints and log, the trade-off study's cache of results."""

from __future__ import annotations

import os
from typing import IO, Any, Callable


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[IO[bytes]], Any], mode: int = 0o644) -> None:
    """``path.tmp`` (created with ``mode``), fsync, rename over ``path``, fsync of the folder (so that the rename
    survives a power cut too): a kill at any point leaves the old file or the new one, never a part, and an error
    (a full disk) leaves no ``.tmp`` behind. ``data``: the bytes, or a function that writes them to the open file
    (a checkpoint streamed by ``torch.save``, not held twice in memory)."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:  # a system that cannot open a folder (Windows): the rename is all there is
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
