"""The error hierarchy: every failure the commands report carries its own exit code.

A module raises the narrowest class that says what went wrong (``SchemeError``, ``SourceError``, ``DataError``,
...); each derives from one of the two bases here, which decides the exit code. The command line maps them once
(``himr_pipe.cli``): one line on stderr, ``himr-pipe: error: <message>``, and the exit code; no traceback.

* :class:`Refused` (exit 2): refused before any work, or the input as a whole is unusable; nothing was changed.
* :class:`Failed` (exit 1): the run started and stopped; what was finished is kept and a rerun resumes.

Exit 3 (some inputs skipped, the rest written) is a result, not an error: the commands return it themselves.
One input that cannot be used is :class:`InputError`, which is not a command's failure: the stage that meets it
skips the input with its ``reason`` (every input is accounted for).

The classes also keep their built-in bases (``ValueError``, ``OSError``) where callers catch those.
"""

from __future__ import annotations

import errno
import os

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_PARTIAL = 0, 1, 2, 3  # the commands' exit codes, stated once


class HimrError(Exception):
    """A failure a command reports in one line with :attr:`exit_code`."""

    exit_code = EXIT_FAILED


class Refused(HimrError):
    """Refused before any work (a bad option, an unusable SRC or OUT, a checkpoint that does not fit): exit 2."""

    exit_code = EXIT_REFUSED


class Failed(HimrError):
    """The run started and stopped (a shard, the store, the disk): exit 1; finished work is kept."""

    exit_code = EXIT_FAILED


class InputError(Exception):
    """One input can't be read or decoded; ``reason`` is a short, path-free category + detail. The input is
    skipped with it (sources, header check, decoders); the run goes on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class WriteFailed(Failed, OSError):
    """A local file could not be written (a full disk, a quota, a read-only or failing device): exit 1, one line
    naming the file and what it is; finished work is kept and the same command resumes."""

    DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)

    def __init__(self, message: str, err: int | None = None, strerror: str | None = None):
        super().__init__(message)
        self.message, self.errno, self.strerror = message, err, strerror

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return (type(self), (self.message, self.errno, self.strerror))

    @classmethod
    def of(cls, e: OSError, path, what: str | None = None) -> OSError:
        """``e`` as a WriteFailed naming ``what`` (the file's role) and ``path`` when its disk refused the file;
        any other error as it is."""
        if isinstance(e, cls) or e.errno not in cls.DISK_ERRORS:
            return e
        return cls(f"cannot write {what + ' ' if what else ''}{os.fspath(path)} ({e.strerror or e}); free space on "
                   "that disk (or make it writable) and rerun the same command: finished work is kept",
                   e.errno, e.strerror)
