"""OUT is written by one run at a time: an advisory lock with the holder's host and pid.

``OUT/.himr-pipe.lock`` is held with ``flock`` for the whole run. The kernel
drops an ``flock`` when its process dies, however it dies (``kill -9``
included), so a crashed run never leaves OUT stuck: the next run simply takes
the lock over. The file holds who has it (host, pid, start time), so that a
second run can say who owns OUT; it is removed when the run ends, so a
finished OUT holds no trace of the machine that wrote it.

``flock`` is reliable on local file systems. On NFS and other network file
systems it may not exclude runs on different hosts; run one job per OUT there.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time

LOCK_NAME = ".himr-pipe.lock"


class OutLocked(Exception):
    """Another live run holds OUT."""


class OutLock:
    """``with OutLock(out):`` holds OUT's lock, or raises :class:`OutLocked` at once (never waits)."""

    def __init__(self, out: str):
        self.path = os.path.join(out, LOCK_NAME)
        self.fd: int | None = None

    def __enter__(self) -> "OutLock":
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read(fd)
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                who = (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since "
                       f"{holder.get('since', '?')}") if holder else "holder unknown"
                raise OutLocked(f"OUT is being written by another himr-pipe run ({who}); wait for it to finish, "
                                f"or stop it (a stopped run's lock is taken over automatically)") from None
            # the holder before us may have removed the file after we opened it: lock the file at the path
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                         "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
                return self
            os.close(fd)
        raise OutLocked("could not take OUT's lock: its lock file keeps changing under this run")

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)  # while still holding it: a waiting run re-checks the inode
            except FileNotFoundError:
                pass
            os.close(self.fd)
            self.fd = None


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}
