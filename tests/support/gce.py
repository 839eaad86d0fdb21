"""Faithful doubles of the GCE metadata server and of the Secret Manager REST API.

GceMetadataDouble (plain http, like metadata.google.internal):
* `GET /` -> 200 `computeMetadata/` and `GET /computeMetadata/` -> `v1/`, with the
  `Metadata-Flavor: Google` answer header and no request header needed: how google-auth (and
  gcloud) detect that they run on GCE, by a GET of `http://169.254.169.254/`.
* every path under /computeMetadata/v1 needs `Metadata-Flavor: Google` (else 403) and is refused
  with 403 when it carries `X-Forwarded-For`; every answer carries `Metadata-Flavor: Google`.
* `.../instance/service-accounts/` lists the accounts (`default/` and each email, with a slash);
  `.../instance/service-accounts/{default|EMAIL}/` lists an account's entries, and with
  `?recursive=true` answers JSON `{"aliases":["default"],"email","scopes":[...]}` (what
  google-auth's compute_engine credentials read first); `.../{SA}/email`, `.../{SA}/scopes`,
  `.../{SA}/aliases` (text).
* `.../instance/service-accounts/{default|EMAIL}/token[?scopes=A,B]` -> `{"access_token",
  "expires_in","token_type":"Bearer"}`; an unknown account -> 404.
* `.../instance/service-accounts/{SA}/identity?audience=A[&format=full]` -> an RS256 JWT signed by
  `signer` (tests/support/jwt.py): iss https://accounts.google.com, aud = A, azp and sub = the
  account's unique id, email, email_verified; with format=full a `google.compute_engine` claim
  (project_id, project_number, zone, instance_id, instance_name, instance_creation_timestamp).
  No audience -> 400.
* `/project/project-id`, `/project/numeric-project-id`, `/universe/universe-domain` (text).
Knobs: `down=True` (port refuses connections), `stall=SECONDS` (connections are accepted and
never answered for that long), `fail_first=(status, n)` (first n answers are that status),
`netns` (the listening socket is made in that network namespace: support/netns.py).
Counters: `tokens` (access token -> email), `handed_out` (every token), `requests`.
What it leaves out: every other metadata path (instance attributes, network interfaces, disks,
project attributes, ssh keys), `recursive=true` anywhere but an account, `?alt=json|text`,
`?wait_for_change` (hanging gets) and ETags, the 301 that adds a directory's missing slash,
`licenses=TRUE` on identity tokens, scope checks (a token for any scopes is handed out), bound
tokens (mTLS and the Agent Identity POST), and the metadata server's rate limits.

SecretManagerDouble (plain http on 127.0.0.1 for the bootsecrets tests; with `tls=` on 443 in a
network namespace for the official client, which talks to https://secretmanager.googleapis.com
and its regional https://secretmanager.LOCATION.rep.googleapis.com):
* `GET /v1/projects/{P}[/locations/{L}]/secrets/{S}/versions/{V}` (GetSecretVersion: `name`,
  `state`, `createTime`; never the payload);
* `GET /v1/projects/{P}/secrets/{S}/versions/{V}:access` and
  `GET /v1/projects/{P}/locations/{L}/secrets/{S}/versions/{V}:access` with `Authorization: Bearer T`
  where T is an access token the metadata double issued (else 401 UNAUTHENTICATED). P may be the
  project id or number; V is a number, `latest` (the newest ENABLED version) or an alias.
* 200 `{"name":"projects/{NUMBER}/[locations/L/]secrets/S/versions/N","payload":{"data":base64,
  "dataCrc32c":"decimal"}}` (the CRC32C computed here; wrong for versions added with
  `wrong_crc=True`); errors `{"error":{"code","message","status"}}`: 404 NOT_FOUND, 403
  PERMISSION_DENIED (`deny(email)`), 400 FAILED_PRECONDITION (disabled version), 503 UNAVAILABLE
  for the first `unavailable_first` requests, 429 RESOURCE_EXHAUSTED for `throttled_first`.
What it leaves out: every method but `versions:access` and `versions.get` (no secret or version management, no
`GET` of a secret's metadata, no listing), the `$alt`/`$fields` query parameters (ignored), the
`error.details` list (ErrorInfo with reason and domain), gRPC (REST only), CMEK, and the
location check of regional secrets against the endpoint they were asked of.
"""

import base64
import secrets
import time

from .httpdouble import HttpDouble
from .jwt import Signer

ROOT = "/computeMetadata/v1"


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), reflected polynomial 0x82F63B78."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the standard check value


class GceMetadataDouble(HttpDouble):
    def __init__(self, *, project_id="bootsecrets-test", project_number="123456789012",
                 service_accounts=("node",), zone="europe-west1-b", down=False, stall=0.0,
                 fail_first=None, signer=None, **kw):
        super().__init__(down=down, **kw)
        self.signer = signer or Signer()
        self.project_id = project_id
        self.project_number = project_number
        self.zone = zone
        self.instance_id = str(secrets.randbelow(10**19))
        self.instance_name = "node-0"
        self.accounts = {n: f"{n}@{project_id}.iam.gserviceaccount.com" for n in service_accounts}
        self.unique_ids = {e: str(secrets.randbelow(10**21)) for e in self.accounts.values()}
        self.default_email = next(iter(self.accounts.values()))
        self.stall = stall
        self.fail_first = fail_first
        self.tokens = {}      # access token -> email
        self.token_scopes = {}  # access token -> the scopes it was asked for
        self.scopes = ["https://www.googleapis.com/auth/cloud-platform"]
        self.handed_out = []

    def public_pem(self) -> str:
        return self.signer.public_pem()

    def email(self, name):
        return self.accounts[name]

    def _account(self, sa):
        if sa == "default":
            return self.default_email
        return sa if sa in self.accounts.values() else None

    def handle(self, req):
        if self.stall:
            time.sleep(self.stall)
            return None
        flavor = [("Metadata-Flavor", "Google"), ("Server", "Metadata Server for VM")]
        if req.path in ("/", "/computeMetadata/"):  # GCE detection: no request header needed
            return 200, "computeMetadata/\n" if req.path == "/" else "v1/\n", \
                [("Content-Type", "application/text"), *flavor]
        if not req.path.startswith(ROOT):
            return 404, "Not Found", flavor
        if req.headers.get("metadata-flavor") != "Google" or "x-forwarded-for" in req.headers:
            return 403, "Missing Metadata-Flavor:Google header.", [("Server", "Metadata Server for VM")]
        if self.fail_first and self.fail_first[1] > 0:
            status = self.fail_first[0]
            self.fail_first = (status, self.fail_first[1] - 1)
            return status, "canned failure", flavor
        path = req.path[len(ROOT):]
        text = [("Content-Type", "application/text"), *flavor]
        if path == "/project/project-id":
            return 200, self.project_id, text
        if path == "/project/numeric-project-id":
            return 200, self.project_number, text
        if path == "/universe/universe-domain":
            return 200, "googleapis.com", text
        prefix = "/instance/service-accounts/"
        if path == prefix:
            return 200, "".join(f"{a}/\n" for a in ["default", *self.accounts.values()]), text
        if path.startswith(prefix):
            sa, slash, leaf = path[len(prefix):].partition("/")
            email = self._account(sa)
            if email is None or not slash:
                return 404, "Not Found", text
            aliases = ["default"] if email == self.default_email else []
            if leaf == "":
                if req.query.get("recursive", "").lower() == "true":
                    return 200, {"aliases": aliases, "email": email, "scopes": self.scopes}, flavor
                return 200, "aliases\nemail\nidentity\nscopes\ntoken\n", text
            if leaf == "aliases":
                return 200, "".join(f"{a}\n" for a in aliases), text
            if leaf == "scopes":
                return 200, "".join(f"{sc}\n" for sc in self.scopes), text
            if leaf == "token":
                tok = "ya29.test-" + secrets.token_urlsafe(48)
                with self.lock:
                    self.tokens[tok] = email
                    self.handed_out.append(tok)
                    self.token_scopes[tok] = req.query.get("scopes", ",".join(self.scopes)).split(",")
                return 200, {"access_token": tok, "expires_in": 3599, "token_type": "Bearer"}, flavor
            if leaf == "identity":
                audience = req.query.get("audience")
                if not audience:
                    return 400, "non-empty audience parameter required", text
                c = {"iss": "https://accounts.google.com", "aud": audience,
                     "azp": self.unique_ids[email], "sub": self.unique_ids[email],
                     "email": email, "email_verified": True}
                if req.query.get("format") == "full":
                    c["google"] = {"compute_engine": {
                        "project_id": self.project_id, "project_number": int(self.project_number),
                        "zone": self.zone, "instance_id": self.instance_id,
                        "instance_name": self.instance_name,
                        "instance_creation_timestamp": int(time.time()) - 60}}
                tok = self.signer.sign(c)
                with self.lock:
                    self.handed_out.append(tok)
                return 200, tok, text
            if leaf == "email":
                return 200, email, text
        return 404, "Not Found", text


class SecretManagerDouble(HttpDouble):
    def __init__(self, metadata: GceMetadataDouble, **kw):
        super().__init__(**kw)
        self.metadata = metadata
        self.versions = {}   # (location, secret) -> list of dicts, index + 1 = version number
        self.aliases = {}    # (location, secret) -> {alias: number}
        self.denied = set()  # emails refused with PERMISSION_DENIED
        # Emails with roles/secretmanager.secretAccessor alone: access, but not GetSecretVersion.
        self.accessor_only = set()
        self.unavailable_first = 0
        self.throttled_first = 0
        self.served = 0

    def add_version(self, secret, data: bytes, *, location=None, wrong_crc=False) -> int:
        vs = self.versions.setdefault((location, secret), [])
        vs.append({"data": data, "state": "ENABLED", "wrong_crc": wrong_crc})
        return len(vs)

    def set_alias(self, secret, alias, number, *, location=None):
        self.aliases.setdefault((location, secret), {})[alias] = number

    def disable(self, secret, number, *, location=None):
        self.versions[(location, secret)][number - 1]["state"] = "DISABLED"

    def deny(self, email):
        self.denied.add(email)

    @staticmethod
    def _error(status, name, message):
        return status, {"error": {"code": status, "message": message, "status": name}}, []

    def handle(self, req):
        auth = req.headers.get("authorization", "")
        email = self.metadata.tokens.get(auth[len("Bearer "):]) if auth.startswith("Bearer ") else None
        if email is None:
            return self._error(401, "UNAUTHENTICATED",
                               "Request had invalid authentication credentials. Expected OAuth 2 access "
                               "token, login cookie or other valid authentication credential.")
        if self.unavailable_first > 0:
            self.unavailable_first -= 1
            return self._error(503, "UNAVAILABLE", "The service is currently unavailable.")
        if self.throttled_first > 0:
            self.throttled_first -= 1
            return self._error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.")
        if req.method != "GET" or not req.path.startswith("/v1/projects/"):
            return self._error(404, "NOT_FOUND", "Method not found.")
        access = req.path.endswith(":access")
        permission = "secretmanager.versions.access" if access else "secretmanager.versions.get"
        parts = req.path[len("/v1/"):len(req.path) - (len(":access") if access else 0)].split("/")
        if len(parts) == 6 and parts[2] == "secrets" and parts[4] == "versions":
            project, location, secret, version = parts[1], None, parts[3], parts[5]
        elif len(parts) == 8 and parts[2] == "locations" and parts[4] == "secrets" and parts[6] == "versions":
            project, location, secret, version = parts[1], parts[3], parts[5], parts[7]
        else:
            return self._error(400, "INVALID_ARGUMENT", "Invalid resource field value in the request.")
        full = "/".join(parts)
        if (project not in (self.metadata.project_id, self.metadata.project_number) or email in self.denied
                or (not access and email in self.accessor_only)):
            return self._error(403, "PERMISSION_DENIED",
                               f"Permission '{permission}' denied for resource '{full}' "
                               "(or it may not exist).")
        vs = self.versions.get((location, secret))
        if not vs:
            return self._error(404, "NOT_FOUND", f"Secret [{full}] not found or has no versions.")
        if version == "latest":
            enabled = [i for i, v in enumerate(vs) if v["state"] == "ENABLED"]
            if not enabled and access:
                return self._error(400, "FAILED_PRECONDITION",
                                   f"Secret Version [{full}] is in DISABLED state.")
            number = (enabled[-1] if enabled else len(vs) - 1) + 1
        elif version.isdigit():
            number = int(version)
        elif version in self.aliases.get((location, secret), {}):
            number = self.aliases[(location, secret)][version]
        else:
            return self._error(404, "NOT_FOUND", f"Secret Version [{full}] not found.")
        if not 1 <= number <= len(vs):
            return self._error(404, "NOT_FOUND", f"Secret Version [{full}] not found.")
        v = vs[number - 1]
        loc = f"/locations/{location}" if location else ""
        name = f"projects/{self.metadata.project_number}{loc}/secrets/{secret}/versions/{number}"
        if not access:
            # GetSecretVersion: the version's metadata, never its payload.
            return 200, {"name": name, "state": v["state"], "createTime": "2026-01-01T00:00:00Z",
                         "etag": f'"{number}"'}, []
        if v["state"] != "ENABLED":
            return self._error(400, "FAILED_PRECONDITION", f"Secret Version [{full}] is in DISABLED state.")
        crc = crc32c(v["data"])
        if v["wrong_crc"]:
            crc ^= 0x1
        loc = f"/locations/{location}" if location else ""
        self.served += 1
        return 200, {"name": f"projects/{self.metadata.project_number}{loc}/secrets/{secret}/versions/{number}",
                     "payload": {"data": base64.b64encode(v["data"]).decode(), "dataCrc32c": str(crc)}}, []
