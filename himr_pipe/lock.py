"""OUT is written by one run at a time: an advisory lock with the holder's host and pid.

``OUT/.himr-pipe.lock`` is held with ``flock`` for the whole run. The kernel
drops an ``flock`` when its process dies, however it dies (``kill -9``
included), so a crashed run never leaves OUT stuck: the next run simply takes
the lock over. The file holds who has it (host, pid, start time), so that a
second run can say who owns OUT; it is removed when the run ends, so a
finished OUT holds no trace of the machine that wrote it.

``flock`` is reliable on local file systems. On NFS and other network file
systems it may not exclude runs on different hosts; run one job per OUT there.

An object store (OUT given as a URL) has no locks, so there OUT holds a
*lease* (:class:`OutLease`): the same file, created only if absent (a
conditional PUT, ``If-None-Match``, which S3 and fsspec's ``xb`` mode
support) and renewed by the run every ``ttl / 4`` seconds. A run that dies
stops renewing, and once its lease is older than ``ttl`` (default 120 s,
``$HIMR_PIPE_LEASE_TTL``) the next run takes it over. Two runs taking over
the same stale lease at the same instant can both believe they won: the
loser finds another run's token at its next renewal and stops before it
writes the manifest. Shards are the same bytes whoever writes them, so the
race costs time, never data. Clocks of the hosts involved must agree to well
within ``ttl``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import socket
import threading
import time

from .storage import bounded, store_patience
from .errors import Failed, Refused

LOCK_NAME = ".himr-pipe.lock"


class OutLocked(Refused):
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

    def check(self) -> None:
        """The flock cannot be lost while this process lives; nothing to check."""

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


LEASE_TTL_ENV = "HIMR_PIPE_LEASE_TTL"
DEFAULT_LEASE_TTL = 120.0


def lock_for(out) -> "OutLock | OutLease":
    """The lock of an OUT (a :class:`~himr_pipe.storage.Location`): flock locally, a lease on an object store."""
    return OutLease(out) if out.remote else OutLock(out.root)


def holder_of(out) -> dict | None:
    """The record (host, pid, ...) of the run holding OUT (a :class:`~himr_pipe.storage.Location`) right now,
    or None; reads only (``verify`` may look at a read-only OUT). Locally: the lock file is held under ``flock``
    by a live process; on an object store: the lease was renewed within its ttl."""
    if out.remote:
        cur = OutLease(out)._read(quiet=True)
        if not cur:
            return None
        age = time.time() - float(cur.get("renewed", 0) or 0)
        if age >= float(cur.get("ttl", DEFAULT_LEASE_TTL) or DEFAULT_LEASE_TTL):
            return None
        return {**cur, "age": age}
    return _local_holder(out, alive=True)


def recorded_holder(out) -> dict | None:
    """The holder's record in a local OUT's lock file, without asking whether it is alive (None: no lock file,
    so no run holds OUT: a run removes it when it ends)."""
    return _local_holder(out, alive=False)


def _local_holder(out, alive: bool) -> dict | None:
    try:
        fd = os.open(os.path.join(out.root, LOCK_NAME), os.O_RDONLY)
    except OSError:
        return None
    try:
        if alive:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:  # a live run holds it exclusively
                return _read(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return _read(fd)
    finally:
        os.close(fd)


def live_holder(out) -> str | None:
    """:func:`holder_of` in words, for a message."""
    h = holder_of(out)
    if h is None:
        return None
    since = f"lease renewed {h['age']:.0f} s ago" if "age" in h else f"since {h.get('since', '?')}"
    return f"host {h.get('host', '?')}, pid {h.get('pid', '?')}, {since}"


class DriverGone(RuntimeError):
    """The run that holds OUT is not the one this worker's shard belongs to any more (it died or was stopped)."""


def check_driver(out, driver: tuple | None) -> None:
    """Raise :class:`DriverGone` unless OUT (a :class:`~himr_pipe.storage.Location`) is held by ``driver``
    (host, pid; None: a worker that dies with its driver, nothing to check). A Ray worker is not the driver's
    child, so the driver's death does not end it at once; without this check its shard in flight would land in an
    OUT whose lock is already free. Liveness where it can be seen: a lease (any host), or flock on the driver's
    own host; a local path on another host (a shared file system, where flock may not reach across hosts) gives
    only who holds it."""
    if driver is None:
        return
    host, pid = driver
    live = out.remote or socket.gethostname() == host
    h = holder_of(out) if live else recorded_holder(out)
    if not h or h.get("host") != host or h.get("pid") != pid:
        raise DriverGone(f"OUT is no longer held by the run that started this shard (host {host}, pid "
                         f"{pid}); the shard is not published")


def publish_held(out, writer, driver: tuple | None, hooks=None) -> None:
    """Publish a committed shard (a :class:`~himr_pipe.shards.ShardWriter`) only while ``driver`` holds OUT.

    Holding the driver's lock and renaming cannot be one system call, so the window between a check and the
    rename is closed by a second check after it: check, rename, check again, and if the driver is gone at the
    second check, remove the shard just renamed and raise :class:`DriverGone`. A driver's hold, once lost, never
    comes back (its flock or lease goes with its pid), so a driver that died before the rename is seen gone at
    the second check; a shard that stays in OUT was renamed while the driver still held it. Only the shard this
    worker renamed is removed (locally: the same inode, so a later run's shard of the same name is not touched).
    Only a worker itself killed in the microseconds between its rename and its second check can leave a shard
    after its driver's death; having no record in the owner's state, the next run redoes it to the same bytes.
    ``hooks``: :meth:`~himr_pipe.worker.WorkerHooks.before_publish` is called between the check and the rename."""
    try:
        check_driver(out, driver)
        if hooks is not None:
            hooks.before_publish(writer.name)
        ino = None if out.remote or driver is None else os.stat(writer.tmp).st_ino
    except BaseException:
        writer.abort()
        raise
    writer.publish()
    try:
        check_driver(out, driver)
    except DriverGone:
        if ino is None:
            out.remove(writer.name)
        else:
            try:
                if os.stat(out.url(writer.name)).st_ino == ino:
                    os.remove(out.url(writer.name))
            except FileNotFoundError:
                pass
        raise


class LeaseLost(Failed, RuntimeError):
    """Another run took this run's lease over (it expired, or two runs raced for a stale one)."""


class OutLease:
    """``with OutLease(location):`` holds a renewed lease on an object-store OUT, or raises :class:`OutLocked`."""

    def __init__(self, out, ttl: float | None = None):
        self.out = out
        self.ttl = float(ttl if ttl is not None else os.environ.get(LEASE_TTL_ENV, DEFAULT_LEASE_TTL))
        self.token = secrets.token_hex(16)
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = False

    def _record(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "since": self._since, "token": self.token,
                "renewed": time.time(), "ttl": self.ttl}

    def _read(self, quiet: bool = False) -> dict | None:
        path = f"{self.out.base}/{LOCK_NAME}"
        try:
            data = self.out._try("reading OUT's lease", lambda: self.out.fs.cat_file(path, **bounded(self.out.fs)),
                                 quiet=quiet)
            return json.loads(data.decode() or "{}")
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def _write(self, exclusive: bool, quiet: bool = False) -> bool:
        """Write our record; with ``exclusive``, only if no lease exists (False if one does)."""
        data = json.dumps(self._record()).encode()
        path = f"{self.out.base}/{LOCK_NAME}"
        if exclusive:
            try:
                def create():
                    with self.out.fs.open(path, "xb") as f:
                        f.write(data)
                self.out._try("taking OUT's lease", create)
                return True
            except FileExistsError:
                return False
            except (NotImplementedError, ValueError):  # a backend without conditional writes
                if self._read() is not None:
                    return False
        self.out._try("renewing OUT's lease", lambda: self.out.fs.pipe_file(path, data, **bounded(self.out.fs)),
                      quiet=quiet)
        return True

    def __enter__(self) -> "OutLease":
        self._since = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if not self._write(exclusive=True):
            cur = self._read() or {}
            if cur.get("token") == self.token:  # our create went through, its answer was lost and retried
                cur = {}
            age = time.time() - float(cur.get("renewed", 0) or 0)
            if age < float(cur.get("ttl", self.ttl) or self.ttl):
                raise OutLocked(f"OUT is being written by another himr-pipe run (host {cur.get('host', '?')}, "
                                f"pid {cur.get('pid', '?')}, since {cur.get('since', '?')}; its lease was renewed "
                                f"{age:.0f} s ago); wait for it to finish, or stop it (a stopped run's lease "
                                f"is taken over {self.ttl:.0f} s after its last renewal)")
            self._write(exclusive=False)  # stale: a run that stopped renewing; take it over
            time.sleep(min(1.0, self.ttl / 20))
            cur = self._read() or {}
            if cur.get("token") != self.token:
                raise OutLocked(f"OUT's stale lease was taken over by another run at the same moment (host "
                                f"{cur.get('host', '?')}, pid {cur.get('pid', '?')})")
        self._held = True
        self._thread = threading.Thread(target=self._renew, name="himr-pipe-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                cur = self._read(quiet=True)  # the run's own requests say when the store stalls
                if cur is None or cur.get("token") != self.token:
                    self.lost = True
                    return
                self._write(exclusive=False, quiet=True)
            except Exception:  # a failed renewal is retried at the next tick; the lease outlives a few
                continue

    def check(self) -> None:
        """Raise :class:`LeaseLost` if another run holds OUT now."""
        if self.lost or (self._read() or {}).get("token") != self.token:
            self.lost = True
            raise LeaseLost("another himr-pipe run took over OUT's lease while this run was writing (this run "
                            "stalled for longer than the lease's ttl); its shards are kept, the other run "
                            "finishes the job")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._held:
            self._held = False
            # a few seconds at most: a run stopped by a store that went away must not wait on it again; a lease
            # left behind is taken over once stale
            path, short = f"{self.out.base}/{LOCK_NAME}", min(5.0, store_patience())
            try:
                cur = json.loads(self.out._try("releasing OUT's lease",
                                               lambda: self.out.fs.cat_file(path, **bounded(self.out.fs)),
                                               patience=short).decode() or "{}")
                if cur.get("token") == self.token:
                    self.out._try("releasing OUT's lease", lambda: self.out.fs.rm_file(path, **bounded(self.out.fs)),
                                  patience=short)
            except Exception:
                pass
