"""A fault-injecting HTTP/1.1 proxy, for the fault matrix (tests/integration/test_faults.py,
docs/reliability.md).

`FaultProxy(upstream)` listens on 127.0.0.1 and forwards every request to `upstream` (a plain
`http://host:port`: moto, OpenBao) unchanged: same method, target, headers (`Host` included, so a
SigV4 signature made for the proxy's address still verifies at moto) and body. Upstream's answer
is returned with its status and headers (hop-by-hop headers dropped, `Content-Length` recomputed).
A manifest points its `endpoint` (aws) or `address` (vault) at `proxy.url`.

Rules
-----
`proxy.inject(action, **match)` adds a rule and returns it. Rules are tried in the order they
were added; the first one that matches a request and still has injections left acts on it; a
request no rule acts on is forwarded. Match criteria (all optional, all must hold):

* `method`: the HTTP method, case-insensitive (`"POST"`).
* `path`: a regular expression searched in the request target (path and query),
  e.g. `r"^/v1/kv-1234/data/"`.
* `headers`: `{name: value}`, names case-insensitive, values exact. `GET_SECRET_VALUE` is
  `{"X-Amz-Target": "secretsmanager.GetSecretValue"}`.
* `body`: text or bytes that must occur in the request body (an AWS `SecretId`, say).
* `window`: `(start, end)` seconds since the proxy started during which the rule is active
  (`end=None`: no end).

Counting: of the requests that match (inside the window), the first `skip` are let through, the
next `times` get the action (`times=None`: every one after that). `rule.seen` counts matching
requests, `rule.applied` the injections.

Actions
-------
* `Respond(status, body=b"", headers=())`: answer without asking upstream (a 503, a
  `ThrottlingException`, a 429 with `Retry-After`, a synthesized success).
* `Hang(seconds=None)`: read the request and never answer; the connection is held until the
  client closes it, `seconds` pass, or the proxy stops.
* `ResetMidBody(keep=0.5)`: ask upstream, send its status and headers with the real
  `Content-Length` and the first `keep` fraction of the body (at least 1 byte, at most all but
  one), then reset the connection (`SO_LINGER` 0: the peer gets a TCP RST, not a FIN).
* `Trickle(bytes_per_second=1.0)`: ask upstream, send status and headers at once, then the body
  at that rate, until it is all sent or the client goes away.
* `Oversize(size, prefix=b"", suffix=b"", fill=b"A", chunked=False)`: answer 200 with a body of
  exactly `size` bytes, `prefix + fill... + suffix`, streamed in 64 KiB pieces, announced with
  `Content-Length: size` (or sent with `Transfer-Encoding: chunked` and no length).

Records
-------
Every request is appended to `proxy.log` as a dict: `t` (seconds since the proxy started, when
the request was read), `method`, `path`, `target` (`X-Amz-Target`, if any), `action` (`forward`
or the action's name), `rule` (its index, or None), `status` (what was sent, None if nothing),
`sent` (body bytes sent) and `held` (seconds a hang or trickle lasted).

Only what the tests need: no TLS to upstream, no `Expect: 100-continue`, one upstream connection
per request.
"""

import http.client
import json
import os
import re
import select
import socket
import struct
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .net import free_port

GET_SECRET_VALUE = {"X-Amz-Target": "secretsmanager.GetSecretValue"}

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
              "trailer", "upgrade", "content-length"}


def aws_error(status: int, code: str, message: str, extra_headers=()) -> "Respond":
    """An AWS JSON-protocol error answer, as Secrets Manager sends it."""
    body = json.dumps({"__type": code, "message": message}).encode()
    return Respond(status, body, [("Content-Type", "application/x-amz-json-1.1"),
                                  ("x-amzn-ErrorType", code),
                                  ("x-amzn-RequestId", "00000000-0000-4000-8000-000000000000"),
                                  *extra_headers])


THROTTLING = ("ThrottlingException", "Rate exceeded")


# -- actions

class Action:
    name = "action"

    def __repr__(self):
        return self.name


class Respond(Action):
    name = "respond"

    def __init__(self, status: int, body: bytes | str = b"", headers=()):
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.headers = list(headers)

    def __repr__(self):
        return f"respond {self.status}"


class Hang(Action):
    name = "hang"

    def __init__(self, seconds: float | None = None):
        self.seconds = seconds


class ResetMidBody(Action):
    name = "reset"

    def __init__(self, keep: float = 0.5):
        self.keep = keep


class Trickle(Action):
    name = "trickle"

    def __init__(self, bytes_per_second: float = 1.0):
        self.interval = 1.0 / bytes_per_second


class Oversize(Action):
    name = "oversize"

    def __init__(self, size: int, prefix: bytes = b"", suffix: bytes = b"", fill: bytes = b"A",
                 chunked: bool = False):
        assert size >= len(prefix) + len(suffix) and fill
        self.size = size
        self.prefix = prefix
        self.suffix = suffix
        self.fill = fill
        self.chunked = chunked


class Rule:
    def __init__(self, index, action, method=None, path=None, headers=None, body=None,
                 times=None, skip=0, window=None):
        self.index = index
        self.action = action
        self.method = method.upper() if method else None
        self.path = re.compile(path) if path else None
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.body = body.encode() if isinstance(body, str) else body
        self.times = times
        self.skip = skip
        self.window = window
        self.seen = 0
        self.applied = 0

    def matches(self, method, target, headers, body, t) -> bool:
        if self.method and method.upper() != self.method:
            return False
        if self.path and not self.path.search(target):
            return False
        for k, v in self.headers.items():
            if headers.get(k) != v:
                return False
        if self.body is not None and self.body not in body:
            return False
        if self.window:
            start, end = self.window
            if t < start or (end is not None and t >= end):
                return False
        return True

    def take(self) -> bool:
        """Counts one matching request; True when this one gets the action."""
        self.seen += 1
        if self.seen <= self.skip:
            return False
        if self.times is not None and self.applied >= self.times:
            return False
        self.applied += 1
        return True

    def __repr__(self):
        return f"<rule {self.index}: {self.action!r}, applied {self.applied}/{self.seen}>"


class FaultProxy:
    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int | None = None):
        u = urllib.parse.urlsplit(upstream)
        assert u.scheme == "http", "the fault proxy speaks plain http to its upstream"
        self.upstream = (u.hostname, u.port or 80)
        self.host = host
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        self.rules: list[Rule] = []
        self.log: list[dict] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.started = None
        self.server = None

    # -- rules and records
    def inject(self, action: Action, *, method=None, path=None, headers=None, body=None,
               times=None, skip=0, window=None) -> Rule:
        with self.lock:
            r = Rule(len(self.rules), action, method, path, headers, body, times, skip, window)
            self.rules.append(r)
        return r

    def clear(self) -> None:
        """Removes every rule: from now on everything is forwarded."""
        with self.lock:
            self.rules = []

    def entries(self, action: str | None = None, target: str | None = None) -> list[dict]:
        with self.lock:
            return [e for e in self.log
                    if (action is None or e["action"] == action)
                    and (target is None or e["target"] == target)]

    # -- lifecycle
    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_one(self):
                proxy._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_LIST = handle_one

        self.server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.server.daemon_threads = True
        self.started = time.monotonic()
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    # -- the request path
    def _read_body(self, h) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += h.rfile.read(size)
                h.rfile.readline()
        n = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(n) if n else b""

    def _handle(self, h) -> None:
        t = time.monotonic() - self.started
        body = self._read_body(h)
        headers = {k.lower(): v for k, v in h.headers.items()}
        action, rule = None, None
        with self.lock:
            for r in self.rules:
                if r.matches(h.command, h.path, headers, body, t) and r.take():
                    action, rule = r.action, r
                    break
        entry = {"t": t, "method": h.command, "path": h.path,
                 "target": headers.get("x-amz-target"),
                 "action": action.name if action else "forward",
                 "rule": rule.index if rule else None, "status": None, "sent": 0, "held": 0.0}
        with self.lock:
            self.log.append(entry)
        try:
            if action is None:
                status, reason, rheaders, rbody = self._forward(h, body)
                self._send_whole(h, status, reason, rheaders, rbody, entry)
            elif isinstance(action, Respond):
                self._send_whole(h, action.status, None, action.headers, action.body, entry)
            elif isinstance(action, Hang):
                self._hang(h, action, entry)
            elif isinstance(action, ResetMidBody):
                self._reset(h, action, body, entry)
            elif isinstance(action, Trickle):
                self._trickle(h, action, body, entry)
            elif isinstance(action, Oversize):
                self._oversize(h, action, entry)
            else:
                raise TypeError(action)
        except OSError:
            h.close_connection = True  # the client went away

    def _forward(self, h, body: bytes):
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
            for k, v in h.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    conn.putheader(k, v)
            if body or "Content-Length" in h.headers or h.command in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            rheaders = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
            return resp.status, resp.reason, rheaders, data
        finally:
            conn.close()

    def _head(self, h, status, reason, headers, length: int | None) -> bytes:
        reason = reason or http.client.responses.get(status, "")
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{k}: {v}" for k, v in headers if k.lower() not in HOP_BY_HOP]
        lines.append(f"Content-Length: {length}" if length is not None
                     else "Transfer-Encoding: chunked")
        if h.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send_whole(self, h, status, reason, headers, body, entry):
        h.wfile.write(self._head(h, status, reason, headers, len(body))
                      + (b"" if h.command == "HEAD" else body))
        entry["status"] = status
        entry["sent"] = len(body)

    def _client_gone(self, h) -> bool:
        try:
            readable, _, _ = select.select([h.connection], [], [], 0)
            return bool(readable) and h.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _hang(self, h, action, entry):
        h.close_connection = True
        start = time.monotonic()
        while not self.stopping.wait(0.1):
            if self._client_gone(h):
                break
            if action.seconds is not None and time.monotonic() - start >= action.seconds:
                break
        entry["held"] = time.monotonic() - start

    def _reset(self, h, action, body, entry):
        status, reason, rheaders, data = self._forward(h, body)
        keep = min(max(1, int(len(data) * action.keep)), max(len(data) - 1, 0))
        h.close_connection = True
        h.wfile.write(self._head(h, status, reason, rheaders, len(data)) + data[:keep])
        entry["status"] = status
        entry["sent"] = keep
        time.sleep(0.05)  # let the partial answer reach the client before the reset
        sock = h.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # close() would wait for the handler's file objects; closing the descriptor itself
        # with linger 0 sends the RST now.
        os.close(sock.detach())

    def _trickle(self, h, action, body, entry):
        status, reason, rheaders, data = self._forward(h, body)
        h.close_connection = True
        h.wfile.write(self._head(h, status, reason, rheaders, len(data)))
        entry["status"] = status
        start = time.monotonic()
        try:
            for i in range(len(data)):
                if self.stopping.wait(action.interval) or self._client_gone(h):
                    break
                h.wfile.write(data[i:i + 1])
                entry["sent"] = i + 1
        finally:
            entry["held"] = time.monotonic() - start

    def _oversize(self, h, action, entry):
        h.close_connection = True
        h.wfile.write(self._head(h, 200, "OK", [("Content-Type", "application/json")],
                                 None if action.chunked else action.size))
        entry["status"] = 200
        chunk = 64 * 1024
        remaining_fill = action.size - len(action.prefix) - len(action.suffix)
        filler = (action.fill * (chunk // len(action.fill) + 1))[:chunk]

        def pieces():
            yield action.prefix
            left = remaining_fill
            while left > 0:
                n = min(left, chunk)
                yield filler[:n]
                left -= n
            yield action.suffix

        for p in pieces():
            if not p:
                continue
            if self.stopping.is_set():
                return
            h.wfile.write(b"%x\r\n%s\r\n" % (len(p), p) if action.chunked else p)
            entry["sent"] += len(p)
        if action.chunked:
            h.wfile.write(b"0\r\n\r\n")
