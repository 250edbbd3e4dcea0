"""How a run stops when a store fails: the run's "a request gave up" event; a backend's own errors; a missing one;
the orphaned errors an async backend's loop would print.

Once one request to a store has given up (:class:`~himr_pipe.storage.StoreUnavailable`), the event is set, in
whichever process: the distributor starts no new shard, and every request still retrying gives up at its next
try (:func:`himr_pipe.storage.retrying`), so the whole run stops within the store's patience plus one request's
time limit. (Imports nothing of himr_pipe: the house's floors.)
"""

from __future__ import annotations

from typing import Any

_GAVE_UP: Any = None  # this process's event: a threading.Event, or the driver's multiprocessing Event


def share_give_up(event=None):
    """The event that says "a request gave up" for this process: ``event`` (a worker process gets its driver's,
    a ``multiprocessing`` Event), else a fresh one for this run (returned, for the distributor to hand on)."""
    global _GAVE_UP
    if event is None:
        import threading

        event = threading.Event()
    _GAVE_UP = event
    return event


def give_up() -> None:
    if _GAVE_UP is not None:
        _GAVE_UP.set()


def gave_up() -> bool:
    """Has a request of this run given up on a store (then no new shard starts)?"""
    return _GAVE_UP is not None and _GAVE_UP.is_set()


def foreign(exc: BaseException) -> bool:
    """An error of a backend's own type that no rule knows (not Python's, not ours, no OSError): hf:// without a
    network raises httpx's ConnectError."""
    return not isinstance(exc, OSError) and type(exc).__module__.split(".")[0] not in ("builtins", "himr_pipe")


def backend_package(scheme: str) -> str:
    """The package that gives fsspec the ``scheme`` (``gs`` -> gcsfs), from fsspec's own table."""
    from fsspec.registry import known_implementations

    cls = known_implementations.get(scheme, {}).get("class", "")
    return cls.split(".", 1)[0] if cls else f"the fsspec backend for {scheme}://"


def quiet_orphaned_errors(fs, transient) -> None:
    """On an async filesystem's event loop, drop asyncio's "Task exception was never retrieved" traceback for a
    transient connection error: aiohttp leaves one behind when a store drops a connection mid-upload, after
    the request itself already failed, and :func:`himr_pipe.storage.retrying` has reported that request in one
    line (``transient``: :func:`himr_pipe.storage.transient`). Any other
    unhandled error still goes to asyncio's default handler."""
    loop = getattr(fs, "loop", None)
    if loop is None or getattr(loop, "_himr_quiet", False):
        return

    def handler(lp, context):
        exc = context.get("exception")
        if exc is not None and transient(exc):
            return
        lp.default_exception_handler(context)

    loop.set_exception_handler(handler)
    loop._himr_quiet = True
