"""Local files that are no regular file: a FIFO, a socket, a device. None is ever an input: a FIFO's open or read
waits for a writer, forever. The sources skip them when SRC is listed (:func:`not_regular`'s reason, e.g.
``not-a-regular-file: fifo``), and every local read goes through :func:`open_regular`, which opens without
blocking and checks the open handle (a file swapped for a FIFO after the listing is caught too). A regular file's
read ends: that is the bound on a local read. (Imports nothing of himr_pipe: the house's floors.)
"""

from __future__ import annotations

import os
import stat
from typing import IO

_SPECIAL = ((stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
            (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory"))


def not_regular(mode: int) -> str | None:
    """Why a file of this ``st_mode`` is no input (``not-a-regular-file: fifo``), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return "not-a-regular-file: " + next((name for test, name in _SPECIAL if test(mode)), "special file")


def local_not_regular(path: str) -> str | None:
    """:func:`not_regular` of a local path (a link followed); None when it is a regular file or cannot be looked
    at (its reader then says why: a dangling link, a link loop, no permission)."""
    try:
        return not_regular(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None


class NotRegularFile(OSError):
    """A local path that is no regular file: never read. ``reason``: :func:`not_regular`'s."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def open_regular(path: str) -> IO[bytes]:
    """A local regular file opened for reading, and nothing else (:class:`NotRegularFile`)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        why = not_regular(os.fstat(fd).st_mode)
        if why:
            raise NotRegularFile(why)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
