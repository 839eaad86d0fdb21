"""A faithful AWS IMDSv2 double.

What it enforces, as EC2's Instance Metadata Service does:
* `PUT /latest/api/token` needs `X-aws-ec2-metadata-token-ttl-seconds` in 1..21600 (else 400) and
  is refused with 403 when it carries `X-Forwarded-For`; the answer repeats the TTL header.
* every `GET` needs a valid, unexpired `X-aws-ec2-metadata-token` (else 401);
* `/latest/meta-data/iam/security-credentials/` lists the role, `.../ROLE` gives credentials
  minted by the server's real `sts:AssumeRole` (the first argument: a support.moto.Moto, whose
  signature checks then accept them, or a support.localstack.LocalStack; anything with
  `assume_role(role) -> {AccessKeyId, SecretAccessKey, Token, Expiration}`),
  `/latest/dynamic/instance-identity/document` gives the region;
* `/latest/meta-data/placement/availability-zone`, `.../availability-zone-id`, `.../region`,
  `/latest/meta-data/instance-id`, `.../instance-type`, `.../ami-id`, `.../local-ipv4` (text),
  `/latest/meta-data/placement/` and `/latest/meta-data/` (directory listings). As on EC2, a leaf
  asked for with a trailing slash answers the same (botocore asks for
  `placement/availability-zone/` to learn the region);
* `/latest/meta-data/hostname` and `/latest/user-data`, only when given (`hostname=`,
  `user_data=`; what systemd-imds-import reads on a node).

What it leaves out: every other metadata category (network interfaces, block devices, tags,
spot and events), IMDSv1 together with IMDSv2 (it is one or the other: `v1_only`),
the hop limit (it cannot see TTLs), `instance-identity/signature` and `/pkcs7`, and
credential rotation (each GET of the role mints fresh credentials).

Knobs for tests: `v1_only` (the token PUT is not supported, GETs need no token: an old
IMDSv1-only metadata server), `listen_after` (the port refuses connections for that many seconds,
as at early boot), `corrupt_secret_key` (credentials whose secret key moto will reject),
`role=None` (no instance profile attached), `netns` (a support.netns.NetNs: the listening socket
is made in that network namespace, for example on 169.254.169.254:80 where the vendors' SDKs look
by default; the double's own calls to STS still leave from the host's namespace). Every request
is recorded in `requests`.

Fault knobs (tests/integration/test_faults.py; all off by default):
* `hang_token_puts=N`: the first N token PUTs are read and never answered (the connection is held
  open until the client gives up or the double stops); `math.inf` hangs every one. Hung PUTs are
  counted in `hung`.
* `fail_creds_times=N`: the first N GETs under `/latest/meta-data/iam/security-credentials/`
  (the role listing or the role's credentials) answer `fail_creds_status` (500) with a short
  body; counted in `failed_creds`.
"""

import json
import select
import secrets
import socket
import threading
import time
from contextlib import nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .net import free_port

TOKEN_PATH = "/latest/api/token"
CREDS_PATH = "/latest/meta-data/iam/security-credentials/"
DOC_PATH = "/latest/dynamic/instance-identity/document"
META = "/latest/meta-data/"
ACCOUNT_ID = "123456789012"
INSTANCE_ID = "i-0123456789abcdef0"


class ImdsDouble:
    def __init__(self, sts, role="node", region="us-east-1", v1_only=False,
                 listen_after=0.0, corrupt_secret_key=False, host="127.0.0.1", port=None,
                 hang_token_puts=0, fail_creds_times=0, fail_creds_status=500, netns=None,
                 hostname=None, user_data=None):
        self.sts = sts  # whose sts:AssumeRole mints the role's credentials (moto or LocalStack)
        self.netns = netns
        self.role = role
        self.region = region
        self.v1_only = v1_only
        self.listen_after = listen_after
        self.corrupt_secret_key = corrupt_secret_key
        self.hang_token_puts = hang_token_puts
        self.fail_creds_times = fail_creds_times
        self.fail_creds_status = fail_creds_status
        self.hostname = hostname  # served at meta-data/hostname when set
        self.user_data = user_data  # served at /latest/user-data when set (EC2: 404 when none)
        self.hung = 0
        self.failed_creds = 0
        self.host = host
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        self.tokens = {}  # token -> expiry (monotonic)
        self.requests = []  # (method, path, headers)
        self.handed_out = []  # every token and secret credential given out, for leak checks
        self.lock = threading.Lock()
        self.server = None

    # -- lifecycle
    def start(self) -> "ImdsDouble":
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_PUT(self):
                double._handle(self, "PUT")

            def do_GET(self):
                double._handle(self, "GET")

        with self.netns.inside() if self.netns else nullcontext():
            # The socket belongs to the namespace it is made in; the threads stay in the host's.
            self.server = ThreadingHTTPServer((self.host, self.port), Handler, bind_and_activate=False)
        self.server.daemon_threads = True
        self.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.server_bind()  # the port is ours but refuses connections until listen()

        self.serving = threading.Event()
        self.stopping = threading.Event()

        if not self.listen_after:
            self.server.server_activate()

        def serve():
            if self.listen_after:
                if self.stopping.wait(self.listen_after):
                    return
                self.server.server_activate()
            self.serving.set()
            self.server.serve_forever(poll_interval=0.05)

        threading.Thread(target=serve, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.stopping.set()
            if self.serving.is_set():
                self.server.shutdown()
            self.server.server_close()

    # -- protocol
    def _reply(self, h, status, body=b"", headers=()):
        if isinstance(body, str):
            body = body.encode()
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Content-Type", "text/plain")
        h.end_headers()
        h.wfile.write(body)

    def _handle(self, h, method):
        path = h.path.split("?", 1)[0]
        with self.lock:
            self.requests.append((method, path, {k.lower(): v for k, v in h.headers.items()}))
        if method == "PUT":
            with self.lock:
                hang = self.hung < self.hang_token_puts
                if hang:
                    self.hung += 1
            if hang:
                return self._hang(h)
            return self._token(h, path)
        if not self.v1_only:
            tok = h.headers.get("X-aws-ec2-metadata-token")
            with self.lock:
                exp = self.tokens.get(tok)
            if exp is None or exp < time.monotonic():
                return self._reply(h, 401, "Unauthorized")
        if path.startswith(CREDS_PATH):
            with self.lock:
                fail = self.failed_creds < self.fail_creds_times
                if fail:
                    self.failed_creds += 1
            if fail:
                return self._reply(h, self.fail_creds_status, "Internal Server Error")
        if path == CREDS_PATH:
            if self.role is None:
                return self._reply(h, 404, "Not Found")
            return self._reply(h, 200, self.role)
        if path.startswith(CREDS_PATH) and self.role and path[len(CREDS_PATH):] == self.role:
            c = self.sts.assume_role(self.role)
            if self.corrupt_secret_key:
                c["SecretAccessKey"] = "wrong" + c["SecretAccessKey"][5:]
            with self.lock:
                self.handed_out += [c["SecretAccessKey"], c["Token"]]
            doc = {"Code": "Success", "LastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "Type": "AWS-HMAC", **c}
            return self._reply(h, 200, json.dumps(doc, indent=2))
        if path == DOC_PATH:
            doc = {"accountId": ACCOUNT_ID, "architecture": "x86_64",
                   "availabilityZone": f"{self.region}a", "imageId": "ami-0123456789abcdef0",
                   "instanceId": INSTANCE_ID, "instanceType": "m6i.large",
                   "privateIp": "10.0.0.10", "region": self.region, "version": "2017-09-30"}
            return self._reply(h, 200, json.dumps(doc, indent=2))
        if path == "/latest/user-data" and self.user_data is not None:
            return self._reply(h, 200, self.user_data)
        meta = self._metadata()
        if path in meta:
            return self._reply(h, 200, meta[path])
        if path.endswith("/") and path[:-1] in meta:
            return self._reply(h, 200, meta[path[:-1]])  # a leaf with a trailing slash
        return self._reply(h, 404, "Not Found")

    def _metadata(self):
        """The plain metadata categories: path -> text (directories list their entries)."""
        leaves = {
            "ami-id": "ami-0123456789abcdef0",
            "instance-id": INSTANCE_ID,
            "instance-type": "m6i.large",
            "local-ipv4": "10.0.0.10",
            "placement/availability-zone": f"{self.region}a",
            "placement/availability-zone-id": "{}{}{}-az1".format(*(lambda p: (p[0], p[1][0], p[-1]))(
                self.region.split("-"))),
            "placement/region": self.region,
        }
        meta = {META + k: v for k, v in leaves.items()}
        meta[META + "placement/"] = "availability-zone\navailability-zone-id\nregion"
        top = ["ami-id", "instance-id", "instance-type", "local-ipv4", "placement/"]
        if self.hostname is not None:
            meta[META + "hostname"] = self.hostname
            top.append("hostname")
        if self.role is not None:
            top.append("iam/")
            meta[META + "iam/"] = "security-credentials/"
        meta[META] = "\n".join(sorted(top))
        return meta

    def _token(self, h, path):
        if path != TOKEN_PATH or self.v1_only:
            return self._reply(h, 404 if self.v1_only else 403, "Not Found")
        if "X-Forwarded-For" in h.headers:
            return self._reply(h, 403, "Forbidden")
        ttl = h.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return self._reply(h, 400, "Bad Request")
        tok = secrets.token_urlsafe(40)
        with self.lock:
            self.tokens[tok] = time.monotonic() + int(ttl)
            self.handed_out.append(tok)
        self._reply(h, 200, tok, [("X-aws-ec2-metadata-token-ttl-seconds", ttl)])

    def _hang(self, h):
        """Never answers: holds the connection until the client closes it or the double stops."""
        h.close_connection = True
        conn = h.connection
        while not self.stopping.wait(0.2):
            try:
                readable, _, _ = select.select([conn], [], [], 0)
                if readable and conn.recv(1, socket.MSG_PEEK) == b"":
                    return  # the client gave up
            except OSError:
                return

    def gets_without_token(self):
        return [r for r in self.requests if r[0] == "GET" and "x-aws-ec2-metadata-token" not in r[2]]


class StsAt:
    """The sts:AssumeRole of a server someone else runs (a LocalStack or a moto without auth),
    for the command line below: placeholder keys, the account the server says it is."""

    def __init__(self, url, region="us-east-1"):
        import boto3

        self.url = url
        self.sts = boto3.client("sts", endpoint_url=url, region_name=region,
                                aws_access_key_id="test", aws_secret_access_key="test")
        self.account = self.sts.get_caller_identity()["Account"]

    def assume_role(self, role):
        c = self.sts.assume_role(RoleArn=f"arn:aws:iam::{self.account}:role/{role}",
                                 RoleSessionName=INSTANCE_ID)["Credentials"]
        return {"AccessKeyId": c["AccessKeyId"], "SecretAccessKey": c["SecretAccessKey"],
                "Token": c["SessionToken"], "Expiration": c["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ")}


def main(argv=None):
    """`python -m support.imds --sts URL` (from tests/, with .venv-test's Python): an IMDSv2 double
    on 127.0.0.1 for a bootsecrets pointed at a LocalStack you already run, which has no IMDS."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m support.imds", description=main.__doc__)
    ap.add_argument("--sts", required=True, help="the server whose sts:AssumeRole mints the "
                    "credentials, e.g. http://127.0.0.1:4566 (LocalStack)")
    ap.add_argument("--port", type=int, default=1338, help="port on 127.0.0.1 (default 1338)")
    ap.add_argument("--role", default="node", help="the instance role's name (default node)")
    ap.add_argument("--region", default="us-east-1", help="region in the identity document")
    args = ap.parse_args(argv)
    d = ImdsDouble(StsAt(args.sts, args.region), role=args.role, region=args.region,
                   port=args.port).start()
    print(f"IMDSv2 double at {d.url}: role {args.role}, region {args.region}, credentials from "
          f"sts:AssumeRole at {args.sts} (account {d.sts.account}); Ctrl-C stops it", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        d.stop()


if __name__ == "__main__":
    main()
