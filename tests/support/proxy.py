"""A TCP proxy that makes a server come up late: for `down_for` seconds after the first
connection it accepts and immediately closes connections (what a client sees from a backend that
is not up yet behind a NAT or load balancer), then forwards bytes both ways. With `netns` (a
support.netns.NetNs) it listens in that network namespace and forwards from the host's: a relay
that lets a binary run in the namespace reach a server on the host's loopback."""

from contextlib import nullcontext

import socket
import threading
import time

from .net import free_port


class LateProxy:
    def __init__(self, target_port: int, down_for: float, host: str = "127.0.0.1", port: int | None = None,
                 netns=None):
        self.netns = netns
        self.target = ("127.0.0.1", target_port)
        self.down_for = down_for
        self.host = host
        self.port = port or free_port()
        self.first_contact = None
        self.refused = 0
        self.forwarded = 0
        self._stop = threading.Event()
        self._sock = None

    def start(self) -> "LateProxy":
        with self.netns.inside() if self.netns else nullcontext():
            self._sock = socket.socket()
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((self.host, self.port))
            self._sock.listen(64)
        self._sock.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._sock:
            self._sock.close()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            now = time.monotonic()
            if self.first_contact is None:
                self.first_contact = now
            if now - self.first_contact < self.down_for:
                self.refused += 1
                conn.close()
                continue
            self.forwarded += 1
            threading.Thread(target=self._pipe_pair, args=(conn,), daemon=True).start()

    def _pipe_pair(self, client):
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return

        def pump(src, dst):
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        pump(upstream, client)
        client.close()
        upstream.close()
