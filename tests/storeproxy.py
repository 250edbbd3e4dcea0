"""A TCP proxy in front of the suite's local S3 that can make the store go away or stall, on cue.

``StoreProxy(host, port)`` forwards every connection to the real server. After ``fail_after`` uploads of a
shard (requests ``PUT /...-NNNNNN.tar``) it turns ``mode``: ``"down"`` closes every connection and stops
listening (connection refused, as a store that went away), ``"stall"`` keeps accepting and reading but never
answers (as a store that hangs). :meth:`up` brings it back on the same port.
"""

from __future__ import annotations

import re
import socket
import threading

SHARD_PUT = re.compile(rb"PUT /[^ ]*-\d{6}\.tar[ ?]")


class StoreProxy:
    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.mode = "up"
        self.fail_after: int | None = None
        self.fail_mode = "down"
        self.shard_puts = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.port = 0
        self._listen()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self, fail_after: int, mode: str) -> None:
        """Turn ``mode`` when the ``fail_after``-th shard upload arrives (it is never answered)."""
        with self._lock:
            self.shard_puts, self.fail_after, self.fail_mode = 0, fail_after, mode

    def up(self) -> None:
        with self._lock:
            self.mode, self.fail_after = "up", None
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        self._go("down")

    # -- internals -------------------------------------------------------------------
    def _listen(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.port = s.getsockname()[1]
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _go(self, mode: str) -> None:
        self.mode = mode
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        self._conns.clear()
        if mode == "down" and self._listener is not None:
            self._listener.close()
            self._listener = None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self.mode == "stall":
                threading.Thread(target=self._swallow, args=(client,), daemon=True).start()
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    @staticmethod
    def _swallow(c: socket.socket) -> None:
        try:
            while c.recv(65536):
                pass
        except OSError:
            pass

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream and self.fail_after is not None:
                    with self._lock:
                        self.shard_puts += len(SHARD_PUT.findall(data))
                        trip = self.fail_after is not None and self.shard_puts >= self.fail_after
                        if trip:
                            self.fail_after = None
                            self._go(self.fail_mode)
                    if trip:
                        if self.fail_mode == "stall":
                            self._swallow(src)
                        return
                if self.mode != "up":
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass
