"""The vendors' official Python clients as judges of our doubles (tests/support/).

A double that only bootsecrets talks to could drift into agreeing with bootsecrets' own mistakes.
Here the clients the clouds ship, pinned in tests/requirements-vendors.txt, run against the
doubles as they run on a VM: at their default endpoints (the regional Secret Manager endpoint
given as Google documents it), with no option that relaxes a check and no patch. Each test
gets a fresh network namespace (tests/support/netns.py) in which the metadata double answers at
169.254.169.254:80, Key Vault at https://testvault.vault.azure.net (port 443, so the Key Vault
SDK's check of the challenge's resource against the vault's host passes as in Azure) and Secret
Manager at https://secretmanager.googleapis.com and its regional host. The names are
resolved to the namespace's addresses as a VM's resolver would, and TLS is verified against the
test CA, given as a client would be given a private CA (`connection_verify`,
`REQUESTS_CA_BUNDLE`). A disagreement is fixed in the double, never worked around here.

* azure-identity `ManagedIdentityCredential` (system-assigned; user-assigned by client id,
  object id and resource id; an unknown identity) against the Azure IMDS double;
* azure-keyvault-secrets `SecretClient.get_secret` (latest and by version, at the SDK's default
  api-version; 404, 403 RBAC, 403 disabled, 401 wrong audience, 429 retried) against the Key
  Vault double;
* google-auth `google.auth.default()` (GCE detection), `compute_engine.Credentials` (default and
  named account, scopes) and `IDTokenCredentials` (signature, audience, `format=full` claims)
  against the GCE metadata double;
* google-cloud-secret-manager (REST transport) `access_secret_version` for latest, a number, an
  alias and a regional secret, the CRC32C checked with google-crc32c, and its errors (404, 403,
  400 disabled, 401, 503 retried) against the Secret Manager double;
* botocore's IMDS fetchers (credentials, region) and its default credential chain against the
  IMDSv2 double, the credentials then signing real calls that moto verifies.
"""

import contextlib
import datetime
import os
import time

import pytest

from support.azure import AzureImdsDouble, KeyVaultDouble
from support.gce import GceMetadataDouble, SecretManagerDouble
from support.imds import ImdsDouble
from support.jwt import claims
from support.netns import METADATA_IP, resolving

KV_SCOPE = "https://vault.azure.net/.default"
REGION = "europe-west1"
SM_HOST = "secretmanager.googleapis.com"
SM_REGIONAL_HOST = f"secretmanager.{REGION}.rep.googleapis.com"


def _clean_env(monkeypatch, prefixes, names=()):
    """No variable of the developer's or CI's may steer a client elsewhere."""
    for k in list(os.environ):
        if k.startswith(prefixes) or k in names:
            monkeypatch.delenv(k)


# -- Azure: azure-identity and azure-keyvault-secrets

class Azure:
    def __init__(self, netns, imds, kv, ca_path):
        self.netns, self.imds, self.kv, self.ca = netns, imds, kv, str(ca_path)

    def inside(self):
        return _inside(self.netns, {self.kv.hostname: "127.0.0.1"})

    def client(self, credential, **kw):
        from azure.keyvault.secrets import SecretClient
        return SecretClient(vault_url=self.kv.vault_url, credential=credential,
                            connection_verify=self.ca, **kw)


@contextlib.contextmanager
def _inside(netns, names=None):
    """The block's SDK calls run in `netns`, with `names` resolved as the VM's resolver would."""
    with netns.inside(), resolving(names or {}):
        yield


@pytest.fixture
def az(netns, test_ca, monkeypatch):
    _clean_env(monkeypatch, ("AZURE_", "IDENTITY_", "MSI_", "IMDS_"))
    imds = AzureImdsDouble(host=METADATA_IP, port=80, netns=netns,
                           user_assigned=("app", "batch")).start()
    kv = KeyVaultDouble(imds, test_ca, host="127.0.0.1", port=443, netns=netns).start()
    assert kv.vault_url == "https://testvault.vault.azure.net"
    yield Azure(netns, imds, kv, test_ca.ca_path)
    kv.stop()
    imds.stop()


def test_azure_managed_identity_system_assigned(az):
    from azure.identity import ManagedIdentityCredential

    with az.inside():
        tok = ManagedIdentityCredential().get_token(KV_SCOPE)
    c = claims(tok.token)
    assert c["aud"] == "https://vault.azure.net" and c["oid"] == az.imds.system.object_id
    assert c["xms_mirid"] == az.imds.vm_resource_id
    assert 86000 < tok.expires_on - time.time() <= 86400
    [req] = az.imds.requests
    assert req.path == "/metadata/identity/oauth2/token"
    assert req.query == {"api-version": "2018-02-01", "resource": "https://vault.azure.net"}
    assert req.headers["metadata"] == "true"


@pytest.mark.parametrize("how", ["client_id", "object_id", "resource_id"])
def test_azure_managed_identity_user_assigned(az, how):
    from azure.identity import ManagedIdentityCredential

    ident = az.imds.user(1)  # "batch"
    value = {"client_id": ident.client_id, "object_id": ident.object_id,
             "resource_id": ident.resource_id}[how]
    cred = (ManagedIdentityCredential(client_id=value) if how == "client_id"
            else ManagedIdentityCredential(identity_config={how: value}))
    with az.inside():
        tok = cred.get_token(KV_SCOPE)
    c = claims(tok.token)
    assert c["oid"] == ident.object_id and c["appid"] == ident.client_id
    assert c["xms_mirid"] == ident.resource_id
    param = {"client_id": "client_id", "object_id": "object_id", "resource_id": "msi_res_id"}[how]
    assert az.imds.requests[-1].query[param] == value


def test_azure_managed_identity_unknown_identity_is_unavailable(az):
    from azure.identity import CredentialUnavailableError, ManagedIdentityCredential

    with az.inside(), pytest.raises(CredentialUnavailableError, match="Identity not found"):
        ManagedIdentityCredential(client_id="00000000-0000-0000-0000-000000000000").get_token(KV_SCOPE)


def test_key_vault_get_secret_latest_and_by_version(az):
    from azure.identity import ManagedIdentityCredential

    old = az.kv.set_secret("db-password", "first")
    new = az.kv.set_secret("db-password", "second", content_type="text/plain")
    with az.inside():
        client = az.client(ManagedIdentityCredential())
        latest = client.get_secret("db-password")
        pinned = client.get_secret("db-password", old)
    assert (latest.value, latest.name, latest.properties.version) == ("second", "db-password", new)
    assert latest.properties.content_type == "text/plain" and latest.properties.enabled is True
    assert latest.properties.vault_url == "https://testvault.vault.azure.net"
    assert latest.properties.created_on is not None and latest.properties.recovery_level
    assert (pinned.value, pinned.properties.version) == ("first", old)
    first, *rest = az.kv.requests
    assert "authorization" not in first.headers, "the SDK's first request is the challenge"
    # The pinned SDK's default api-version (a newer SDK may bring a newer one: serve it).
    assert {r.query["api-version"] for r in az.kv.requests} == {"2026-04-01"}
    assert all(r.headers["authorization"].startswith("Bearer ") for r in rest)


@pytest.mark.parametrize("api_version", ["7.4", "2025-07-01"])
def test_key_vault_older_api_versions(az, api_version):
    from azure.identity import ManagedIdentityCredential

    az.kv.set_secret("s", "v")
    with az.inside():
        assert az.client(ManagedIdentityCredential(), api_version=api_version).get_secret("s").value == "v"
    assert {r.query["api-version"] for r in az.kv.requests} == {api_version}


def test_key_vault_not_found(az):
    from azure.core.exceptions import ResourceNotFoundError
    from azure.identity import ManagedIdentityCredential

    az.kv.set_secret("present", "x")
    with az.inside():
        client = az.client(ManagedIdentityCredential())
        with pytest.raises(ResourceNotFoundError) as e:
            client.get_secret("absent")
        with pytest.raises(ResourceNotFoundError):
            client.get_secret("present", "0" * 32)
    assert e.value.status_code == 404 and e.value.error.code == "SecretNotFound"


def test_key_vault_forbidden_by_rbac_and_disabled(az):
    from azure.core.exceptions import HttpResponseError
    from azure.identity import ManagedIdentityCredential

    az.kv.set_secret("s", "x")
    az.kv.set_secret("off", "y", enabled=False)
    with az.inside():
        client = az.client(ManagedIdentityCredential())
        with pytest.raises(HttpResponseError) as disabled:
            client.get_secret("off")
        az.kv.allow_only(az.imds.user(0).object_id)  # not the system identity
        with pytest.raises(HttpResponseError) as rbac:
            client.get_secret("s")
    assert disabled.value.status_code == 403 and disabled.value.error.code == "Forbidden"
    assert disabled.value.error.innererror["code"] == "SecretDisabled"
    assert rbac.value.status_code == 403 and rbac.value.error.innererror["code"] == "ForbiddenByRbac"
    assert az.imds.system.object_id in rbac.value.message


def test_key_vault_token_for_another_audience_is_refused(az):
    """A managed-identity token for Azure Resource Manager is not a Key Vault token."""
    from azure.core.credentials import AccessToken
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import ManagedIdentityCredential

    class WrongAudience:
        def __init__(self):
            self.inner = ManagedIdentityCredential()

        def get_token(self, *scopes, **kw):
            t = self.inner.get_token("https://management.azure.com/.default")
            return AccessToken(t.token, t.expires_on)

    az.kv.set_secret("s", "x")
    with az.inside(), pytest.raises(ClientAuthenticationError) as e:
        az.client(WrongAudience()).get_secret("s")
    assert e.value.status_code == 401 and "AKV10022" in e.value.message
    assert claims(az.kv.requests[-1].headers["authorization"][7:])["aud"] == \
        "https://management.azure.com"


def test_key_vault_throttling_is_retried_after_retry_after(az):
    from azure.identity import ManagedIdentityCredential

    az.kv.set_secret("s", "after-429")
    az.kv.fail_first = (429, 1)
    with az.inside():
        start = time.monotonic()
        assert az.client(ManagedIdentityCredential()).get_secret("s").value == "after-429"
    assert time.monotonic() - start >= 1.0  # Retry-After: 1 was honoured
    assert az.kv.fail_first == (429, 0)


# -- Google: google-auth and google-cloud-secret-manager

class Gce:
    def __init__(self, netns, md, sm):
        self.netns, self.md, self.sm = netns, md, sm

    def inside(self):
        return _inside(self.netns, {"metadata.google.internal": METADATA_IP,
                                    SM_HOST: "127.0.0.1", SM_REGIONAL_HOST: "127.0.0.1"})


@pytest.fixture
def gce(netns, test_ca, monkeypatch, tmp_path):
    from google.auth.compute_engine import _metadata

    _clean_env(monkeypatch, ("GCE_METADATA", "GOOGLE_", "CLOUDSDK_"), ("NO_GCE_CHECK",))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no gcloud credentials
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(test_ca.ca_path))
    # google-auth reads GCE_METADATA_HOST when it is imported: it must be the real default.
    assert _metadata._GCE_METADATA_HOST == "metadata.google.internal"
    md = GceMetadataDouble(host=METADATA_IP, port=80, netns=netns,
                           service_accounts=("node", "batch")).start()
    sm = SecretManagerDouble(md, host="127.0.0.1", port=443, netns=netns,
                             tls=test_ca.server_context([SM_HOST, SM_REGIONAL_HOST])).start()
    yield Gce(netns, md, sm)
    sm.stop()
    md.stop()


def _sm_client(creds, regional=False):
    from google.cloud import secretmanager

    opts = {"api_endpoint": SM_REGIONAL_HOST} if regional else None
    return secretmanager.SecretManagerServiceClient(credentials=creds, transport="rest",
                                                    client_options=opts)


def test_google_auth_default_detects_gce_and_refreshes(gce):
    import google.auth
    from google.auth import compute_engine
    from google.auth.transport.requests import Request

    with gce.inside():
        creds, project = google.auth.default()
        assert isinstance(creds, compute_engine.Credentials)
        creds.refresh(Request())
    assert project == gce.md.project_id
    assert creds.service_account_email == gce.md.email("node")
    assert gce.md.tokens[creds.token] == gce.md.email("node")
    assert creds.expiry is not None and creds.valid
    paths = [(r.path, r.query) for r in gce.md.requests]
    assert paths[0] == ("/", {}), "detection: GET http://169.254.169.254/"
    assert ("/computeMetadata/v1/instance/service-accounts/default/", {"recursive": "true"}) in paths


def test_compute_engine_credentials_named_account_and_scopes(gce):
    from google.auth import compute_engine
    from google.auth.transport.requests import Request

    scopes = ["https://www.googleapis.com/auth/cloud-platform.read-only"]
    with gce.inside():
        creds = compute_engine.Credentials(service_account_email=gce.md.email("batch"),
                                           scopes=scopes)
        creds.refresh(Request())
    # google-auth asks the named account's info, then the token of `default`, by design.
    assert creds.service_account_email == gce.md.email("batch")
    assert gce.md.token_scopes[creds.token] == scopes
    assert f"/computeMetadata/v1/instance/service-accounts/{gce.md.email('batch')}/" in \
        [r.path for r in gce.md.requests]


def test_compute_engine_id_token_credentials(gce):
    from google.auth import compute_engine, jwt
    from google.auth.transport.requests import Request

    audience = "https://vault.example.com/vault/gcp"
    with gce.inside():
        creds = compute_engine.IDTokenCredentials(Request(), audience,
                                                  use_metadata_identity_endpoint=True)
        creds.refresh(Request())
    payload = jwt.decode(creds.token, certs={gce.md.signer.kid: gce.md.public_pem()},
                         audience=audience)
    assert payload["email"] == gce.md.email("node") and payload["iss"] == "https://accounts.google.com"
    ce = payload["google"]["compute_engine"]
    assert ce["project_id"] == gce.md.project_id and ce["zone"] == gce.md.zone
    assert creds.expiry == datetime.datetime.fromtimestamp(payload["exp"], datetime.timezone.utc) \
        .replace(tzinfo=None)  # google-auth keeps naive UTC
    [req] = [r for r in gce.md.requests if r.path.endswith("/identity")]
    assert req.query == {"audience": audience, "format": "full"}


def test_secret_manager_access_latest_number_alias_regional(gce):
    import google.auth
    import google_crc32c
    from google.auth.transport.requests import Request

    sm = gce.sm
    sm.add_version("db", b"one")
    sm.add_version("db", b"\x00two\xff")
    sm.set_alias("db", "prod", 1)
    sm.add_version("db", b"regional", location=REGION)
    with gce.inside():
        creds, project = google.auth.default()
        creds.refresh(Request())
        client = _sm_client(creds)
        latest = client.access_secret_version(name=f"projects/{project}/secrets/db/versions/latest")
        number = client.access_secret_version(name=f"projects/{project}/secrets/db/versions/1")
        alias = client.access_secret_version(name=f"projects/{project}/secrets/db/versions/prod")
        regional = _sm_client(creds, regional=True).access_secret_version(
            name=f"projects/{project}/locations/{REGION}/secrets/db/versions/latest")
    num = gce.md.project_number
    assert (latest.name, latest.payload.data) == (f"projects/{num}/secrets/db/versions/2", b"\x00two\xff")
    assert (number.name, number.payload.data) == (f"projects/{num}/secrets/db/versions/1", b"one")
    assert (alias.name, alias.payload.data) == (f"projects/{num}/secrets/db/versions/1", b"one")
    assert regional.name == f"projects/{num}/locations/{REGION}/secrets/db/versions/1"
    assert regional.payload.data == b"regional"
    for r in (latest, number, alias, regional):
        assert r.payload.data_crc32c == google_crc32c.value(r.payload.data)
    assert [r.headers["host"] for r in sm.requests] == [SM_HOST] * 3 + [SM_REGIONAL_HOST]
    assert all(r.headers["authorization"] == f"Bearer {creds.token}" for r in sm.requests)


def test_secret_manager_wrong_crc_is_visible_to_the_client(gce):
    import google.auth
    import google_crc32c

    gce.sm.add_version("c", b"payload", wrong_crc=True)
    with gce.inside():
        creds, project = google.auth.default()
        r = _sm_client(creds).access_secret_version(name=f"projects/{project}/secrets/c/versions/1")
    assert r.payload.data == b"payload" and r.payload.data_crc32c != google_crc32c.value(b"payload")


def test_secret_manager_errors(gce):
    import google.auth
    from google.api_core import exceptions
    from google.oauth2.credentials import Credentials as TokenCredentials

    sm = gce.sm
    sm.add_version("s", b"x")
    sm.add_version("s", b"y")
    sm.disable("s", 2)
    with gce.inside():
        creds, project = google.auth.default()
        client = _sm_client(creds)
        base = f"projects/{project}/secrets"
        with pytest.raises(exceptions.NotFound) as nf:
            client.access_secret_version(name=f"{base}/absent/versions/latest")
        with pytest.raises(exceptions.NotFound):
            client.access_secret_version(name=f"{base}/s/versions/9")
        # Over REST the client maps the HTTP status (400), not the status name, to its exception.
        with pytest.raises(exceptions.BadRequest) as disabled:
            client.access_secret_version(name=f"{base}/s/versions/2")
        assert client.access_secret_version(name=f"{base}/s/versions/latest").payload.data == b"x"
        # A token the metadata server never issued; on the 401 the session refreshes (to the same
        # token) and tries once more, then the client raises.
        bogus = "ya29.not-issued-by-the-metadata-server"
        later = datetime.datetime.utcnow() + datetime.timedelta(hours=1)
        stranger = TokenCredentials(bogus, refresh_handler=lambda request, scopes: (bogus, later))
        with pytest.raises(exceptions.Unauthorized) as unauth:
            _sm_client(stranger).access_secret_version(name=f"{base}/s/versions/1")
        sm.deny(gce.md.email("node"))
        with pytest.raises(exceptions.Forbidden) as denied:
            client.access_secret_version(name=f"{base}/s/versions/1")
    assert nf.value.code == 404 and "not found" in nf.value.message
    assert disabled.value.code == 400 and "DISABLED state" in disabled.value.message
    assert disabled.value.response.json()["error"]["status"] == "FAILED_PRECONDITION"
    assert unauth.value.response.json()["error"]["status"] == "UNAUTHENTICATED"
    assert denied.value.code == 403 and "secretmanager.versions.access" in denied.value.message
    assert denied.value.response.json()["error"]["status"] == "PERMISSION_DENIED"
    assert nf.value.response.json()["error"]["status"] == "NOT_FOUND"


def test_secret_manager_unavailable_is_retried_by_the_client(gce):
    import google.auth

    gce.sm.add_version("s", b"after-503")
    gce.sm.unavailable_first = 1
    with gce.inside():
        creds, project = google.auth.default()
        r = _sm_client(creds).access_secret_version(name=f"projects/{project}/secrets/s/versions/1")
    assert r.payload.data == b"after-503" and gce.sm.unavailable_first == 0
    assert gce.sm.count(":access") == 2


# -- AWS: botocore's IMDS fetchers and credential chain

@pytest.fixture
def aws_vm(netns, moto, monkeypatch, tmp_path):
    _clean_env(monkeypatch, ("AWS_", "BOTO_"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))  # no profile of anyone's
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    imds = ImdsDouble(moto, host=METADATA_IP, port=80, netns=netns, region="eu-west-3").start()
    yield imds
    imds.stop()


def test_botocore_imds_fetchers_credentials_and_region(aws_vm):
    from botocore.utils import InstanceMetadataFetcher, InstanceMetadataRegionFetcher

    with _inside(aws_vm.netns):
        creds = InstanceMetadataFetcher(timeout=2, num_attempts=1).retrieve_iam_role_credentials()
        region = InstanceMetadataRegionFetcher(timeout=2, num_attempts=1).retrieve_region()
    assert creds["role_name"] == "node" and creds["access_key"].startswith("ASIA")
    assert creds["secret_key"] in aws_vm.handed_out and creds["token"] in aws_vm.handed_out
    assert creds["expiry_time"].endswith("Z")
    assert region == "eu-west-3"
    assert aws_vm.gets_without_token() == []
    assert ("GET", "/latest/meta-data/placement/availability-zone/") in \
        [(m, p) for m, p, _ in aws_vm.requests]


def test_botocore_default_chain_signs_with_the_instance_role(aws_vm, moto, name):
    """The chain ends at IMDS; moto (signatures checked) accepts what it signs."""
    import botocore.session
    from botocore.utils import IMDSRegionProvider

    session = botocore.session.get_session()
    with _inside(aws_vm.netns):
        creds = session.get_credentials()
        frozen = creds.get_frozen_credentials()
        region = IMDSRegionProvider(session).provide()
    assert creds.method == "iam-role" and region == "eu-west-3"
    moto.client("secretsmanager").create_secret(Name=f"{name}/v", SecretString="signed")
    kw = dict(endpoint_url=moto.url, region_name="us-east-1")
    arn = session.create_client("sts", **kw).get_caller_identity()["Arn"]
    assert ":assumed-role/node/" in arn
    got = session.create_client("secretsmanager", **kw).get_secret_value(SecretId=f"{name}/v")
    assert got["SecretString"] == "signed"
    assert frozen.access_key == creds.access_key and frozen.token in aws_vm.handed_out
