"""The worker's overlapped stages: errors cross threads, stopping ends every thread, buffers are reused."""

from __future__ import annotations

import pytest
import torch

from himr_pipe.stages import BufferPool, Prefetch, Sink


def test_a_sink_error_reaches_the_producer_and_stop_ends_the_thread():
    def write(x):
        if x == 2:
            raise OSError(28, "No space left on device")

    sink = Sink(write, depth=2)
    with pytest.raises(OSError, match="No space"):
        for i in range(10):
            sink.put(i)
        sink.close()
    sink.stop()
    sink.thread.join(2)
    assert not sink.thread.is_alive()


def test_stopping_a_full_sink_drops_what_is_queued():
    import threading

    done, hold = [], threading.Event()
    sink = Sink(lambda x: (hold.wait(5), done.append(x)), depth=2)
    for i in range(3):  # the third put returns once the sink holds item 0: then 1 and 2 are queued
        sink.put(i)
    sink.stop()
    hold.set()
    sink.thread.join(5)
    assert not sink.thread.is_alive() and done == [0]  # the one in hand finishes; the queued two are dropped


def test_sink_keeps_order():
    seen = []
    sink = Sink(seen.append, depth=2)
    for i in range(50):
        sink.put(i)
    sink.close()
    assert seen == list(range(50))


def test_a_reader_error_reaches_the_consumer_and_stop_ends_the_reader():
    def read():
        yield 1
        raise ValueError("unreadable")

    with pytest.raises(ValueError, match="unreadable"):
        list(Prefetch(read()))
    reader = Prefetch(iter(range(100)), depth=2)
    assert next(iter(reader)) == 0
    reader.stop()
    reader.thread.join(2)
    assert not reader.thread.is_alive()


def test_buffers_are_reused_once_given_back_and_never_shared_in_flight():
    pool = BufferPool(batch_size=8)
    a = pool.take(8, (4, 4), "cpu")
    b = pool.take(5, (4, 4), "cpu")  # while a is in flight: a buffer of its own
    assert a.data_ptr() != b.data_ptr() and b.shape == (5, 4, 4, 3)
    pool.give_back(a, a, torch.zeros(3))  # twice (none: enc is the decoded batch) and a stray tensor
    c = pool.take(6, (4, 4), "cpu")
    d = pool.take(6, (4, 4), "cpu")
    assert c.data_ptr() == a.data_ptr() and d.data_ptr() not in (a.data_ptr(), b.data_ptr())
    assert pool.take(3, (2, 2), "cpu").shape == (3, 2, 2, 3)  # another size: its own buffers


def test_the_pool_names_a_device_one_way():
    """A buffer given back is found again whatever spelling of its device the next take uses (on a GPU the
    pipeline asks for "cuda" and gives back tensors on "cuda:0")."""
    from himr_pipe.stages import _device_key

    pool = BufferPool(batch_size=2)
    a = pool.take(2, (4, 4), torch.device("cpu"))
    pool.give_back(a)
    assert pool.take(2, (4, 4), "cpu").data_ptr() == a.data_ptr()
    assert _device_key("cpu") == _device_key(torch.device("cpu")) == "cpu"
