"""The GCP path end to end: the built binary, the GCE metadata double and the Secret Manager
double."""

import json
import os
import urllib.error
import urllib.request

from conftest import gcp_manifest, published, status
from support.jwt import claims

CANARY = "CANARY-gcp-91c2e0-secret-value"


def test_latest_number_alias_and_full_names(gce_metadata, secret_manager, outdir, bootsecrets):
    sm = secret_manager
    sm.add_version("db", b"v1")
    sm.add_version("db", b"v2")
    sm.add_version("db", b"v3")
    sm.set_alias("db", "blue", 2)
    sm.add_version("regional", b"in-europe", location="europe-west1")
    r = bootsecrets(gcp_manifest(outdir, gce_metadata, sm, [
        {"path": "latest", "ref": "db"},
        {"path": "one", "ref": "db", "version": "1"},
        {"path": "alias", "ref": "db", "version": "blue"},
        {"path": "full", "ref": "projects/123456789012/secrets/db/versions/1"},
        {"path": "full-project", "ref": "projects/bootsecrets-test/secrets/db"},
    ]))
    assert r.code == 0, r
    assert (outdir / "latest").read_bytes() == b"v3"
    assert (outdir / "one").read_bytes() == b"v1"
    assert (outdir / "alias").read_bytes() == b"v2"
    assert (outdir / "full").read_bytes() == b"v1"
    assert (outdir / "full-project").read_bytes() == b"v3"
    assert "version 3" in r.stderr and "version 2" in r.stderr, r
    # The project id came from the metadata server.
    assert gce_metadata.count("/project/project-id") == 1

    # Regional: a backend with `location`, a short id and a full regional name.
    m = gcp_manifest(outdir, gce_metadata, sm, [
        {"path": "r1", "ref": "regional"},
        {"path": "r2", "ref": "projects/bootsecrets-test/locations/europe-west1/secrets/regional"},
    ], backend_extra='location = "europe-west1"', project="bootsecrets-test")
    r = bootsecrets(m)
    assert r.code == 0, r
    assert (outdir / "r1").read_bytes() == (outdir / "r2").read_bytes() == b"in-europe"
    assert sm.count("/locations/europe-west1/secrets/regional/versions/latest:access") == 2
    assert gce_metadata.count("/project/project-id") == 1, "project set in the manifest: not asked"


def test_a_secret_is_labelled_with_the_project_it_is_read_from(gce_metadata, secret_manager, outdir,
                                                              bootsecrets):
    """A short `ref` is read from the backend's project: the manifest's, or, when it sets none,
    the one the metadata server names at run time. Messages, `check` and the status file name
    that project, never a placeholder."""
    secret_manager.add_version("db", b"labelled")
    configured = gcp_manifest(outdir, gce_metadata, secret_manager, [{"path": "x", "ref": "nope"}],
                              project="123456789012", settings="deadline_seconds = 60")
    r = bootsecrets(configured)
    assert r.code == 1, r
    assert "secret `x` (backend `gcp`, ref projects/123456789012/secrets/nope/versions/latest)" \
        in r.stderr, r
    r = bootsecrets(configured, command="check")
    assert r.code == 0 and "projects/123456789012/secrets/nope/versions/latest" in r.stdout, r

    from_metadata = gcp_manifest(outdir, gce_metadata, secret_manager, [{"path": "x", "ref": "nope"}],
                                 settings="deadline_seconds = 60")
    r = bootsecrets(from_metadata)
    assert r.code == 1, r
    assert "secret `x` (backend `gcp`, ref projects/bootsecrets-test/secrets/nope/versions/latest)" \
        in r.stderr, r
    assert status(outdir)["run"]["error"] in r.stderr, r
    r = bootsecrets(from_metadata, command="check")
    assert r.code == 0 and "nope/versions/latest" in r.stdout, r
    assert "(project)" not in r.output, r

    r = bootsecrets(gcp_manifest(outdir, gce_metadata, secret_manager, [{"path": "db", "ref": "db"}]))
    assert r.code == 0, r
    assert [s["ref"] for s in status(outdir)["secrets"]] == \
        ["projects/bootsecrets-test/secrets/db/versions/latest"]


def test_binary_payload_json_key_and_base64(gce_metadata, secret_manager, outdir, bootsecrets):
    blob = bytes(range(256)) * 4
    secret_manager.add_version("bin", blob)
    secret_manager.add_version("doc", json.dumps({"key": "PEM", "der": "AAEC"}).encode())
    r = bootsecrets(gcp_manifest(outdir, gce_metadata, secret_manager, [
        {"path": "bin", "ref": "bin"},
        {"path": "key", "ref": "doc", "json_key": "key"},
        {"path": "der", "ref": "doc", "json_key": "der", "encoding": "base64"},
    ]))
    assert r.code == 0, r
    assert (outdir / "bin").read_bytes() == blob
    assert (outdir / "key").read_bytes() == b"PEM"
    assert (outdir / "der").read_bytes() == b"\x00\x01\x02"


def test_wrong_crc32c_is_refused_and_nothing_written(gce_metadata, secret_manager, outdir, bootsecrets):
    secret_manager.add_version("ok", b"fine")
    secret_manager.add_version("bad", CANARY.encode(), wrong_crc=True)
    r = bootsecrets(gcp_manifest(outdir, gce_metadata, secret_manager, [
        {"path": "ok", "ref": "ok"}, {"path": "bad", "ref": "bad"},
    ], settings="deadline_seconds = 60"))
    assert r.code == 1, r
    assert "CRC32C checksum does not match" in r.stderr, r
    assert "retrying" not in r.stderr and r.elapsed < 30
    assert CANARY not in r.output
    assert published(outdir) == {}


def test_not_found_permission_denied_and_disabled_are_permanent(gce_metadata, secret_manager, outdir,
                                                                bootsecrets):
    sm = secret_manager
    sm.add_version("db", b"x")
    sm.add_version("off", b"x")
    sm.disable("off", 1)
    cases = [
        ({"ref": "nope"}, "not found (NOT_FOUND, HTTP 404)"),
        ({"ref": "db", "version": "7"}, "not found (NOT_FOUND, HTTP 404)"),
        ({"ref": "off"}, "disabled or destroyed (FAILED_PRECONDITION, HTTP 400)"),
        ({"ref": "projects/someone-else/secrets/db"}, "permission denied"),
    ]
    for extra, needle in cases:
        r = bootsecrets(gcp_manifest(outdir, gce_metadata, sm, [{"path": "x", **extra}],
                                     settings="deadline_seconds = 60"), "-v")
        assert r.code == 1, (extra, r)
        assert needle in r.stderr, (extra, r)
        assert "retrying" not in r.stderr and r.elapsed < 30, r
        assert "or it may not exist" not in r.output and "has no versions" not in r.output, \
            "the body's message is never quoted"
    sm.deny(gce_metadata.default_email)
    r = bootsecrets(gcp_manifest(outdir, gce_metadata, sm, [{"path": "x", "ref": "db"}]))
    assert r.code == 1 and "roles/secretmanager.secretAccessor" in r.stderr, r
    assert published(outdir) == {}


def test_unavailable_and_throttling_are_retried(gce_metadata, secret_manager, outdir, bootsecrets):
    secret_manager.add_version("db", b"after-the-storm")
    secret_manager.unavailable_first = 2
    secret_manager.throttled_first = 1
    r = bootsecrets(gcp_manifest(outdir, gce_metadata, secret_manager, [{"path": "db", "ref": "db"}],
                                 settings="deadline_seconds = 30"))
    assert r.code == 0, r
    assert (outdir / "db").read_bytes() == b"after-the-storm"
    assert "(UNAVAILABLE, HTTP 503)" in r.stderr and "(RESOURCE_EXHAUSTED, HTTP 429)" in r.stderr, r


def test_metadata_500_then_ok(gce_metadata_factory, outdir, bootsecrets):
    from support.gce import SecretManagerDouble

    md = gce_metadata_factory(fail_first=(500, 2))
    sm = SecretManagerDouble(md).start()
    try:
        sm.add_version("db", b"ok")
        r = bootsecrets(gcp_manifest(outdir, md, sm, [{"path": "db", "ref": "db"}],
                                     settings="deadline_seconds = 30"))
    finally:
        sm.stop()
    assert r.code == 0, r
    assert "HTTP 500" in r.stderr and "retrying" in r.stderr, r


def test_metadata_down_or_stalled_for_the_whole_deadline(gce_metadata_factory, secret_manager, outdir,
                                                         bootsecrets):
    for kw in ({"down": True}, {"stall": 30.0}):
        md = gce_metadata_factory(**kw)
        r = bootsecrets(gcp_manifest(outdir, md, secret_manager, [{"path": "db", "ref": "db"}],
                                     settings="deadline_seconds = 6", backend_extra="timeout_seconds = 2"))
        assert r.code == 3, (kw, r)
        assert "deadline of 6s exceeded" in r.stderr, r
        assert ("connection refused" if "down" in kw else "timed out") in r.stderr, (kw, r)
        assert r.elapsed < 6 + 2, (kw, r)
    assert published(outdir) == {}


def test_proxy_variables_are_ignored_for_the_metadata_server(gce_metadata, secret_manager, outdir,
                                                             bootsecrets):
    """A proxy that does not exist: a metadata request sent through it would fail. (Secret
    Manager's own client honours the proxy variables; NO_PROXY lets it reach the double, which
    it addresses as `localhost`, while the metadata double is addressed as 127.0.0.1.)"""
    from support.net import free_port

    secret_manager.add_version("db", b"direct")
    dead = f"http://127.0.0.1:{free_port()}"
    env = {k: dead for k in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY")}
    env.update(NO_PROXY="localhost", no_proxy="localhost")
    m = gcp_manifest(outdir, gce_metadata, secret_manager, [{"path": "db", "ref": "db"}],
                     settings="deadline_seconds = 10")
    assert gce_metadata.url.startswith("http://127.0.0.1:")
    r = bootsecrets(m.replace(secret_manager.url, f"http://localhost:{secret_manager.port}"), env=env)
    assert r.code == 0, r
    assert gce_metadata.count("/token") == 1


def test_service_account_selection(gce_metadata_factory, outdir, bootsecrets):
    from support.gce import SecretManagerDouble

    md = gce_metadata_factory(service_accounts=("node", "reader"))
    sm = SecretManagerDouble(md).start()
    try:
        sm.add_version("db", b"for-reader")
        sm.deny(md.email("node"))
        m = gcp_manifest(outdir, md, sm, [{"path": "db", "ref": "db"}])
        r = bootsecrets(m)
        assert r.code == 1 and "PERMISSION_DENIED" in r.stderr, r
        r = bootsecrets(m.replace('type = "gcp"', f'type = "gcp"\nservice_account = "{md.email("reader")}"'))
        assert r.code == 0, r
        assert (outdir / "db").read_bytes() == b"for-reader"
        r = bootsecrets(m.replace('type = "gcp"', 'type = "gcp"\nservice_account = "ghost@x.iam.gserviceaccount.com"'))
        assert r.code == 1 and "not found (HTTP 404" in r.stderr, r
    finally:
        sm.stop()


def test_canary_never_printed(gce_metadata, secret_manager, outdir, bootsecrets):
    secret_manager.add_version("db", CANARY.encode())
    secret_manager.add_version("json", json.dumps({"other": CANARY}).encode())
    r = bootsecrets(gcp_manifest(outdir, gce_metadata, secret_manager, [{"path": "db", "ref": "db"}]), "-vv")
    assert r.code == 0, r
    r2 = bootsecrets(gcp_manifest(outdir, gce_metadata, secret_manager,
                                  [{"path": "j", "ref": "json", "json_key": "password"}]), "-vv")
    assert r2.code == 1, r2
    assert gce_metadata.handed_out
    for res in (r, r2):
        assert CANARY not in res.output, res
        for tok in gce_metadata.handed_out:
            assert tok not in res.output, res


def test_check_validates_settings_and_refs(gce_metadata, secret_manager, outdir, bootsecrets):
    m = gcp_manifest(outdir, gce_metadata, secret_manager, [
        {"path": "a", "ref": "projects/p/locations/us-east1/secrets/s"},
        {"path": "b", "ref": "projects/p/secrets/s/versions/2", "version": "3"},
        {"path": "c", "ref": "s", "version": "-bad"},
        {"path": "d", "ref": "s", "version_stage": "AWSCURRENT"},
    ])
    r = bootsecrets(m, command="check")
    assert r.code == 2, r
    for needle in ("needs location", "use one", "not `latest`", "`version_stage` does not apply"):
        assert needle in r.stderr, (needle, r)
    r = bootsecrets(gcp_manifest(outdir, gce_metadata, secret_manager, [{"path": "a", "ref": "s"}]),
                    command="check")
    assert r.code == 0 and "gcp Secret Manager, project from the metadata server" in r.stdout, r


def test_metadata_double_is_strict(gce_metadata):
    def call(path, headers):
        req = urllib.request.Request(gce_metadata.url + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read().decode(), resp.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), e.headers

    root = "/computeMetadata/v1"
    g = {"Metadata-Flavor": "Google"}
    assert call(f"{root}/project/project-id", {})[0] == 403
    assert call(f"{root}/project/project-id", {**g, "X-Forwarded-For": "1.2.3.4"})[0] == 403
    status, text, headers = call(f"{root}/project/project-id", g)
    assert (status, text, headers["Metadata-Flavor"]) == (200, "bootsecrets-test", "Google")
    status, text, _ = call(f"{root}/instance/service-accounts/default/token", g)
    assert status == 200 and json.loads(text)["token_type"] == "Bearer"
    assert call(f"{root}/instance/service-accounts/default/identity", g)[0] == 400
    status, jwt, _ = call(f"{root}/instance/service-accounts/default/identity?audience=vault/gcp&format=full", g)
    c = claims(jwt)
    assert c["iss"] == "https://accounts.google.com" and c["aud"] == "vault/gcp"
    assert c["email"] == gce_metadata.default_email
    assert c["google"]["compute_engine"]["project_id"] == "bootsecrets-test"
    assert "google" not in claims(call(f"{root}/instance/service-accounts/default/identity?audience=a", g)[1])
    assert "BEGIN PUBLIC KEY" in gce_metadata.public_pem()
