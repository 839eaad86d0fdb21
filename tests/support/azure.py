"""Faithful doubles of the Azure Instance Metadata Service (managed identity) and of Key Vault.

AzureImdsDouble (plain http, like 169.254.169.254):
* `GET /metadata/identity/oauth2/token?api-version=V&resource=R[&client_id=|object_id=|msi_res_id=]`
  needs `Metadata: true` (else 400 "Required metadata header not specified"), an api-version and a
  resource (else 400). It answers `{"access_token","client_id","expires_in","expires_on",
  "ext_expires_in","not_before","resource","token_type"}` (numbers as strings, as Azure does). The
  token is an RS256 JWT signed by `signer` (tests/support/jwt.py) with aud = resource,
  iss = https://sts.windows.net/TENANT/, tid, oid, sub = oid, appid = the identity's client id,
  xms_mirid = the VM's resource id (system-assigned) or the identity's resource id (user-assigned).
* Identity selection: the system-assigned identity when no selector is sent (if there is none:
  the single user-assigned one, or 400 "Multiple user assigned identities exist..."); a selector
  that matches no attached identity -> 400 `{"error":"invalid_request","error_description":
  "Identity not found"}`, the answer a new VM gives until its identity is assigned.
* `GET /metadata/instance/compute?api-version=V` -> subscriptionId, resourceGroupName, name,
  vmScaleSetName, location, vmId, resourceId.
Knobs: `not_assigned_for` (seconds during which every token request gets 400 Identity not found),
`fail_first=(status, n)` (the first n token requests answer status: 429 with Retry-After: 1, 500,
503), `down=True` (the port refuses connections). Counters: `issued` (token -> claims),
`handed_out` (every token, for leak checks), `requests`.

KeyVaultDouble (TLS with a test CA, host name `NAME.vault.azure.net`; on port 443 in a network
namespace, support/netns.py, the Key Vault SDK's challenge check passes as it does in Azure):
* `GET /secrets/{name}/versions?api-version=V` (List Secret Versions: properties, never a value;
  one page, no `maxresults`);
* `GET /secrets/{name}[/{version}]?api-version=V`: a request without a bearer token gets 401 with
  `WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/TENANT",
  resource="https://vault.azure.net"` and `{"error":{"code":"Unauthorized","message":"AKV10000..."}}`;
  a token this IMDS double did not issue, or issued for another audience, gets 401 too.
  Missing or unknown api-version -> 400 BadParameter; the versions Key Vault serves for secrets
  are accepted (2016-10-01, 7.0 to 7.6, 2025-07-01, and 2026-04-01, the SDK's default today).
* 200 `{"value","id":"https://HOST/secrets/NAME/VERSION","attributes":{...},"contentType"?,"tags"}`;
  404 SecretNotFound; 403 `innererror.code` SecretDisabled (a disabled version), ForbiddenByRbac
  (the caller's oid has no role: see `allow_only`), AccessDenied (access policy); `fail_first`
  as above.
The signer's public key is `public_pem()` on both doubles, for Vault's jwt logins.

What the doubles leave out (tests/integration/test_vendor_clients.py holds them to the official
azure-identity and azure-keyvault-secrets clients for what they do serve):
* IMDS: every path but the token and `instance/compute` (no `instance/network`, attested data,
  scheduled events), the 410 "IMDS is restarting" answer, per-identity token caching (each
  request mints a new token), `mi_res_id` (the App Service spelling; IMDS takes `msi_res_id`),
  and the 5-requests-per-second throttle;
* Key Vault: every operation but reading a secret (no set, list, delete, backup, keys or
  certificates), CAE claims challenges, `x-ms-keyvault-*` response headers, `kid`/`managed`
  (key-backed secrets), `exp`/`nbf` on attributes, and tenant checks (any token this IMDS
  double issued for the vault's audience is accepted).
"""

import secrets
import time
import uuid

from .httpdouble import HttpDouble
from .jwt import Signer, claims

KEY_VAULT_RESOURCE = "https://vault.azure.net"
IMDS_TOKEN_PATH = "/metadata/identity/oauth2/token"
IMDS_COMPUTE_PATH = "/metadata/instance/compute"
IMDS_API_VERSIONS = {"2018-02-01", "2019-08-01", "2019-11-01", "2020-06-01", "2020-09-01",
                     "2021-02-01", "2021-05-01", "2021-12-13", "2023-07-01"}
KV_API_VERSIONS = {"2016-10-01", "7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01",
                   "2026-04-01"}


class Identity:
    def __init__(self, name, *, subscription, resource_group):
        self.client_id = str(uuid.uuid4())
        self.object_id = str(uuid.uuid4())
        self.resource_id = (f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/"
                            f"Microsoft.ManagedIdentity/userAssignedIdentities/{name}")


class AzureImdsDouble(HttpDouble):
    def __init__(self, *, system_assigned=True, user_assigned=(), not_assigned_for=0.0,
                 fail_first=None, down=False, signer=None, tenant=None, vm_name="node-0",
                 scale_set="", **kw):
        super().__init__(down=down, **kw)
        self.signer = signer or Signer()
        self.tenant = tenant or str(uuid.uuid4())
        self.subscription = str(uuid.uuid4())
        self.resource_group = "rg-nodes"
        self.vm_name = vm_name
        self.scale_set = scale_set
        self.vm_resource_id = (f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
                               f"/providers/Microsoft.Compute/virtualMachines/{vm_name}")
        self.system = Identity("system", subscription=self.subscription,
                               resource_group=self.resource_group) if system_assigned else None
        if self.system:
            self.system.resource_id = self.vm_resource_id
        self.user_assigned = [Identity(n, subscription=self.subscription, resource_group=self.resource_group)
                              for n in user_assigned]
        self.not_assigned_until = time.monotonic() + not_assigned_for
        self.fail_first = fail_first  # (status, count)
        self.issued = {}        # token -> claims
        self.handed_out = []
        self.not_assigned_answers = 0

    def public_pem(self) -> str:
        return self.signer.public_pem()

    def user(self, name_or_index=0) -> Identity:
        return self.user_assigned[name_or_index]

    def tokens_for(self, resource):
        return [t for t, c in self.issued.items() if c["aud"] == resource]

    def handle(self, req):
        if req.headers.get("metadata") != "true":
            return 400, {"error": "invalid_request",
                         "error_description": "Required metadata header not specified"}, []
        if "x-forwarded-for" in req.headers:
            return 400, {"error": "invalid_request", "error_description": "Bad request"}, []
        if req.query.get("api-version") not in IMDS_API_VERSIONS:
            return 400, {"error": "Bad request. api-version was not specified or is invalid",
                         "newest-versions": sorted(IMDS_API_VERSIONS)[-3:]}, []
        if req.path == IMDS_TOKEN_PATH:
            return self._token(req)
        if req.path == IMDS_COMPUTE_PATH:
            return 200, {"subscriptionId": self.subscription, "resourceGroupName": self.resource_group,
                         "name": self.vm_name, "vmScaleSetName": self.scale_set, "location": "westeurope",
                         "vmId": str(uuid.uuid4()), "resourceId": self.vm_resource_id,
                         "osType": "Linux"}, []
        return 404, {"error": "Not found"}, []

    def _token(self, req):
        if self.fail_first and self.fail_first[1] > 0:
            status = self.fail_first[0]
            self.fail_first = (status, self.fail_first[1] - 1)
            headers = [("Retry-After", "1")] if status == 429 else []
            return status, {"error": "server_error", "error_description": f"canned {status}"}, headers
        resource = req.query.get("resource", "")
        if not resource:
            return 400, {"error": "invalid_request",
                         "error_description": "Required audience parameter not specified"}, []
        not_found = (400, {"error": "invalid_request", "error_description": "Identity not found"}, [])
        if time.monotonic() < self.not_assigned_until:
            self.not_assigned_answers += 1
            return not_found
        selectors = [(k, req.query[k]) for k in ("client_id", "object_id", "msi_res_id") if k in req.query]
        if len(selectors) > 1:
            return 400, {"error": "invalid_request",
                         "error_description": "Only one of client_id, object_id, msi_res_id may be given"}, []
        if selectors:
            key, value = selectors[0]
            attr = {"client_id": "client_id", "object_id": "object_id", "msi_res_id": "resource_id"}[key]
            match = [i for i in self.user_assigned if getattr(i, attr).lower() == value.lower()]
            if not match:
                return not_found
            ident = match[0]
        elif self.system:
            ident = self.system
        elif len(self.user_assigned) == 1:
            ident = self.user_assigned[0]
        elif self.user_assigned:
            return 400, {"error": "invalid_request",
                         "error_description": "Multiple user assigned identities exist, please specify the "
                                              "clientId / resourceId of the identity in the token request"}, []
        else:
            return not_found
        now = int(time.time())
        c = {"aud": resource, "iss": f"https://sts.windows.net/{self.tenant}/", "tid": self.tenant,
             "oid": ident.object_id, "sub": ident.object_id, "appid": ident.client_id,
             "xms_mirid": ident.resource_id, "idtyp": "app", "uti": secrets.token_urlsafe(16)}
        tok = self.signer.sign(c, lifetime=86400)
        with self.lock:
            self.issued[tok] = claims(tok)
            self.handed_out.append(tok)
        return 200, {"access_token": tok, "client_id": ident.client_id, "expires_in": "86399",
                     "expires_on": str(now + 86399), "ext_expires_in": "86399", "not_before": str(now),
                     "resource": resource, "token_type": "Bearer"}, []


class KeyVaultDouble(HttpDouble):
    def __init__(self, imds: AzureImdsDouble, ca, *, name="testvault", **kw):
        self.hostname = f"{name}.vault.azure.net"
        super().__init__(tls=ca.server_context([self.hostname]), **kw)
        self.imds = imds
        self.ca_path = ca.ca_path
        self.secrets = {}        # name -> list of versions (dicts), oldest first
        self.allowed_oids = None  # None: any principal the IMDS double issued a token to
        self.access_policy = False  # True: denials are access-policy denials (AccessDenied)
        self.fail_first = None
        self.served = 0

    @property
    def vault_url(self):
        return f"https://{self.hostname}" + ("" if self.port == 443 else f":{self.port}")

    def set_secret(self, name, value: str, content_type=None, enabled=True) -> str:
        version = uuid.uuid4().hex
        now = int(time.time())
        self.secrets.setdefault(name, []).append({
            "version": version, "value": value, "contentType": content_type, "enabled": enabled,
            "created": now, "updated": now})
        return version

    def disable(self, name, version=None):
        vs = self.secrets[name]
        target = [v for v in vs if v["version"] == version] if version else [vs[-1]]
        target[0]["enabled"] = False

    def allow_only(self, *object_ids):
        """RBAC: only these principals may read secrets; everyone else gets ForbiddenByRbac."""
        self.allowed_oids = set(object_ids)

    @staticmethod
    def _error(status, code, message, inner=None):
        err = {"code": code, "message": message}
        if inner:
            err["innererror"] = {"code": inner}
        return status, {"error": err}, []

    def handle(self, req):
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            status, body, _ = self._error(401, "Unauthorized",
                                          "AKV10000: Request is missing a Bearer or PoP token.")
            return status, body, [("WWW-Authenticate",
                                   f'Bearer authorization="https://login.microsoftonline.com/{self.imds.tenant}", '
                                   f'resource="{KEY_VAULT_RESOURCE}"')]
        c = self.imds.issued.get(auth[len("Bearer "):])
        if c is None:
            return self._error(401, "Unauthorized", "AKV10032: Invalid issuer.")
        if c["aud"].rstrip("/") != KEY_VAULT_RESOURCE:
            return self._error(401, "Unauthorized", "AKV10022: Invalid audience.")
        if c.get("exp", 0) < time.time():
            return self._error(401, "Unauthorized", "AKV10003: Token expired.")
        version = req.query.get("api-version")
        if version is None:
            return self._error(400, "BadParameter", "The 'api-version' query parameter is missing.")
        if version not in KV_API_VERSIONS:
            return self._error(400, "BadParameter", f"The specified version ({version}) is not recognized.")
        if self.fail_first and self.fail_first[1] > 0:
            status = self.fail_first[0]
            self.fail_first = (status, self.fail_first[1] - 1)
            headers = [("Retry-After", "1")] if status == 429 else []
            return status, {"error": {"code": "Throttled" if status == 429 else "InternalServerError",
                                      "message": "canned"}}, headers
        parts = [p for p in req.path.split("/") if p]
        if req.method != "GET" or len(parts) not in (2, 3) or parts[0] != "secrets":
            return self._error(400, "BadParameter", "Unsupported request in this double.")
        if self.allowed_oids is not None and c["oid"] not in self.allowed_oids:
            if self.access_policy:
                return self._error(403, "Forbidden",
                                   f"The user, group or application 'appid={c['appid']};oid={c['oid']}' does "
                                   f"not have secrets get permission on key vault '{self.hostname}'.",
                                   "AccessDenied")
            return self._error(403, "Forbidden",
                               f"Caller is not authorized to perform action on resource. Caller: "
                               f"appid={c['appid']};oid={c['oid']} Action: "
                               "'Microsoft.KeyVault/vaults/secrets/getSecret/action'", "ForbiddenByRbac")
        name = parts[1]
        versions = self.secrets.get(name, [])
        if len(parts) == 3 and parts[2] == "versions":
            # List Secret Versions: properties only, no value (readMetadata; `list` in an access
            # policy). Everything in one page.
            if not versions:
                return self._error(404, "SecretNotFound",
                                   f"A secret with (name/id) {name} was not found in this key vault.")
            items = [{"id": f"https://{self.hostname}/secrets/{name}/{v['version']}",
                      "attributes": {"enabled": v["enabled"], "created": v["created"],
                                     "updated": v["updated"]}} for v in versions]
            return 200, {"value": items, "nextLink": None}, []
        if len(parts) == 3:
            versions = [v for v in versions if v["version"] == parts[2].lower()]
        if not versions:
            return self._error(404, "SecretNotFound",
                               f"A secret with (name/id) {name} was not found in this key vault.")
        v = versions[-1]
        if not v["enabled"]:
            return self._error(403, "Forbidden", "Operation get is not allowed on a disabled secret.",
                               "SecretDisabled")
        body = {"value": v["value"], "id": f"https://{self.hostname}/secrets/{name}/{v['version']}",
                "attributes": {"enabled": True, "created": v["created"], "updated": v["updated"],
                               "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90},
                "tags": {}}
        if v["contentType"]:
            body["contentType"] = v["contentType"]
        self.served += 1
        return 200, body, []
