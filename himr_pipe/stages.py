"""The worker's thread stages and its buffers: a reader running ahead (:class:`Prefetch`), work spread over
threads in order (:func:`ordered_map`), a sink thread taking batches in order (:class:`Sink`), and reused batch
buffers (:class:`BufferPool`).

Generic: they know nothing of images or shards, so the worker (:mod:`.worker`) composes them and the tests
drive them alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class BufferPool:
    """Batch buffers, reused: the decoder resizes into one, encryption writes into another, and the sink
    gives both back once the batch is encoded. A buffer is taken free or made (so nothing ever waits on
    the pool); the queues between the stages bound how many batches are in flight, and so how many
    buffers exist (about five of each kind). Reuse keeps the hot path free of allocations: a fresh
    150 KB-per-image tensor costs page faults on every batch."""

    def __init__(self, batch_size: int):
        import threading

        self.batch_size = batch_size
        self.free: dict[tuple, list] = {}
        self.lock = threading.Lock()

    def take(self, n: int, size: tuple[int, int], device) -> "torch.Tensor":
        """A (n, H, W, 3) uint8 view of a reused buffer on ``device``."""
        import torch

        key = (tuple(size), _device_key(device))
        with self.lock:
            bufs = self.free.get(key)
            buf = bufs.pop() if bufs else None
        if buf is None or buf.shape[0] < n:
            buf = torch.empty((max(n, self.batch_size), *size, 3), dtype=torch.uint8, device=device)
        return buf[:n]

    def allocator(self, size: tuple[int, int]):
        """``alloc(n)`` for a decoder: its batches on the device it decodes to."""
        return lambda n, device: self.take(n, size, device)

    def give_back(self, *views) -> None:
        """Return the buffers behind these batch views (each at most once; other tensors are ignored)."""
        import torch

        seen = set()
        for v in views:
            if not isinstance(v, torch.Tensor) or v.dim() != 4:
                continue
            base = v if v._base is None else v._base
            if id(base) in seen or base.shape[0] < self.batch_size:
                continue
            seen.add(id(base))
            with self.lock:
                self.free.setdefault((tuple(base.shape[1:3]), _device_key(base.device)), []).append(base)


def _device_key(device) -> str:
    """One name per device: "cuda" and a tensor's "cuda:0" must find the same buffers (else a buffer given
    back under one name is never taken under the other, and the pool grows a buffer a batch)."""
    import torch

    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return str(d)


def ordered_map(fn, items, threads: int, ahead: int):
    """Yield (item, ``fn(item)``) for each item, in order, or (item, the exception ``fn`` raised); ``fn`` runs on
    ``threads`` threads of its own (in the caller's thread where ``threads`` <= 1), at most ``ahead`` items ahead
    of the consumer. For work that releases the GIL (the screening's check of coded data: libjpeg-turbo)."""
    def done(x, f):
        try:
            return x, f.result()
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which decides
            return x, e

    if threads <= 1:
        for x in items:
            try:
                yield x, fn(x)
            except Exception as e:  # noqa: BLE001 - as above
                yield x, e
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pool, q = ThreadPoolExecutor(threads, thread_name_prefix="himr-check"), deque()
    try:
        for x in items:
            q.append((x, pool.submit(fn, x)))
            if len(q) >= ahead:
                yield done(*q.popleft())
        while q:
            yield done(*q.popleft())
    finally:
        for _, f in q:
            f.cancel()
        pool.shutdown(wait=False)


class Prefetch:
    """Run a generator in a thread of its own, up to ``depth`` items ahead; its errors reach the consumer."""

    _END = object()

    def __init__(self, gen, depth: int = 2):
        import queue
        import threading

        self.q: queue.Queue = queue.Queue(depth)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(gen,), daemon=True, name="himr-reader")
        self.thread.start()

    def _run(self, gen) -> None:
        try:
            for item in gen:
                if not self._put((item, None)):
                    return
            self._put((self._END, None))
        except BaseException as e:
            self._put((None, e))

    def _put(self, x) -> bool:
        import queue

        while not self.stopped.is_set():
            try:
                self.q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        while True:
            item, err = self.q.get()
            if err is not None:
                raise err
            if item is self._END:
                return
            yield item

    def stop(self) -> None:
        self.stopped.set()


class Sink:
    """A thread that runs ``fn(item, *args)`` on what is put, in order, at most ``depth`` items behind;
    an error there stops it and is raised in the producer at its next ``put`` or at ``close``."""

    def __init__(self, fn, depth: int = 2):
        import queue
        import threading

        self.fn = fn
        self.q: queue.Queue = queue.Queue(depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="himr-sink")
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.q.get()
            if job is None:
                return
            if self.error is None:
                try:
                    self.fn(*job)
                except BaseException as e:
                    self.error = e

    def put(self, item, *args) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((item, *args))

    def close(self) -> None:
        """Wait for everything put to be done; raise the sink's error if there was one."""
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """After a failure elsewhere: let the thread end without waiting for it (what is queued is dropped)."""
        import queue

        if self.error is None:
            self.error = RuntimeError("stopped")
        while True:  # make room for the end mark (only the producer puts, and it is here)
            try:
                self.q.get_nowait()
            except queue.Empty:
                break
        self.q.put_nowait(None)
