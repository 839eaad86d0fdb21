"""A double of systemd-imdsd (systemd 261+): the Varlink service `io.systemd.InstanceMetadata`.

It follows the interface as systemd defines it (src/shared/varlink-io.systemd.InstanceMetadata.c):
* one message per request, JSON ended by a NUL byte, on a Unix stream socket
  (`/run/systemd/io.systemd.InstanceMetadata` on a node; here a file under `dir`, which a test
  mounts over /run/systemd in the binary's namespace);
* `Get` takes `key` (a path appended to the vendor's data URL, beginning with `/`) or `wellKnown`,
  and optionally `interface`, `refreshUSec`, `cache`, `firewallMark` and polkit's
  `allowInteractiveAuthentication`; any other parameter is answered
  `org.varlink.service.InvalidParameter`, as sd-varlink's dispatcher does. It answers
  `{"data": BASE64 of the body, "interface": N}`;
* its errors are the interface's: `KeyNotFound` (the metadata service answered 404),
  `CommunicationFailure` (it could not be reached, or answered another error), `NotSupported`
  (no vendor);
* `GetVendorInfo` answers the vendor's URLs and headers as hwdb describes them;
* a root caller is served without polkit (the daemon asks polkit only for other uids), so the
  double asks nothing.

Like the daemon, it reaches the metadata service itself: for `amazon-ec2` it takes an IMDSv2
session token (`PUT` with `X-aws-ec2-metadata-token-ttl-seconds`) and sends it with every data
request; for `gcp` it sends `Metadata-Flavor: Google`. `upstream` is where that service is (the
IMDS or GCE metadata double on the host's loopback, as the real one is at 169.254.169.254).
Every request is recorded in `calls`.
"""

import base64
import json
import os
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

SOCKET_NAME = "io.systemd.InstanceMetadata"
PREFIX = "io.systemd.InstanceMetadata."
GET_INPUTS = {"key", "wellKnown", "interface", "refreshUSec", "cache", "firewallMark",
              "allowInteractiveAuthentication"}
VENDORS = {
    "amazon-ec2": {"tokenUrl": "/latest/api/token", "dataUrl": "/latest",
                   "tokenHeaderName": "X-aws-ec2-metadata-token",
                   "refreshHeaderName": "X-aws-ec2-metadata-token-ttl-seconds", "extraHeader": []},
    "gcp": {"dataUrl": "/computeMetadata/v1", "extraHeader": ["Metadata-Flavor: Google"]},
}


class ImdsdDouble:
    def __init__(self, dir: Path, upstream: str, vendor="amazon-ec2"):
        self.dir = Path(dir)
        self.path = self.dir / SOCKET_NAME
        self.upstream = upstream.rstrip("/")
        self.vendor = vendor
        self.calls: list[dict] = []
        self.sock = None

    # -- the upstream metadata service, as the daemon talks to it
    def _fetch(self, key: str) -> tuple[int, bytes]:
        v = VENDORS[self.vendor]
        headers = dict(h.split(": ", 1) for h in v["extraHeader"])
        if "tokenUrl" in v:
            req = urllib.request.Request(self.upstream + v["tokenUrl"], method="PUT",
                                         headers={v["refreshHeaderName"]: "300"})
            with urllib.request.urlopen(req, timeout=5) as r:
                headers[v["tokenHeaderName"]] = r.read().decode()
        req = urllib.request.Request(self.upstream + v["dataUrl"] + key, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, b""

    def _answer(self, q: dict) -> dict:
        method = q.get("method", "")
        params = q.get("parameters") or {}
        if method == PREFIX + "GetVendorInfo":
            v = VENDORS[self.vendor]
            return {"parameters": {"vendor": self.vendor, "dataUrl": "http://169.254.169.254" +
                                   v["dataUrl"], "extraHeader": v["extraHeader"]}}
        if method != PREFIX + "Get":
            return {"error": "org.varlink.service.MethodNotFound", "parameters": {"method": method}}
        for k in params:
            if k not in GET_INPUTS:
                return {"error": "org.varlink.service.InvalidParameter",
                        "parameters": {"parameter": k}}
        key = params.get("key")
        # imds_key_is_valid(): begins with "/", ASCII, no control character.
        if not isinstance(key, str) or not key.startswith("/") or not key.isascii() or \
                any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
            return {"error": "org.varlink.service.InvalidParameter", "parameters": {"parameter": "key"}}
        if self.vendor not in VENDORS:
            return {"error": PREFIX + "NotSupported", "parameters": {}}
        try:
            status, body = self._fetch(key)
        except OSError:
            return {"error": PREFIX + "CommunicationFailure", "parameters": {}}
        if status == 404:
            return {"error": PREFIX + "KeyNotFound", "parameters": {}}
        if status != 200:
            return {"error": PREFIX + "CommunicationFailure", "parameters": {}}
        return {"parameters": {"data": base64.b64encode(body).decode(), "interface": 2}}

    # -- the socket
    def _serve(self, sock):
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with conn:
            buf = b""
            while True:
                while b"\0" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                msg, buf = buf.split(b"\0", 1)
                q = json.loads(msg)
                self.calls.append(q)
                conn.sendall(json.dumps(self._answer(q)).encode() + b"\0")

    def start(self) -> "ImdsdDouble":
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o666)
        self.sock.listen(16)
        threading.Thread(target=self._serve, args=(self.sock,), daemon=True).start()
        return self

    def stop(self):
        if self.sock:
            self.sock.close()
            self.sock = None

    def keys(self) -> list[str]:
        return [c["parameters"].get("key") for c in self.calls if c["method"] == PREFIX + "Get"]
