"""The Vault backend end to end: the built binary against a real OpenBao server.

KV v1 and v2, versions, fields, namespaces, TLS with a custom CA, every login OpenBao has
(token, AppRole, JWT, Kubernetes with a TokenReview double), aws (IAM) through a login front that
replays the signed request to moto's STS, sealing, and token revocation.
"""

import base64
import json
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import BIN, node_argv, published, status, vault_manifest
from support.jwt import Signer
from support.openbao import AwsLoginProxy, TokenReviewDouble


@pytest.fixture
def kv(bao):
    """A fresh KV v2 mount and a token file allowed to read it (and nothing else)."""
    mount = f"kv-{uuid.uuid4().hex[:8]}"
    bao.enable_kv(mount, 2)
    bao.read_policy(mount, f"{mount}/data/*", f"{mount}/*")
    return mount


def token_auth(credfile, bao, policies, name="token"):
    tok = bao.token(policies)
    return tok, {"method": "token", "token_file": str(credfile(name, tok + "\n"))}


def accessors(bao):
    return set(bao.api("LIST", "auth/token/accessors")["data"]["keys"])


def test_kv2_whole_object_field_and_served_version(bao, kv, outdir, credfile, bootsecrets):
    bao.put(kv, "node/db", {"user": "kube", "password": "first"})
    v = bao.put(kv, "node/db", {"user": "kube", "password": "pw-2", "port": 5432})
    tok, auth = token_auth(credfile, bao, [kv])
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [
        {"path": "db.json", "ref": f"{kv}/node/db"},
        {"path": "db-password", "ref": f"{kv}/node/db", "field": "password"},
        {"path": "db-port", "ref": f"{kv}/node/db", "field": "port", "mode": "0440"},
    ]))
    assert r.code == 0, r
    assert json.loads((outdir / "db.json").read_text()) == {
        "user": "kube", "password": "pw-2", "port": 5432}
    assert (outdir / "db-password").read_bytes() == b"pw-2"
    assert (outdir / "db-port").read_bytes() == b"5432"
    assert stat.S_IMODE((outdir / "db-port").stat().st_mode) == 0o440
    assert f"version {v}" in r.stderr, r
    assert tok not in r.output and "pw-2" not in r.output
    # A token placed by other means is kept by default: the next boot needs it.
    assert bao.token_works(tok)


def test_kv2_pinned_version_and_base64_field(bao, kv, outdir, credfile, bootsecrets):
    v1 = bao.put(kv, "tls", {"key": base64.b64encode(b"\x00old-der").decode()})
    bao.put(kv, "tls", {"key": base64.b64encode(b"\x00new-der").decode()})
    _, auth = token_auth(credfile, bao, [kv])
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [
        {"path": "key.der", "ref": f"{kv}/tls", "version": str(v1), "field": "key",
         "encoding": "base64"},
    ]))
    assert r.code == 0, r
    assert (outdir / "key.der").read_bytes() == b"\x00old-der"
    assert f"version {v1}" in r.stderr


@pytest.mark.parametrize("how", ["deleted", "destroyed"])
def test_deleted_or_destroyed_version_is_permanent_and_nothing_is_written(
        bao, kv, outdir, credfile, bootsecrets, how):
    bao.put(kv, "gone", {"v": "one"})
    bao.put(kv, "gone", {"v": "two"})
    bao.api("POST", f"{kv}/{'delete' if how == 'deleted' else 'destroy'}/gone", {"versions": [1]})
    _, auth = token_auth(credfile, bao, [kv])
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [
        {"path": "ok", "ref": f"{kv}/gone"},
        {"path": "old", "ref": f"{kv}/gone", "version": "1"},
    ]), timeout=60)
    assert r.code == 1, r
    assert f"version 1 is {how}" in r.stderr, r
    assert "secret `old`" in r.stderr
    assert r.elapsed < 15, "a permanent error must not be retried"
    assert not (outdir / "ok").exists() and not (outdir / "old").exists()


def test_kv1_detected_and_explicit(bao, outdir, credfile, bootsecrets):
    mount = f"kv1-{uuid.uuid4().hex[:8]}"
    bao.enable_kv(mount, 1)
    bao.put(mount, "app/api", {"token": "kv1-value"}, version=1)
    bao.read_policy(mount, f"{mount}/*")
    _, auth = token_auth(credfile, bao, [mount])
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [
        {"path": "detected", "ref": f"{mount}/app/api", "field": "token"},
        {"path": "explicit", "ref": "app/api", "mount": mount, "kv_version": 1,
         "field": "token"},
    ]))
    assert r.code == 0, r
    assert (outdir / "detected").read_bytes() == b"kv1-value"
    assert (outdir / "explicit").read_bytes() == b"kv1-value"


def test_missing_path_denied_path_and_missing_field_are_permanent(
        bao, kv, outdir, credfile, bootsecrets):
    bao.put(kv, "present", {"a": "1"})
    other = f"kv-{uuid.uuid4().hex[:8]}"
    bao.enable_kv(other, 2)
    bao.put(other, "x", {"a": "1"})
    _, auth = token_auth(credfile, bao, [kv])
    cases = [
        ({"ref": f"{kv}/absent"}, "not found (404)"),
        ({"ref": "x", "mount": other, "kv_version": 2}, "permission denied (403)"),
        ({"ref": f"{kv}/present", "field": "b"}, "field `b`"),
    ]
    for extra, expected in cases:
        r = bootsecrets(vault_manifest(outdir, bao.url, auth, [{"path": "f", **extra}]))
        assert r.code == 1, r
        assert expected in r.stderr, (expected, r)
        assert r.elapsed < 15
        assert not (outdir / "f").exists()


def test_namespace(bao, outdir, credfile, bootsecrets):
    ns = f"team-{uuid.uuid4().hex[:6]}"
    bao.api("POST", f"sys/namespaces/{ns}")
    bao.enable_kv("secret", 2, namespace=ns)
    bao.put("secret", "edge", {"psk": "ns-value"}, namespace=ns)
    bao.policy("reader", 'path "secret/*" { capabilities = ["read"] }', namespace=ns)
    tok = bao.api("POST", "auth/token/create", {"policies": ["reader"]},
                  namespace=ns)["auth"]["client_token"]
    auth = {"method": "token", "token_file": str(credfile("t", tok))}
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [
        {"path": "psk", "ref": "secret/edge", "field": "psk"}],
        backend_extra=f'namespace = "{ns}"'))
    assert r.code == 0, r
    assert (outdir / "psk").read_bytes() == b"ns-value"
    # Without the namespace the same token and path are not found.
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [
        {"path": "psk", "ref": "secret/edge", "mount": "secret", "kv_version": 2,
         "field": "psk"}]))
    assert r.code == 1, r
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [
        {"path": "psk", "ref": "secret/edge", "field": "psk"}],
        backend_extra='namespace = "no-such-ns"'))
    assert r.code == 1 and "namespace not found" in r.stderr, r


def test_custom_ca_and_tls_server_name(bao_factory, outdir, credfile, bootsecrets):
    b = bao_factory(tls=True)
    b.put("secret", "tls", {"v": "over-tls"})
    tok = b.token(["root"])
    auth = {"method": "token", "token_file": str(credfile("t", tok))}
    secret = [{"path": "v", "ref": "secret/tls", "field": "v"}]
    ca = f'ca_file = "{b.ca_file}"'

    r = bootsecrets(vault_manifest(outdir, b.url, auth, secret, backend_extra=ca))
    assert r.code == 0, r
    assert (outdir / "v").read_bytes() == b"over-tls"

    # The certificate names localhost and 127.0.0.1: addressing it as "localhost" works...
    r = bootsecrets(vault_manifest(outdir, b.url, auth, secret,
                                   backend_extra=ca + '\ntls_server_name = "localhost"'))
    assert r.code == 0, r
    # ...a name it does not carry fails at once, as does a server the system roots do not know.
    r = bootsecrets(vault_manifest(outdir, b.url, auth, secret,
                                   backend_extra=ca + '\ntls_server_name = "vault.example.com"'))
    assert r.code == 1 and "TLS handshake failed" in r.stderr and r.elapsed < 15, r
    r = bootsecrets(vault_manifest(outdir, b.url, auth, secret))
    assert r.code == 1 and "TLS handshake failed" in r.stderr and r.elapsed < 15, r


def test_approle_with_inline_role_id_file_secret_id_and_revocation(
        bao, kv, outdir, credfile, bootsecrets):
    mount = f"approle-{uuid.uuid4().hex[:6]}"
    bao.enable_auth(mount, "approle")
    bao.api("POST", f"auth/{mount}/role/node", {"token_policies": [kv], "token_ttl": "10m"})
    role_id = bao.api("GET", f"auth/{mount}/role/node/role-id")["data"]["role_id"]
    secret_id = bao.api("POST", f"auth/{mount}/role/node/secret-id")["data"]["secret_id"]
    bao.put(kv, "k", {"v": "approle-value"})
    sid = credfile("secret_id", secret_id)
    auth = {"method": "approle", "mount": mount, "role_id": role_id, "secret_id_file": str(sid)}
    before = accessors(bao)
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [{"path": "v", "ref": f"{kv}/k",
                                                            "field": "v"}]))
    assert r.code == 0, r
    assert (outdir / "v").read_bytes() == b"approle-value"
    assert secret_id not in r.output
    # The token the login minted was revoked (revoke-self) at the end of the run.
    assert accessors(bao) == before, "the login token outlived the run"

    # Kept when the manifest says so; role_id from a file works the same.
    rid = credfile("role_id", role_id)
    auth = {"method": "approle", "mount": mount, "role_id_file": str(rid),
            "secret_id_file": str(sid)}
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [{"path": "v", "ref": f"{kv}/k",
                                                            "field": "v"}],
                                   backend_extra="revoke_token = false"))
    assert r.code == 0, r
    assert len(accessors(bao) - before) == 1

    # A wrong secret_id is a permanent, named failure.
    bad = credfile("bad", "0000-not-a-secret-id")
    auth = {"method": "approle", "mount": mount, "role_id": role_id, "secret_id_file": str(bad)}
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [{"path": "v", "ref": f"{kv}/k"}]))
    assert r.code == 1 and "invalid role_id or secret_id" in r.stderr and r.elapsed < 15, r


def test_an_inline_role_id_without_a_secret_id_is_refused(bao, kv, outdir, credfile, bootsecrets):
    """A role with bind_secret_id = false logs in with its role_id alone: inline, that is a whole
    credential in a world-readable manifest and in the instance's user data. `check --offline`
    (what CI runs on user data), `check` and `run` refuse it; the same role_id from a root-only
    role_id_file logs in."""
    mount = f"approle-{uuid.uuid4().hex[:6]}"
    bao.enable_auth(mount, "approle")
    bao.api("POST", f"auth/{mount}/role/open", {"token_policies": [kv], "bind_secret_id": False,
                                                "token_bound_cidrs": ["127.0.0.1/32"]})
    role_id = bao.api("GET", f"auth/{mount}/role/open/role-id")["data"]["role_id"]
    bao.put(kv, "k", {"v": "role-id-alone"})
    secrets = [{"path": "v", "ref": f"{kv}/k", "field": "v"}]
    inline = vault_manifest(outdir, bao.url, {"method": "approle", "mount": mount,
                                              "role_id": role_id}, secrets)
    for command, args in (("check", ("--offline",)), ("check", ()), ("run", ())):
        r = bootsecrets(inline, *args, command=command)
        assert r.code == 2, r
        assert "inline role_id with no secret_id_file is a complete login credential" in r.stderr, r
        assert "role_id_file" in r.stderr, r
    assert not (outdir / "v").exists()
    rid = credfile("role_id", role_id)
    r = bootsecrets(vault_manifest(outdir, bao.url, {"method": "approle", "mount": mount,
                                                     "role_id_file": str(rid)}, secrets))
    assert r.code == 0, r
    assert (outdir / "v").read_bytes() == b"role-id-alone"
    assert role_id not in r.output


def test_approle_wrapped_secret_id_works_once(bao, kv, outdir, credfile, bootsecrets):
    mount = f"approle-{uuid.uuid4().hex[:6]}"
    bao.enable_auth(mount, "approle")
    bao.api("POST", f"auth/{mount}/role/node", {"token_policies": [kv]})
    role_id = bao.api("GET", f"auth/{mount}/role/node/role-id")["data"]["role_id"]
    r = requests.post(f"{bao.url}/v1/auth/{mount}/role/node/secret-id",
                      headers={"X-Vault-Token": "root", "X-Vault-Wrap-TTL": "5m"}, timeout=10)
    wrapping = r.json()["wrap_info"]["token"]
    bao.put(kv, "k", {"v": "wrapped-ok"})
    auth = {"method": "approle", "mount": mount, "role_id": role_id,
            "secret_id_file": str(credfile("wrapped", wrapping)), "secret_id_wrapped": True}
    m = vault_manifest(outdir, bao.url, auth, [{"path": "v", "ref": f"{kv}/k", "field": "v"}])
    r = bootsecrets(m)
    assert r.code == 0, r
    assert (outdir / "v").read_bytes() == b"wrapped-ok"
    assert wrapping not in r.output
    r = bootsecrets(m)
    assert r.code == 1 and "already used" in r.stderr, r


def jwt_mount(bao, kv, signer, kind="jwt", mount=None, audience="bootsecrets"):
    mount = mount or f"{kind}-{uuid.uuid4().hex[:6]}"
    bao.enable_auth(mount, "jwt")
    bao.api("POST", f"auth/{mount}/config", {"jwt_validation_pubkeys": [signer.public_pem()],
                                              "bound_issuer": "https://issuer.test"})
    bao.api("POST", f"auth/{mount}/role/node", {
        "role_type": "jwt", "user_claim": "sub", "bound_audiences": [audience],
        "token_policies": [kv], "token_ttl": "10m"})
    return mount


def test_jwt_login_and_expired_jwt(bao, kv, outdir, credfile, bootsecrets):
    signer = Signer()
    mount = jwt_mount(bao, kv, signer)
    bao.put(kv, "k", {"v": "jwt-value"})
    good = signer.sign({"iss": "https://issuer.test", "aud": "bootsecrets", "sub": "node-1"})
    auth = {"method": "jwt", "mount": mount, "role": "node",
            "jwt_file": str(credfile("jwt", good))}
    before = accessors(bao)
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [{"path": "v", "ref": f"{kv}/k",
                                                            "field": "v"}]))
    assert r.code == 0, r
    assert (outdir / "v").read_bytes() == b"jwt-value"
    assert good not in r.output
    assert accessors(bao) == before

    expired = signer.sign({"iss": "https://issuer.test", "aud": "bootsecrets", "sub": "node-1",
                           "exp": int(time.time()) - 600, "nbf": int(time.time()) - 900,
                           "iat": int(time.time()) - 900})
    auth["jwt_file"] = str(credfile("expired", expired))
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [{"path": "v", "ref": f"{kv}/k"}]))
    assert r.code == 1 and "login refused" in r.stderr and r.elapsed < 15, r


def test_kubernetes_login_through_token_review(bao, kv, outdir, credfile, bootsecrets):
    signer = Signer()
    review = TokenReviewDouble(signer).start()
    try:
        mount = f"k8s-{uuid.uuid4().hex[:6]}"
        bao.enable_auth(mount, "kubernetes")
        bao.api("POST", f"auth/{mount}/config", {
            "kubernetes_host": review.url, "kubernetes_ca_cert": review.ca_pem,
            "disable_local_ca_jwt": True})
        bao.api("POST", f"auth/{mount}/role/node", {
            "bound_service_account_names": ["bootsecrets"],
            "bound_service_account_namespaces": ["kube-system"],
            "token_policies": [kv], "token_ttl": "10m"})
        bao.put(kv, "k", {"v": "k8s-value"})
        jwt = review.issue("kube-system", "bootsecrets")
        auth = {"method": "kubernetes", "mount": mount, "role": "node",
                "jwt_file": str(credfile("sa-token", jwt))}
        r = bootsecrets(vault_manifest(outdir, bao.url, auth, [{"path": "v", "ref": f"{kv}/k",
                                                                "field": "v"}]))
        assert r.code == 0, r
        assert (outdir / "v").read_bytes() == b"k8s-value"
        assert review.reviews == [jwt], "OpenBao must have asked the TokenReview API"

        # A service account the role is not bound to is refused.
        other = review.issue("default", "someone-else")
        auth["jwt_file"] = str(credfile("other", other))
        r = bootsecrets(vault_manifest(outdir, bao.url, auth, [{"path": "v", "ref": f"{kv}/k"}]))
        assert r.code == 1 and "login" in r.stderr and r.elapsed < 15, r
    finally:
        review.stop()


def test_aws_iam_login_signed_with_imds_credentials(
        bao, kv, moto, imds, outdir, credfile, bootsecrets):
    mount = f"aws-{uuid.uuid4().hex[:6]}"
    proxy = AwsLoginProxy(bao, sts_url=moto.url, mount=mount, server_id="vault.test").start()
    try:
        proxy.role("node", "arn:aws:iam::123456789012:role/node", [kv])
        proxy.role("other", "arn:aws:iam::123456789012:role/nobody", [kv])
        bao.put(kv, "k", {"v": "aws-value"})
        auth = {"method": "aws", "mount": mount, "role": "node", "server_id": "vault.test",
                "sts_endpoint": moto.url, "imds_endpoint": imds.url}
        secret = [{"path": "v", "ref": f"{kv}/k", "field": "v"}]
        before = accessors(bao)
        r = bootsecrets(vault_manifest(outdir, proxy.url, auth, secret))
        assert r.code == 0, r
        assert (outdir / "v").read_bytes() == b"aws-value"
        assert accessors(bao) == before, "the aws login token was not revoked"
        assert len(proxy.logins) == 1
        for leaked in imds.handed_out:
            assert leaked not in r.output

        # The server ID is signed in: a Vault expecting another one refuses the login.
        proxy.server_id = "other-vault"
        r = bootsecrets(vault_manifest(outdir, proxy.url, auth, secret))
        assert r.code == 1 and "login" in r.stderr and r.elapsed < 15, r
        proxy.server_id = "vault.test"

        # A role bound to another IAM principal refuses this instance.
        auth["role"] = "other"
        r = bootsecrets(vault_manifest(outdir, proxy.url, auth, secret))
        assert r.code == 1 and r.elapsed < 15, r
    finally:
        proxy.stop()


def test_sealed_then_unsealed_during_the_run_is_retried(bao_factory, outdir, credfile, tmp_path):
    b = bao_factory()
    b.put("secret", "s", {"v": "after-unseal"})
    tok = b.token(["root"])
    b.seal()
    manifest = tmp_path / "m.toml"
    manifest.write_text(vault_manifest(outdir, b.url, {"method": "token",
                                                       "token_file": str(credfile("t", tok))},
                                       [{"path": "v", "ref": "secret/s", "field": "v"}],
                                       settings="deadline_seconds = 60"))
    proc = subprocess.Popen(node_argv([str(BIN), "run", "--manifest", str(manifest)]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"PATH": os.environ["PATH"]})
    time.sleep(3)
    assert proc.poll() is None, "bootsecrets must wait for a sealed Vault"
    b.unseal()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Vault is sealed (503)" in err, err
    assert (outdir / "v").read_bytes() == b"after-unseal"


def test_sealed_for_the_whole_deadline_fails_within_it(bao_factory, outdir, credfile,
                                                       bootsecrets):
    b = bao_factory()
    tok = b.token(["root"])
    b.seal()
    r = bootsecrets(vault_manifest(outdir, b.url, {"method": "token",
                                                   "token_file": str(credfile("t", tok))},
                                   [{"path": "v", "ref": "secret/s"}],
                                   settings="deadline_seconds = 6"))
    assert r.code == 3, r
    assert "Vault is sealed" in r.stderr and "deadline of 6s exceeded" in r.stderr, r
    assert r.elapsed < 9, r
    assert published(outdir) == {}
    assert status(outdir)["run"]["outcome"] == "deadline_exceeded"


def test_token_file_revoked_when_asked(bao, kv, outdir, credfile, bootsecrets):
    bao.put(kv, "k", {"v": "x"})
    tok, auth = token_auth(credfile, bao, [kv])
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [{"path": "v", "ref": f"{kv}/k"}],
                                   backend_extra="revoke_token = true"))
    assert r.code == 0, r
    assert not bao.token_works(tok), "revoke_token = true must revoke the token"


def test_vault_down_is_transient_until_the_deadline(outdir, credfile, bootsecrets):
    from support.net import free_port
    auth = {"method": "token", "token_file": str(credfile("t", "s.whatever"))}
    r = bootsecrets(vault_manifest(outdir, f"http://127.0.0.1:{free_port()}", auth,
                                   [{"path": "v", "ref": "secret/x"}],
                                   settings="deadline_seconds = 4"))
    assert r.code == 3 and "connection refused" in r.stderr and r.elapsed < 7, r


def test_check_validates_vault_settings_offline(outdir, credfile, bootsecrets, tmp_path):
    world = credfile("world", "s.token", mode=0o644)
    r = bootsecrets(vault_manifest(outdir, "http://127.0.0.1:1", {
        "method": "token", "token_file": str(world)}, [{"path": "v", "ref": "secret/x"}]),
        command="check")
    assert r.code == 2 and "readable by others" in r.stderr, r
    r = bootsecrets(vault_manifest(outdir, "https://vault.example.com", {
        "method": "approle", "secret_id_file": str(tmp_path / "missing")},
        [{"path": "v", "ref": "secret/x"}], backend_extra='namespace = "a b"'), command="check")
    assert r.code == 2, r
    for expected in ["approle needs role_id or role_id_file",
                     "secret_id_file `", "cannot be opened: no such file", "namespace `a b`"]:
        assert expected in r.stderr, (expected, r)
    ok = credfile("ok", "s.token")
    r = bootsecrets(vault_manifest(outdir, "https://vault.example.com", {
        "method": "token", "token_file": str(ok)},
        [{"path": "v", "ref": "secret/x", "kv_version": 2, "version_stage": "AWSCURRENT",
          "version": "0"}]), command="check")
    assert r.code == 2, r
    for expected in ["kv_version needs `mount`", "`version_stage` does not apply",
                     "version `0` is not a KV v2 version number"]:
        assert expected in r.stderr, (expected, r)
    r = bootsecrets(vault_manifest(outdir, "http://vault.example.com:8200", {
        "method": "kubernetes", "jwt_file": str(credfile("j", "x.y.z"))},
        [{"path": "v", "ref": "secret/x"}]), command="check")
    assert r.code == 2 and "plain http" in r.stderr and "`role` is required" in r.stderr, r
    r = bootsecrets(vault_manifest(outdir, "https://vault.example.com", {
        "method": "token", "token_file": str(ok)}, [{"path": "v", "ref": "secret/x",
                                                     "field": "f"}]), command="check")
    assert r.code == 0, r
    assert "vault at https://vault.example.com" in r.stdout + r.stderr


class _HugeLogin:
    """A Vault double whose logins answer 64 MiB, chunked (no Content-Length): a client that
    bounds its responses stops reading after max_response_bytes."""

    def __init__(self):
        import http.server
        import socketserver
        sent = self.sent = {"bytes": 0, "logins": 0}

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sent["logins"] += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b'{"auth":{"client_token":"hvs.x"},"pad":"' + b"a" * 65536
                try:
                    for _ in range(1024):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        sent["bytes"] += len(chunk)
                        chunk = b"a" * 65536
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

        class S(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True

        self.srv = S(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def stop(self):
        self.srv.shutdown()


@pytest.mark.parametrize("method", ["approle", "jwt", "kubernetes"])
def test_a_login_answer_is_bounded_by_max_response_bytes(method, outdir, credfile, bootsecrets):
    cred = str(credfile("cred", "credential"))
    auth = {"approle": {"method": "approle", "role_id_file": cred, "secret_id_file": cred},
            "jwt": {"method": "jwt", "jwt_file": cred},
            "kubernetes": {"method": "kubernetes", "role": "node", "jwt_file": cred}}[method]
    huge = _HugeLogin()
    try:
        r = bootsecrets(vault_manifest(outdir, huge.url, auth, [{"path": "v", "ref": "secret/x"}],
                                       settings="max_response_bytes = 100000\ndeadline_seconds = 10"))
        assert r.code == 1, r
        assert f"login with {method}" in r.stderr and "larger than 100000 bytes" in r.stderr, r
        # It stopped reading: far less than the 64 MiB on offer reached it.
        assert huge.sent["bytes"] < 16 << 20, huge.sent
        assert huge.sent["logins"] == 1, "a refused answer is permanent: no retry"
    finally:
        huge.stop()


def test_oversize_vault_response_is_refused(bao, kv, outdir, credfile, bootsecrets):
    bao.put(kv, "big", {"v": "y" * 500})
    _, auth = token_auth(credfile, bao, [kv])
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [{"path": "v", "ref": f"{kv}/big"}],
                                   settings="max_response_bytes = 300"))
    assert r.code == 1 and "larger than 300 bytes" in r.stderr and r.elapsed < 15, r
    assert published(outdir) == {}


def test_azure_login_with_the_managed_identity(bao, kv, azure_imds, outdir, bootsecrets):
    """Vault's azure method, stood in for by OpenBao's jwt method mounted at auth/azure: it
    verifies the IMDS double's managed-identity JWT (audience, issuer, and the VM's resource id
    in `xms_mirid`). The extra fields of the azure body are checked by a unit test."""
    mount = f"azure-{uuid.uuid4().hex[:6]}"
    bao.enable_auth(mount, "jwt")
    bao.api("POST", f"auth/{mount}/config", {
        "jwt_validation_pubkeys": [azure_imds.public_pem()],
        "bound_issuer": f"https://sts.windows.net/{azure_imds.tenant}/"})
    bao.api("POST", f"auth/{mount}/role/node", {
        "role_type": "jwt", "user_claim": "sub",
        "bound_audiences": ["https://management.azure.com/"],
        "bound_claims": {"xms_mirid": azure_imds.vm_resource_id},
        "token_policies": [kv], "token_ttl": "10m"})
    bao.put(kv, "k", {"v": "azure-login-value"})
    auth = {"method": "azure", "mount": mount, "role": "node", "imds_endpoint": azure_imds.url}
    before = accessors(bao)
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [{"path": "v", "ref": f"{kv}/k",
                                                            "field": "v"}]))
    assert r.code == 0, r
    assert (outdir / "v").read_bytes() == b"azure-login-value"
    assert accessors(bao) == before
    assert azure_imds.tokens_for("https://management.azure.com/"), "token for Vault's resource"
    for t in azure_imds.handed_out:
        assert t not in r.output

    # A role bound to another VM refuses this one, permanently.
    bao.api("POST", f"auth/{mount}/role/other", {
        "role_type": "jwt", "user_claim": "sub",
        "bound_audiences": ["https://management.azure.com/"],
        "bound_claims": {"xms_mirid": "/subscriptions/x/resourceGroups/y/providers/"
                                      "Microsoft.Compute/virtualMachines/other"},
        "token_policies": [kv]})
    auth["role"] = "other"
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [{"path": "v", "ref": f"{kv}/k"}]))
    assert r.code == 1 and "login with azure" in r.stderr and r.elapsed < 15, r


def test_azure_login_waits_for_the_identity_to_be_assigned(bao, kv, azure_imds_factory, outdir,
                                                          bootsecrets):
    imds = azure_imds_factory(not_assigned_for=3)
    mount = f"azure-{uuid.uuid4().hex[:6]}"
    bao.enable_auth(mount, "jwt")
    bao.api("POST", f"auth/{mount}/config", {"jwt_validation_pubkeys": [imds.public_pem()]})
    bao.api("POST", f"auth/{mount}/role/node", {
        "role_type": "jwt", "user_claim": "sub",
        "bound_audiences": ["https://management.azure.com/"], "token_policies": [kv]})
    bao.put(kv, "k", {"v": "late-identity"})
    r = bootsecrets(vault_manifest(outdir, bao.url, {
        "method": "azure", "mount": mount, "role": "node", "imds_endpoint": imds.url},
        [{"path": "v", "ref": f"{kv}/k", "field": "v"}], settings="deadline_seconds = 30"))
    assert r.code == 0, r
    assert r.elapsed >= 2.5 and imds.not_assigned_answers > 0, r


def test_gcp_login_with_the_instance_identity_token(bao, kv, gce_metadata, outdir, bootsecrets):
    """Vault's gcp method, stood in for by OpenBao's jwt method at auth/gcp: it verifies the
    metadata server's identity JWT for audience `vault/ROLE` (format=full)."""
    mount = f"gcp-{uuid.uuid4().hex[:6]}"
    bao.enable_auth(mount, "jwt")
    bao.api("POST", f"auth/{mount}/config", {
        "jwt_validation_pubkeys": [gce_metadata.public_pem()],
        "bound_issuer": "https://accounts.google.com"})
    bao.api("POST", f"auth/{mount}/role/node", {
        "role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault/node"],
        "bound_claims": {"email": gce_metadata.email("node"),
                         "/google/compute_engine/project_id": gce_metadata.project_id},
        "token_policies": [kv], "token_ttl": "10m"})
    bao.put(kv, "k", {"v": "gcp-login-value"})
    auth = {"method": "gcp", "mount": mount, "role": "node",
            "metadata_endpoint": gce_metadata.url}
    before = accessors(bao)
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [{"path": "v", "ref": f"{kv}/k",
                                                            "field": "v"}]))
    assert r.code == 0, r
    assert (outdir / "v").read_bytes() == b"gcp-login-value"
    assert accessors(bao) == before
    for t in gce_metadata.handed_out:
        assert t not in r.output

    # The audience names the role: a token asked for another role does not open this one.
    bao.api("POST", f"auth/{mount}/role/other", {
        "role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault/node"],
        "token_policies": [kv]})
    auth["role"] = "other"
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [{"path": "v", "ref": f"{kv}/k"}]))
    assert r.code == 1 and "login with gcp" in r.stderr and r.elapsed < 15, r


def client_certificate(common_name):
    """A self-signed TLS client certificate and its key (PEM), as a node's enrollment would
    provision them."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


def test_cert_login_with_a_per_node_certificate(bao_factory, outdir, credfile, bootsecrets):
    """Vault's cert method: the node proves itself with a TLS client certificate it holds (no
    secret_id in user data); the token it gets is revoked after the run."""
    b = bao_factory(tls=True)
    mount = f"kv-{uuid.uuid4().hex[:8]}"
    b.enable_kv(mount, 2)
    b.put(mount, "node/db", {"password": "cert-login-value"})
    b.read_policy(mount, f"{mount}/data/*")
    cert, key = client_certificate("node-1.example.internal")
    b.api("POST", "sys/auth/cert", {"type": "cert"})
    b.api("POST", "auth/cert/certs/node", {"certificate": cert, "token_policies": [mount],
                                           "allowed_common_names": ["node-1.example.internal"]})
    before = accessors(b)
    node_key = credfile("node.key", key)
    auth = {"method": "cert", "name": "node", "cert_file": str(credfile("node.crt", cert, 0o644)),
            "key_file": str(node_key)}
    m = vault_manifest(outdir, b.url, auth, [{"path": "db", "ref": f"{mount}/node/db", "field": "password"}],
                       backend_extra=f'ca_file = "{b.ca_file}"')
    r = bootsecrets(m)
    assert r.code == 0, r
    assert (outdir / "db").read_bytes() == b"cert-login-value"
    assert accessors(b) == before, "the login's token is revoked after the run"
    # A certificate Vault does not trust: refused, permanently, without retrying.
    other_cert, other_key = client_certificate("node-1.example.internal")
    auth.update(cert_file=str(credfile("other.crt", other_cert, 0o644)),
                key_file=str(credfile("other.key", other_key)))
    r = bootsecrets(vault_manifest(outdir, b.url, auth, [{"path": "db", "ref": f"{mount}/node/db"}],
                                   backend_extra=f'ca_file = "{b.ca_file}"',
                                   settings="deadline_seconds = 30"))
    assert r.code == 1 and "login with cert at auth/cert" in r.stderr, r
    assert r.elapsed < 15, r
    # The key is a credential: readable by others, it is refused before any request.
    node_key.chmod(0o644)
    r = bootsecrets(m, command="check")
    assert r.code == 2 and "holds a credential but is readable by others" in r.stderr, r
