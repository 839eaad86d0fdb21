"""The common part of the HTTP doubles: a threaded server on 127.0.0.1 that can be down (the port
is bound but refuses connections), serve TLS, and record every request. With `netns` (a
support.netns.NetNs) its listening socket is made in that network namespace, where it may take
169.254.169.254:80 or 127.0.0.1:443 as the real services do; it is still served from the host's
threads."""

import json
import socket
import ssl
import threading
from contextlib import nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from .net import free_port


class Request:
    def __init__(self, method, path, query, headers):
        self.method = method
        self.path = path
        self.query = query          # dict of the query parameters
        self.headers = headers      # lower-cased names

    def __repr__(self):
        return f"{self.method} {self.path} {self.query}"


class HttpDouble:
    """Subclasses implement `handle(req) -> (status, body, headers)` (body: bytes, str or a dict
    sent as JSON). `down=True` keeps the port refusing connections until `up()`."""

    scheme = "http"

    def __init__(self, host="127.0.0.1", port=None, down=False, tls: ssl.SSLContext | None = None,
                 netns=None):
        self.host = host
        self.netns = netns
        self.port = port or free_port()
        self.tls = tls
        self.down = down
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.server = None
        self._serving = threading.Event()
        self._stopping = threading.Event()
        self._activate = threading.Event()

    @property
    def url(self):
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self):
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                double._dispatch(self, "GET")

            def do_POST(self):
                double._dispatch(self, "POST")

            def do_PUT(self):
                double._dispatch(self, "PUT")

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client that hangs up or fails the TLS handshake is not our problem

        with self.netns.inside() if self.netns else nullcontext():
            self.server = Server((self.host, self.port), Handler, bind_and_activate=False)
        self.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.server_bind()  # bound: the port is ours, but refuses connections until listen()
        if self.tls:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True,
                                                      do_handshake_on_connect=False)
        if not self.down:
            self._activate.set()

        def serve():
            while not self._activate.wait(0.05):
                if self._stopping.is_set():
                    return
            if self._stopping.is_set():
                return
            self.server.server_activate()
            self._serving.set()
            self.server.serve_forever(poll_interval=0.05)

        threading.Thread(target=serve, daemon=True).start()
        if not self.down:
            self._serving.wait(5)
        return self

    def up(self):
        """Starts accepting connections (for a double started with down=True)."""
        self._activate.set()
        self._serving.wait(5)

    def stop(self):
        if self.server:
            self._stopping.set()
            if self._serving.is_set():
                self.server.shutdown()
            self.server.server_close()

    # -- plumbing
    def _dispatch(self, h, method):
        parts = urlsplit(h.path)
        req = Request(method, parts.path, dict(parse_qsl(parts.query, keep_blank_values=True)),
                      {k.lower(): v for k, v in h.headers.items()})
        length = int(h.headers.get("Content-Length") or 0)
        if length:
            h.rfile.read(length)
        with self.lock:
            self.requests.append(req)
        result = self.handle(req)
        if result is None:  # the handler answered (or dropped the connection) itself
            return
        status, body, headers = result
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = [("Content-Type", "application/json; charset=utf-8"), *headers]
        elif isinstance(body, str):
            body = body.encode()
        try:
            h.send_response(status)
            for k, v in headers:
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except OSError:
            pass

    def handle(self, req):  # pragma: no cover - abstract
        raise NotImplementedError

    def count(self, path_part: str) -> int:
        """How many requests had `path_part` in their path."""
        with self.lock:
            return sum(1 for r in self.requests if path_part in r.path)
