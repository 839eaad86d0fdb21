"""The Azure path end to end: the built binary, the Azure IMDS double and the Key Vault double
(TLS with a test CA, reached by its *.vault.azure.net name through `vault_address`)."""

import base64
import json
import os
import urllib.error
import urllib.request

from conftest import azure_manifest, published
from support.jwt import claims

CANARY = "CANARY-az-4e1b7d-secret-value"


def test_latest_and_pinned_versions(azure_imds, key_vault, outdir, bootsecrets):
    v1 = key_vault.set_secret("db-password", "old-pw")
    v2 = key_vault.set_secret("db-password", "new-pw")
    r = bootsecrets(azure_manifest(outdir, azure_imds, key_vault, [
        {"path": "latest", "ref": "db-password"},
        {"path": "pinned", "ref": "db-password", "version": v1},
    ]))
    assert r.code == 0, r
    assert (outdir / "latest").read_bytes() == b"new-pw"
    assert (outdir / "pinned").read_bytes() == b"old-pw"
    assert f"version {v2}" in r.stderr and f"version {v1}" in r.stderr, r
    # The first request of each fetch was challenged and the retry carried an IMDS token for the
    # Key Vault audience.
    authed = [q for q in key_vault.requests if "authorization" in q.headers]
    assert authed and all(q.query["api-version"] for q in key_vault.requests)
    tok = authed[0].headers["authorization"].split(" ", 1)[1]
    assert claims(tok)["aud"] == "https://vault.azure.net"
    assert any("authorization" not in q.headers for q in key_vault.requests), "no challenge round"


def test_json_key_and_base64(azure_imds, key_vault, outdir, bootsecrets):
    blob = bytes(range(256))
    key_vault.set_secret("tls", json.dumps({"cert": "PEM-TEXT", "der": base64.b64encode(blob).decode()}),
                         content_type="application/json")
    key_vault.set_secret("bin", base64.b64encode(blob).decode(), content_type="application/octet-stream")
    r = bootsecrets(azure_manifest(outdir, azure_imds, key_vault, [
        {"path": "cert", "ref": "tls", "json_key": "cert"},
        {"path": "der", "ref": "tls", "json_key": "der", "encoding": "base64"},
        {"path": "bin", "ref": "bin", "encoding": "base64"},
    ]))
    assert r.code == 0, r
    assert (outdir / "cert").read_bytes() == b"PEM-TEXT"
    assert (outdir / "der").read_bytes() == blob
    assert (outdir / "bin").read_bytes() == blob


def test_not_found_is_permanent_and_writes_nothing(azure_imds, key_vault, outdir, bootsecrets):
    key_vault.set_secret("ok", "fine")
    r = bootsecrets(azure_manifest(outdir, azure_imds, key_vault, [
        {"path": "ok", "ref": "ok"}, {"path": "missing", "ref": "does-not-exist"},
    ], settings="deadline_seconds = 60"))
    assert r.code == 1, r
    assert "not found (SecretNotFound, HTTP 404)" in r.stderr, r
    assert "retrying" not in r.stderr and r.elapsed < 30, r
    assert published(outdir) == {}


def test_rbac_denial_is_permanent_and_says_so(azure_imds, key_vault, outdir, bootsecrets):
    key_vault.set_secret("db", CANARY)
    key_vault.allow_only("00000000-0000-0000-0000-000000000000")
    r = bootsecrets(azure_manifest(outdir, azure_imds, key_vault, [{"path": "db", "ref": "db"}],
                                   settings="deadline_seconds = 60"), "-v")
    assert r.code == 1, r
    assert "access denied by Azure RBAC" in r.stderr and "(ForbiddenByRbac, HTTP 403)" in r.stderr, r
    assert "Key Vault Secrets User" in r.stderr
    assert "Caller is not authorized" not in r.output, "the body's message is never quoted"
    assert "retrying" not in r.stderr and r.elapsed < 30, r
    key_vault.access_policy = True
    r = bootsecrets(azure_manifest(outdir, azure_imds, key_vault, [{"path": "db", "ref": "db"}]))
    assert r.code == 1 and "access policy" in r.stderr and "(AccessDenied, HTTP 403)" in r.stderr, r
    assert published(outdir) == {}


def test_disabled_secret_is_permanent(azure_imds, key_vault, outdir, bootsecrets):
    key_vault.set_secret("db", "x")
    key_vault.disable("db")
    r = bootsecrets(azure_manifest(outdir, azure_imds, key_vault, [{"path": "db", "ref": "db"}],
                                   settings="deadline_seconds = 60"))
    assert r.code == 1, r
    assert "disabled (SecretDisabled, HTTP 403)" in r.stderr, r
    assert r.elapsed < 30


def test_identity_not_assigned_yet_is_waited_for(azure_imds_factory, key_vault_factory, outdir, bootsecrets):
    imds = azure_imds_factory(not_assigned_for=3.0)
    kv = key_vault_factory(imds)
    kv.set_secret("db", "eventually")
    r = bootsecrets(azure_manifest(outdir, imds, kv, [{"path": "db", "ref": "db"}],
                                   settings="deadline_seconds = 30"))
    assert r.code == 0, r
    assert (outdir / "db").read_bytes() == b"eventually"
    assert imds.not_assigned_answers >= 2, imds.not_assigned_answers
    assert "not assigned to this VM (yet)" in r.stderr and "retrying" in r.stderr, r


def test_imds_throttling_and_server_errors_are_retried(azure_imds_factory, key_vault_factory, outdir,
                                                       bootsecrets):
    for fail in ((429, 2), (500, 2)):
        imds = azure_imds_factory(fail_first=fail)
        kv = key_vault_factory(imds)
        kv.set_secret("db", "ok")
        r = bootsecrets(azure_manifest(outdir, imds, kv, [{"path": "db", "ref": "db"}],
                                       settings="deadline_seconds = 30"))
        assert r.code == 0, r
        assert f"HTTP {fail[0]}" in r.stderr and "retrying" in r.stderr, r


def test_key_vault_throttling_is_retried(azure_imds, key_vault, outdir, bootsecrets):
    key_vault.set_secret("db", "ok")
    key_vault.fail_first = (429, 1)
    r = bootsecrets(azure_manifest(outdir, azure_imds, key_vault, [{"path": "db", "ref": "db"}],
                                   settings="deadline_seconds = 30"))
    assert r.code == 0, r
    assert "throttled (Throttled, HTTP 429)" in r.stderr, r


def test_imds_down_for_the_whole_deadline_fails_within_it(azure_imds_factory, key_vault_factory, outdir,
                                                          bootsecrets):
    imds = azure_imds_factory(down=True)
    kv = key_vault_factory(imds)
    r = bootsecrets(azure_manifest(outdir, imds, kv, [{"path": "db", "ref": "db"}],
                                   settings="deadline_seconds = 3"))
    assert r.code == 3, r
    assert "deadline of 3s exceeded" in r.stderr and "connection refused" in r.stderr, r
    assert r.elapsed < 3 + 2, r
    assert published(outdir) == {}


def test_user_assigned_identity_selection(azure_imds_factory, key_vault_factory, outdir, bootsecrets):
    imds = azure_imds_factory(user_assigned=("uami-a", "uami-b"))
    kv = key_vault_factory(imds)
    kv.set_secret("db", "for-b-only")
    b = imds.user(1)
    kv.allow_only(b.object_id)
    for key, value in (("client_id", b.client_id), ("object_id", b.object_id), ("resource_id", b.resource_id)):
        r = bootsecrets(azure_manifest(outdir, imds, kv, [{"path": "db", "ref": "db"}],
                                       backend_extra=f'{key} = "{value}"'))
        assert r.code == 0, (key, r)
        assert (outdir / "db").read_bytes() == b"for-b-only"
    sent = [q.query for q in imds.requests if q.path.endswith("/token")]
    assert {"client_id", "object_id", "msi_res_id"} <= {k for q in sent for k in q}
    # The system-assigned identity is not allowed by the vault's RBAC: a clear, permanent denial.
    r = bootsecrets(azure_manifest(outdir, imds, kv, [{"path": "db", "ref": "db"}]))
    assert r.code == 1 and "ForbiddenByRbac" in r.stderr, r
    assert f"system-assigned managed identity (client_id {imds.system.client_id})" in r.stderr, r
    # Selected by object id, a denial names the client id IMDS reported as well.
    kv.allow_only(imds.user(0).object_id)
    r = bootsecrets(azure_manifest(outdir, imds, kv, [{"path": "db", "ref": "db"}],
                                   backend_extra=f'object_id = "{b.object_id}"'))
    assert r.code == 1, r
    assert (f"user-assigned identity with object_id {b.object_id} (client_id {b.client_id})"
            in r.stderr), r
    # An identity that is not attached to the VM stays "not found" until the deadline.
    r = bootsecrets(azure_manifest(outdir, imds, kv, [{"path": "db", "ref": "db"}],
                                   settings="deadline_seconds = 2",
                                   backend_extra='client_id = "11111111-2222-3333-4444-555555555555"'))
    assert r.code == 3 and "not assigned to this VM (yet)" in r.stderr, r


def test_custom_ca_is_required(azure_imds, key_vault, outdir, bootsecrets):
    key_vault.set_secret("db", "x")
    r = bootsecrets(azure_manifest(outdir, azure_imds, key_vault, [{"path": "db", "ref": "db"}],
                                   settings="deadline_seconds = 60", ca=False))
    assert r.code == 1, r
    assert "TLS handshake with Key Vault failed" in r.stderr, r
    assert r.elapsed < 30, r
    assert key_vault.served == 0


def test_proxy_variables_are_ignored(azure_imds, key_vault, outdir, bootsecrets):
    """A proxy that does not exist: any request sent through it would fail."""
    from support.net import free_port

    key_vault.set_secret("db", "direct")
    dead = f"http://127.0.0.1:{free_port()}"
    env = {k: dead for k in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY")}
    r = bootsecrets(azure_manifest(outdir, azure_imds, key_vault, [{"path": "db", "ref": "db"}],
                                   settings="deadline_seconds = 10"), env=env)
    assert r.code == 0, r
    assert (outdir / "db").read_bytes() == b"direct"
    assert azure_imds.count("/metadata/identity/oauth2/token") >= 1


def test_canary_never_printed(azure_imds, key_vault, outdir, bootsecrets):
    key_vault.set_secret("db", CANARY)
    key_vault.set_secret("json", json.dumps({"other": CANARY}))
    r = bootsecrets(azure_manifest(outdir, azure_imds, key_vault, [{"path": "db", "ref": "db"}]), "-vv")
    assert r.code == 0, r
    r2 = bootsecrets(azure_manifest(outdir, azure_imds, key_vault,
                                    [{"path": "j", "ref": "json", "json_key": "password"}]), "-vv")
    assert r2.code == 1, r2
    assert azure_imds.handed_out
    for res in (r, r2):
        assert CANARY not in res.output, res
        for tok in azure_imds.handed_out:
            assert tok not in res.output, res


def test_check_validates_settings(azure_imds, key_vault, outdir, bootsecrets):
    m = azure_manifest(outdir, azure_imds, key_vault, [{"path": "db", "ref": "db"}],
                       backend_extra='client_id = "x"\nobject_id = "y"')
    r = bootsecrets(m, command="check")
    assert r.code == 2, r
    for needle in ("at most one", "client_id `x` is not a GUID"):
        assert needle in r.stderr, (needle, r)
    m = azure_manifest(outdir, azure_imds, key_vault, [{"path": "db", "ref": "db_1", "version": "v1",
                                                        "version_id": "x"}])
    r = bootsecrets(m, command="check")
    assert r.code == 2, r
    for needle in ("32 hexadecimal digits", "not a Key Vault secret name", "`version_id` does not apply"):
        assert needle in r.stderr, (needle, r)
    r = bootsecrets(azure_manifest(outdir, azure_imds, key_vault, [{"path": "db", "ref": "db"}]),
                    command="check")
    assert r.code == 0, r
    assert "azure Key Vault https://testvault.vault.azure.net:" in r.stdout, r


def test_imds_double_is_strict(azure_imds):
    def call(path, headers):
        req = urllib.request.Request(azure_imds.url + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    q = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net"
    assert call(q, {})[0] == 400
    assert call("/metadata/identity/oauth2/token?resource=x", {"Metadata": "true"})[0] == 400
    status, body = call(q + "&client_id=11111111-2222-3333-4444-555555555555", {"Metadata": "true"})
    assert status == 400 and body["error_description"] == "Identity not found"
    status, body = call(q, {"Metadata": "true"})
    assert status == 200 and body["token_type"] == "Bearer" and body["expires_on"].isdigit()
    c = claims(body["access_token"])
    assert c["aud"] == "https://vault.azure.net" and c["iss"] == f"https://sts.windows.net/{azure_imds.tenant}/"
    assert c["xms_mirid"] == azure_imds.vm_resource_id and c["oid"] == c["sub"]
    status, body = call("/metadata/instance/compute?api-version=2021-02-01", {"Metadata": "true"})
    assert status == 200 and body["name"] == azure_imds.vm_name and body["vmScaleSetName"] == ""
    assert "BEGIN PUBLIC KEY" in azure_imds.public_pem()


def test_oversize_key_vault_response_is_refused(azure_imds, key_vault, outdir, bootsecrets):
    key_vault.set_secret("big", "z" * 5000)
    r = bootsecrets(azure_manifest(outdir, azure_imds, key_vault, [{"path": "big", "ref": "big"}],
                                   settings="max_response_bytes = 2000"))
    assert r.code == 1 and "larger than 2000 bytes" in r.stderr and r.elapsed < 15, r
    assert published(outdir) == {}
    r = bootsecrets(azure_manifest(outdir, azure_imds, key_vault, [{"path": "big", "ref": "big"}]))
    assert r.code == 0, r
