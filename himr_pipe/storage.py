"""Where SRC and OUT live: a local folder, or an fsspec URL (``s3://``, ``gs://``, ``memory://``, ...).

Every read and write of OUT goes through one :class:`Location`, so the job,
the worker, verify, decrypt, the audit and the training loader treat a local
folder and a bucket prefix alike:

* a local path (or a ``file://`` URL, which is the same thing) keeps the
  local behaviour exactly: a shard is written as ``OUT/.NAME.tmp``, made
  durable (fsync) and renamed into place;
* any other URL is an object store. A shard is spooled to a local temporary
  file while it is written and hashed, then uploaded to its final name in
  one upload (``put_file``: a single PUT, or a multipart upload for a large
  shard, which the store also publishes only when it completes). An object
  store has no rename, and it never shows a partly uploaded object, so a
  crash leaves either no object or the whole shard; nothing in OUT is ever
  named ``*.tmp``. JSON (the manifest, last) is one PUT too.

Credentials and endpoints come from the environment, as each fsspec backend
reads them (for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL`` for MinIO or another S3-compatible store, or a profile).
Object listings are never cached across calls: other processes write OUT.

A store that goes away or stalls is retried, never waited on silently (:func:`retrying`): every request to an
object store is one bounded attempt (on S3: ``$HIMR_PIPE_STORE_TIMEOUT`` seconds to connect and to answer,
default 60, and no hidden retries inside botocore or s3fs), retried with exponential backoff (0.5 s doubling,
at most 15 s) for ``$HIMR_PIPE_STORE_PATIENCE`` seconds (default 120), with one line on stderr per retry that
names the store, the operation and when it gives up. Then :class:`StoreUnavailable`: the run stops with exit 1
naming the store, complete shards kept, and the same command resumes once the store is back (one request given
up stops the run's others: :mod:`.storefail`). Errors that a retry cannot mend (a missing object, access denied,
a bad URL) are raised at once; a backend missing, or an error of a backend's own type, is :class:`StoreRefused`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from typing import IO, Any, Callable, TypeVar

from .atomic import atomic_write
from .errors import Failed, Refused, WriteFailed
from .specials import open_regular
from .storefail import backend_package, foreign, gave_up, give_up, quiet_orphaned_errors

LOCAL_SCHEMES = ("file://",)
SPOOL_PREFIX = "himr-pipe-spool-"


def is_url(path: str) -> bool:
    """True for an fsspec URL other than ``file://`` (which is handled as the local path it names)."""
    return "://" in str(path) and not str(path).startswith(LOCAL_SCHEMES)


def local_path(path: str) -> str:
    """``file:///a/b`` -> ``/a/b``; anything else unchanged."""
    p = str(path)
    return p[len("file://"):] if p.startswith("file://") else p


TIMEOUT_ENV, PATIENCE_ENV = "HIMR_PIPE_STORE_TIMEOUT", "HIMR_PIPE_STORE_PATIENCE"
DEFAULT_TIMEOUT, DEFAULT_PATIENCE = 60.0, 120.0


def _env_seconds(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


def url_fs(url: str):
    """(filesystem, path within it) of a URL; fsspec caches filesystem instances per process. On S3 each
    request is one attempt bounded by ``$HIMR_PIPE_STORE_TIMEOUT``: :func:`retrying` does the retrying, so that
    it can say so."""
    import fsspec

    scheme = url.split("://", 1)[0]
    opts: dict = {}
    if scheme in ("s3", "s3a"):
        t = _env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT)
        opts["config_kwargs"] = {"connect_timeout": t, "read_timeout": t, "retries": {"total_max_attempts": 1}}
    try:
        fs, p = fsspec.core.url_to_fs(url, **opts)
    except ImportError:
        raise StoreRefused(f"cannot open {scheme}:// URLs: the fsspec backend for them is not installed: "
                           f"pip install {backend_package(scheme)}") from None
    except ValueError as e:  # a protocol fsspec does not know
        raise StoreRefused(f"cannot open {scheme}:// URLs ({(str(e) or repr(e)).splitlines()[0]}): SRC and "
                           "OUT are local paths or fsspec URLs (s3://, gs://, ...)") from None
    if opts and getattr(fs, "retries", 1) != 1:
        fs.retries = 1  # s3fs retries timeouts five times, silently, inside each call
    quiet_orphaned_errors(fs, transient)
    return fs, p


def bounded(fs, nbytes: int = 0) -> dict:
    """Keyword arguments that bound one call of an async fsspec filesystem (s3fs, gcsfs) by
    ``$HIMR_PIPE_STORE_TIMEOUT``, plus a second per MB moved (a store slower than 1 MB/s counts as stalled):
    fsspec's ``timeout``, which raises ``FSTimeoutError``. botocore's own read timeout does not cover every
    wait (an upload whose answer never comes hangs past it). Nothing for a synchronous filesystem."""
    from fsspec.asyn import AsyncFileSystem

    if not isinstance(fs, AsyncFileSystem):
        return {}
    return {"timeout": _env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT) + nbytes / 1e6}


# errors a retry cannot mend: raised at once
_PERMANENT = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError,
              NotImplementedError, ValueError, TypeError, KeyError)
_TRANSIENT_NAMES = {"ConnectionError", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                    "ConnectionClosedError", "HTTPClientError", "ResponseStreamingError", "IncompleteReadError",
                    "ClientConnectorError", "ClientOSError", "ServerDisconnectedError", "ClientPayloadError",
                    "FSTimeoutError", "TimeoutError", "ProxyConnectionError"}


def transient(exc: BaseException) -> bool:
    """True for a store error that a later attempt may not meet: no connection, a timeout, a dropped
    connection, a 5xx or throttling answer (s3fs gives those as a plain OSError)."""
    if isinstance(exc, StoreUnavailable) or isinstance(exc, _PERMANENT):
        return False
    if any(c.__name__ in _TRANSIENT_NAMES for c in type(exc).__mro__):
        return True
    return type(exc) is OSError or isinstance(exc, (ConnectionError, TimeoutError))


class StoreUnavailable(Failed, OSError):
    """The object store did not answer within its patience: the run stops (exit 1) and resumes when it is back."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # crosses process boundaries (a worker's failure) intact
        return (type(self), (self.message,))


def store_name(url: str) -> str:
    """The store as a user knows it: the URL's scheme and bucket, and the S3 endpoint when one is set."""
    scheme, rest = str(url).split("://", 1) if "://" in str(url) else ("", str(url))
    where = f"{scheme}://{rest.split('/', 1)[0]}"
    ep = os.environ.get("AWS_ENDPOINT_URL") if scheme in ("s3", "s3a") else None
    return f"{where} (endpoint {ep})" if ep else where


T = TypeVar("T")


def store_patience() -> float:
    """How long a request to a store that does not answer is retried (``$HIMR_PIPE_STORE_PATIENCE``)."""
    return _env_seconds(PATIENCE_ENV, DEFAULT_PATIENCE)


def retrying(what: str, url: str, fn: Callable[[], T], patience: float | None = None, quiet: bool = False) -> T:
    """``fn()``, retried with backoff while it fails with a :func:`transient` error, for ``patience`` seconds
    (``$HIMR_PIPE_STORE_PATIENCE``); a line on stderr per retry; then :class:`StoreUnavailable`."""
    patience = store_patience() if patience is None else patience
    t0, delay, tries = time.monotonic(), 0.5, 0
    while True:
        tries += 1
        try:
            return fn()
        except Exception as e:
            if not transient(e):
                if foreign(e):  # a backend's own error type (no network for hf://): the store's, in one line
                    raise StoreRefused(f"the store {store_name(url)} can't be used ({what}: {type(e).__name__}"
                                       f"{': ' + str(e).splitlines()[0] if str(e) else ''})") from None
                raise
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
            if isinstance(e, TimeoutError) and not str(e):
                reason += " (no answer within the request's time limit, $HIMR_PIPE_STORE_TIMEOUT)"
            left = patience - (time.monotonic() - t0)
            if left <= 0 or gave_up():  # out of patience, or another request of this run gave up already
                give_up()
                raise StoreUnavailable(
                    f"the object store {store_name(url)} did not answer while {what} ({tries} tries over "
                    f"{time.monotonic() - t0:.0f} s; last: {reason})") from None
            wait = min(delay, left, 15.0)
            if not quiet:
                print(f"himr-pipe: the object store {store_name(url)} is not answering ({what}: {reason}); "
                      f"retry {tries} in {wait:.1f} s, giving up in {left:.0f} s", file=sys.stderr, flush=True)
            time.sleep(wait)
            delay *= 2


class StoreRefused(Refused, OSError):
    """A URL without its fsspec backend (or of no protocol fsspec knows), or a store's error of a type no rule
    knows (one line, exit 2)."""


def in_process_only(path: str) -> bool:
    """``memory://`` lives in one process: other processes (workers, Ray tasks) cannot see it."""
    return str(path).startswith("memory://")


def open_url(path: str, block_size: int = 8 << 20) -> IO[bytes]:
    """A binary file of one path or URL; on an object store read ahead ``block_size`` bytes a request (large for
    sequential reads; smaller where a reader seeks, as a tar listing does)."""
    path = local_path(path)
    if not is_url(path):
        return open_regular(path)
    fs, p = url_fs(path)
    return retrying(f"opening {p.rsplit('/', 1)[-1]}", path,
                    lambda: fs.open(p, "rb", block_size=block_size, cache_type="readahead"))


class StorageError(Failed, OSError):
    """A location can't be used (unknown scheme, missing backend)."""


def tmp_name(name: str) -> str:
    """The temporary name a local file is written under before it is published as ``name`` (hidden, so
    readers that list ``*.tar`` never see a half-written shard)."""
    return f".{name}.tmp"


class Location:
    """A folder that is a local path or a URL prefix; names within it are plain file names."""

    def __init__(self, root: str | os.PathLike):
        root = local_path(str(root))
        self.remote = is_url(root)
        if self.remote:
            self.root = root.rstrip("/")
            self.fs, self.base = url_fs(self.root)
            self.base = self.base.rstrip("/")
        else:
            self.root = root
            self.fs, self.base = None, root

    def __str__(self) -> str:
        return self.root

    def __repr__(self) -> str:
        return f"Location({self.root!r})"

    def url(self, name: str) -> str:
        """The full location of ``name``: a path or a URL."""
        return f"{self.root}/{name}" if self.remote else os.path.join(self.root, name)

    def _p(self, name: str) -> str:
        return f"{self.base}/{name}"

    def _try(self, what: str, fn: Callable[[], T], patience: float | None = None, quiet: bool = False) -> T:
        """A request to the store, retried while it does not answer (:func:`retrying`)."""
        return retrying(what, self.root, fn, patience=patience, quiet=quiet)

    @property
    def identity(self) -> str:
        """A stable, absolute name for this folder (keys the owner's default state folder)."""
        return self.root if self.remote else os.path.realpath(self.root)

    @property
    def leaf(self) -> str:
        """The folder's own name (its last path component)."""
        return self.root.rstrip("/").rsplit("/", 1)[-1] if self.remote else os.path.basename(
            os.path.realpath(self.root))

    # -- the folder ---------------------------------------------------------------
    def exists(self, name: str) -> bool:
        if not self.remote:
            return os.path.exists(os.path.join(self.root, name))
        return self._try(f"looking for {name}", lambda: self.fs.exists(self._p(name), **bounded(self.fs)))

    def is_file_root(self) -> bool:
        """True when the root itself is a file (not a folder)."""
        if not self.remote:
            return os.path.isfile(self.root)
        try:
            return self._try("looking at OUT", lambda: self.fs.isfile(self.base, **bounded(self.fs)))
        except FileNotFoundError:
            return False

    def makedirs(self) -> None:
        """Create a local folder. On an object store, nothing: a prefix needs no creating, and a missing
        bucket is an error at the first write (creating buckets, with their policies, is the owner's call)."""
        if not self.remote:
            os.makedirs(self.root, exist_ok=True)

    def listdir(self) -> list[str]:
        """The names directly in the folder (files and sub-folders), sorted; [] when it does not exist."""
        if not self.remote:
            return sorted(os.listdir(self.root)) if os.path.isdir(self.root) else []
        self.fs.invalidate_cache(self.base)
        try:
            entries = self._try("listing the folder", lambda: self.fs.ls(self.base, detail=False, **bounded(self.fs)))
        except FileNotFoundError:
            return []
        return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != self.base})

    def sizes(self) -> dict[str, int]:
        """Every file directly in the folder and its size: one listing (one request on an object store)."""
        if not self.remote:
            out = {}
            for e in self.listdir():
                p = os.path.join(self.root, e)
                if os.path.isfile(p):
                    out[e] = os.path.getsize(p)
            return out
        self.fs.invalidate_cache(self.base)
        try:
            entries = self._try("listing the folder", lambda: self.fs.ls(self.base, detail=True, **bounded(self.fs)))
        except FileNotFoundError:
            return {}
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
                for e in entries if e.get("type") == "file"}

    def size(self, name: str) -> int | None:
        try:
            if not self.remote:
                return os.path.getsize(os.path.join(self.root, name))
            return int(self._try(f"looking at {name}", lambda: self.fs.info(self._p(name), **bounded(self.fs)))["size"])
        except (FileNotFoundError, KeyError):
            return None

    # -- reading ------------------------------------------------------------------
    def open(self, name: str) -> IO[bytes]:
        """A binary file object to read ``name`` (sequential reads are cheap on every backend)."""
        return open_url(self.url(name))

    def read_bytes(self, name: str) -> bytes:
        if not self.remote:
            with open(os.path.join(self.root, name), "rb") as f:
                return f.read()
        return self._try(f"reading {name}", lambda: self.fs.cat_file(self._p(name), **bounded(self.fs)))

    def read_json(self, name: str) -> Any:
        return json.loads(self.read_bytes(name).decode("utf-8"))

    def sha256(self, name: str, chunk: int = 1 << 20) -> tuple[str, int]:
        if self.remote:  # a read cut short is read again from the start
            return self._try(f"reading {name}", lambda: self._sha256(name, chunk))
        return self._sha256(name, chunk)

    def _sha256(self, name: str, chunk: int) -> tuple[str, int]:
        h, n = hashlib.sha256(), 0
        with self.open(name) as f:
            while True:
                b = f.read(chunk)
                if not b:
                    break
                h.update(b)
                n += len(b)
        return h.hexdigest(), n

    # -- writing ------------------------------------------------------------------
    def write_bytes(self, name: str, data: bytes, what: str | None = None) -> str:
        """Atomically (a local temporary file made durable and renamed into place, or one PUT); returns the
        sha256 of what was written (``what`` the file is: named with it when a full disk refuses it)."""
        if not self.remote:
            path = os.path.join(self.root, name)
            try:
                atomic_write(path, data)
            except OSError as e:
                raise WriteFailed.of(e, path, what) from None
        else:
            self._try(f"writing {name}", lambda: self.fs.pipe_file(self._p(name), data, **bounded(self.fs, len(data))))
        return hashlib.sha256(data).hexdigest()

    def write_json(self, name: str, obj: Any, what: str | None = None) -> str:
        """:meth:`write_bytes` of the JSON (indented, as every JSON in OUT); returns its sha256."""
        return self.write_bytes(name, (json.dumps(obj, indent=1) + "\n").encode(), what)

    def remove(self, name: str) -> None:
        try:
            if not self.remote:
                os.remove(os.path.join(self.root, name))
            else:
                self._try(f"removing {name}", lambda: self.fs.rm_file(self._p(name), **bounded(self.fs)))
        except FileNotFoundError:
            pass

    def staging_path(self, name: str) -> str:
        """Where a file is written before :meth:`publish`: beside it (local) or a local spool file (remote)."""
        if not self.remote:
            return os.path.join(self.root, tmp_name(name))
        fd, path = tempfile.mkstemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", suffix=f"-{name}")
        os.close(fd)
        return path

    def publish(self, staged: str, name: str) -> None:
        """Put a finished staged file in place under ``name``, atomically (see the module's docstring)."""
        if not self.remote:
            os.replace(staged, os.path.join(self.root, name))
            return
        try:
            self._try(f"uploading {name}", lambda: self.fs.put_file(staged, self._p(name),
                                                                    **bounded(self.fs, os.path.getsize(staged))))
        finally:
            os.remove(staged)

    def discard(self, staged: str) -> None:
        try:
            os.remove(staged)
        except FileNotFoundError:
            pass

    @staticmethod
    def clean_spool() -> int:
        """Remove spool files of processes that died on this host (a worker killed mid-shard); returns how many."""
        n = 0
        d = tempfile.gettempdir()
        for e in os.listdir(d):
            if not e.startswith(SPOOL_PREFIX):
                continue
            try:
                pid = int(e[len(SPOOL_PREFIX):].split("-", 1)[0])
                os.kill(pid, 0)
                continue  # alive (or not ours to signal): leave it
            except ProcessLookupError:
                pass
            except (ValueError, PermissionError):
                continue
            try:
                os.remove(os.path.join(d, e))
                n += 1
            except OSError:
                pass
        return n

    def contains(self, other: "Location") -> bool:
        """True when ``other`` is this folder or lies inside it."""
        if self.remote != other.remote:
            return False
        if self.remote:
            a, b = self.root.rstrip("/") + "/", other.root.rstrip("/") + "/"
            return b.startswith(a)
        a, b = os.path.realpath(self.root), os.path.realpath(other.root)
        return b == a or b.startswith(a.rstrip(os.sep) + os.sep)
