"""The AWS path end to end: the built binary, a real moto server (signatures and IAM enforced),
and the IMDSv2 double. The read-path tests marked `@on_moto_and_localstack` run twice, once
against moto and once against a real LocalStack (credentials minted by its own STS); the rest
need what only moto does (SigV4 and IAM checks) or test the IMDS side alone."""

import base64
import json
import os
import stat

import pytest

from conftest import aws_manifest, published

# In a test so marked, `moto` is the Secrets Manager server of the case, moto or LocalStack, and
# `imds` / `imds_factory` mint their credentials from that server's sts:AssumeRole.
on_moto_and_localstack = pytest.mark.parametrize("moto", ["moto", "localstack"], indirect=True)


@pytest.fixture
def moto(request, moto):
    if getattr(request, "param", "moto") == "localstack":
        return request.getfixturevalue("localstack")
    return moto


@on_moto_and_localstack
def test_string_secret_is_written_with_default_mode(moto, imds, outdir, name, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/db", SecretString="s3cr3t-db")
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "db/password", "ref": f"{name}/db"}]))
    assert r.code == 0, r
    p = outdir / "db" / "password"
    assert p.read_bytes() == b"s3cr3t-db"
    assert stat.S_IMODE(p.stat().st_mode) == 0o400
    assert stat.S_IMODE(outdir.stat().st_mode) == 0o700
    assert "wrote db/password" in r.stderr and "9 bytes" in r.stderr, r
    assert "done: 1 secret(s)" in r.stderr


@on_moto_and_localstack
def test_binary_secret(moto, imds, outdir, name, bootsecrets):
    blob = bytes(range(256))
    moto.client("secretsmanager").create_secret(Name=f"{name}/bin", SecretBinary=blob)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "blob", "ref": f"{name}/bin"}]))
    assert r.code == 0, r
    assert (outdir / "blob").read_bytes() == blob


@on_moto_and_localstack
def test_json_key_and_base64(moto, imds, outdir, name, bootsecrets):
    doc = {"username": "kube", "password": 'p"w\\d', "cert": base64.b64encode(b"\x00\x01DER").decode()}
    moto.client("secretsmanager").create_secret(Name=f"{name}/json", SecretString=json.dumps(doc))
    r = bootsecrets(aws_manifest(outdir, imds, moto, [
        {"path": "user", "ref": f"{name}/json", "json_key": "username"},
        {"path": "pw", "ref": f"{name}/json", "json_key": "password"},
        {"path": "cert.der", "ref": f"{name}/json", "json_key": "cert", "encoding": "base64"},
    ]))
    assert r.code == 0, r
    assert (outdir / "user").read_bytes() == b"kube"
    assert (outdir / "pw").read_bytes() == b'p"w\\d'
    assert (outdir / "cert.der").read_bytes() == b"\x00\x01DER"


@on_moto_and_localstack
def test_lookup_by_arn(moto, imds, outdir, name, bootsecrets):
    arn = moto.client("secretsmanager").create_secret(Name=f"{name}/arn", SecretString="by-arn")["ARN"]
    assert arn.startswith("arn:aws:secretsmanager:")
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "x", "ref": arn}]))
    assert r.code == 0, r
    assert (outdir / "x").read_bytes() == b"by-arn"


@on_moto_and_localstack
def test_version_stage_and_version_id(moto, imds, outdir, name, bootsecrets):
    sm = moto.client("secretsmanager")
    v1 = sm.create_secret(Name=f"{name}/rot", SecretString="old")["VersionId"]
    sm.put_secret_value(SecretId=f"{name}/rot", SecretString="new")
    r = bootsecrets(aws_manifest(outdir, imds, moto, [
        {"path": "current", "ref": f"{name}/rot"},
        {"path": "previous", "ref": f"{name}/rot", "version_stage": "AWSPREVIOUS"},
        {"path": "pinned", "ref": f"{name}/rot", "version_id": v1},
    ]))
    assert r.code == 0, r
    assert (outdir / "current").read_bytes() == b"new"
    assert (outdir / "previous").read_bytes() == b"old"
    assert (outdir / "pinned").read_bytes() == b"old"
    assert f"version {v1}" in r.stderr


@on_moto_and_localstack
def test_region_comes_from_the_instance_identity_document(moto, imds_factory, outdir, name, bootsecrets):
    imds = imds_factory(region="eu-west-3")
    moto.client("secretsmanager", region="eu-west-3").create_secret(Name=f"{name}/r", SecretString="paris")
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "r", "ref": f"{name}/r"}], region=None))
    assert r.code == 0, r
    assert (outdir / "r").read_bytes() == b"paris"
    assert any(p == "/latest/dynamic/instance-identity/document" for _, p, _ in imds.requests)


@on_moto_and_localstack
def test_missing_secret_fails_and_writes_nothing(moto, imds, outdir, name, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/ok", SecretString="fine")
    r = bootsecrets(aws_manifest(outdir, imds, moto, [
        {"path": "ok", "ref": f"{name}/ok"},
        {"path": "missing", "ref": f"{name}/does-not-exist"},
    ]))
    assert r.code == 1, r
    assert "secret `missing`" in r.stderr and "not found" in r.stderr and "ResourceNotFoundException" in r.stderr, r
    assert published(outdir) == {}


def test_access_denied_fails_fast(moto, imds_factory, outdir, name, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/d", SecretString="x")
    imds = imds_factory(role="nobody")
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "d", "ref": f"{name}/d"}],
                                 settings="deadline_seconds = 60"), "-v")
    assert r.code == 1, r
    assert "access denied (AccessDenied, HTTP 403)" in r.stderr, r
    assert r.stderr.count(": attempt ") == 2, r  # one for the credentials, one for the secret: no retry
    assert "retrying" not in r.stderr
    assert r.elapsed < 30, r  # far from the 60 s deadline: it did not retry until the end
    assert published(outdir) == {}


def test_no_instance_profile_is_a_clear_permanent_error(moto, imds_factory, outdir, name, bootsecrets):
    imds = imds_factory(role=None)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "d", "ref": f"{name}/d"}]))
    assert r.code == 1, r
    assert "no IAM role" in r.stderr or "IAM role (instance profile)" in r.stderr, r
    assert "needed by secret(s) `d`" in r.stderr, r


def test_imds_that_comes_up_late_is_waited_for(moto, imds_factory, outdir, name, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/late", SecretString="patience")
    imds = imds_factory(listen_after=4.0)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "late", "ref": f"{name}/late"}],
                                 settings="deadline_seconds = 30"))
    assert r.code == 0, r
    assert (outdir / "late").read_bytes() == b"patience"
    assert "not reachable yet" in r.stderr and "connection refused" in r.stderr, r
    assert r.elapsed >= 4.0


def test_imds_down_for_the_whole_deadline_fails_within_it(moto, imds_factory, outdir, name, bootsecrets):
    imds = imds_factory(listen_after=60.0)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "x", "ref": f"{name}/x"}],
                                 settings="deadline_seconds = 3"))
    assert r.code == 3, r
    assert "deadline of 3s exceeded" in r.stderr and "connection refused" in r.stderr, r
    assert r.elapsed < 3 + 2, r
    assert published(outdir) == {}


def test_imdsv1_only_metadata_server_is_refused(moto, imds_factory, outdir, name, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/v1", SecretString="x")
    imds = imds_factory(v1_only=True)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "v1", "ref": f"{name}/v1"}],
                                 settings="deadline_seconds = 20"))
    assert r.code == 1, r
    assert "does not support IMDSv2" in r.stderr and "never falls back to IMDSv1" in r.stderr, r
    assert imds.gets_without_token() == []
    assert [m for m, _, _ in imds.requests if m == "GET"] == []
    assert published(outdir) == {}


def test_imds_double_is_strict(moto, imds):
    """The double refuses what EC2 refuses, so the tests above prove something."""
    import urllib.request
    import urllib.error

    def call(method, path, headers):
        req = urllib.request.Request(imds.url + path, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read().decode(), resp.headers
        except urllib.error.HTTPError as e:
            return e.code, "", e.headers

    assert call("PUT", "/latest/api/token", {})[0] == 400
    assert call("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "0"})[0] == 400
    assert call("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60",
                                             "X-Forwarded-For": "10.0.0.1"})[0] == 403
    status, tok, headers = call("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    assert status == 200 and headers["X-aws-ec2-metadata-token-ttl-seconds"] == "60"
    assert call("GET", "/latest/meta-data/iam/security-credentials/", {})[0] == 401
    assert call("GET", "/latest/meta-data/iam/security-credentials/", {"X-aws-ec2-metadata-token": "bad"})[0] == 401
    status, role, _ = call("GET", "/latest/meta-data/iam/security-credentials/", {"X-aws-ec2-metadata-token": tok})
    assert (status, role) == (200, "node")


def test_wrong_signature_is_rejected_by_moto_with_a_clear_error(moto, imds_factory, outdir, name, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/sig", SecretString="x")
    imds = imds_factory(corrupt_secret_key=True)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "sig", "ref": f"{name}/sig"}]))
    assert r.code == 1, r
    assert "request signature was rejected (SignatureDoesNotMatch, HTTP 403)" in r.stderr, r
    assert published(outdir) == {}


def test_backend_down_is_transient_and_bounded(moto, imds, outdir, name, bootsecrets):
    from support.net import free_port

    m = aws_manifest(outdir, imds, moto, [{"path": "x", "ref": f"{name}/x"}], settings="deadline_seconds = 3")
    m = m.replace(moto.url, f"http://127.0.0.1:{free_port()}")
    r = bootsecrets(m)
    assert r.code == 3, r
    assert "cannot reach Secrets Manager: connection refused" in r.stderr, r


@on_moto_and_localstack
def test_many_secrets_concurrently(moto, imds, outdir, name, bootsecrets):
    sm = moto.client("secretsmanager")
    for i in range(12):
        sm.create_secret(Name=f"{name}/{i}", SecretString=f"value-{i}")
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": f"s/{i}", "ref": f"{name}/{i}"} for i in range(12)],
                                 settings="concurrency = 3"))
    assert r.code == 0, r
    for i in range(12):
        assert (outdir / "s" / str(i)).read_bytes() == f"value-{i}".encode()


def test_tls_failure_is_permanent(moto, imds, outdir, name, bootsecrets):
    """https to a plain-http port: the handshake fails, and retrying cannot help."""
    m = aws_manifest(outdir, imds, moto, [{"path": "x", "ref": f"{name}/x"}], settings="deadline_seconds = 60")
    m = m.replace(f'endpoint = "{moto.url}"', f'endpoint = "{moto.url.replace("http://", "https://")}"')
    r = bootsecrets(m)
    assert r.code == 1, r
    assert "TLS handshake with Secrets Manager failed" in r.stderr, r
    assert r.elapsed < 30, r


def test_plain_http_endpoint_off_loopback_needs_allow_http(moto, imds, outdir, bootsecrets):
    m = aws_manifest(outdir, imds, moto, [{"path": "x", "ref": "x"}])
    m = m.replace(f'endpoint = "{moto.url}"', 'endpoint = "http://10.0.2.100:4566"')
    r = bootsecrets(m, command="check")
    assert r.code == 2 and "is plain http" in r.stderr, r
    r = bootsecrets(m.replace('type = "aws"', 'type = "aws"\nallow_http = true'), command="check")
    assert r.code == 0, r


@on_moto_and_localstack
def test_backend_that_comes_up_late_is_waited_for(moto, imds, outdir, name, bootsecrets):
    """Secrets Manager behind a proxy that drops connections for its first 3 seconds."""
    from support.proxy import LateProxy

    moto.client("secretsmanager").create_secret(Name=f"{name}/late", SecretString="eventually")
    proxy = LateProxy(moto.port, down_for=3.0).start()
    try:
        m = aws_manifest(outdir, imds, moto, [{"path": "late", "ref": f"{name}/late"}],
                         settings="deadline_seconds = 30")
        r = bootsecrets(m.replace(moto.url, f"http://127.0.0.1:{proxy.port}"))
    finally:
        proxy.stop()
    assert r.code == 0, r
    assert (outdir / "late").read_bytes() == b"eventually"
    assert proxy.refused >= 2 and proxy.forwarded >= 1, (proxy.refused, proxy.forwarded)
    assert "transient" in r.stderr and "retrying" in r.stderr, r


@on_moto_and_localstack
def test_size_limits_refuse_oversize_values_and_responses(moto, imds, outdir, name, bootsecrets):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/big", SecretString="x" * 300)
    secret = [{"path": "big", "ref": f"{name}/big"}]
    r = bootsecrets(aws_manifest(outdir, imds, moto, secret, settings="max_secret_bytes = 299"))
    assert r.code == 1 and "300 bytes, larger than 299 bytes" in r.stderr, r
    assert "secret `big`" in r.stderr and r.elapsed < 15
    r = bootsecrets(aws_manifest(outdir, imds, moto, secret, settings="max_response_bytes = 200"))
    assert r.code == 1 and "larger than 200 bytes" in r.stderr and r.elapsed < 15, r
    assert published(outdir) == {}
    r = bootsecrets(aws_manifest(outdir, imds, moto, secret, settings="max_secret_bytes = 300"))
    assert r.code == 0, r


def test_invalid_request_names_aws_reason_without_quoting_it(moto, imds, outdir, name, bootsecrets):
    """AWS answers InvalidRequestException both for a secret scheduled for deletion and for a
    version_id that does not carry the version_stage asked for: each gets its own message, picked
    from known phrases of AWS's, which are never echoed."""
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/gone", SecretString="x")
    sm.delete_secret(SecretId=f"{name}/gone", RecoveryWindowInDays=7)
    v1 = sm.create_secret(Name=f"{name}/rot", SecretString="old")["VersionId"]
    sm.put_secret_value(SecretId=f"{name}/rot", SecretString="new")

    gone = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "gone", "ref": f"{name}/gone"}],
                                    settings="deadline_seconds = 60"))
    assert gone.code == 1, gone
    assert "secret `gone`" in gone.stderr and "the secret is scheduled for deletion" in gone.stderr, gone
    assert "aws secretsmanager restore-secret" in gone.stderr, gone
    assert "(InvalidRequestException, HTTP 400)" in gone.stderr, gone
    assert "version_stage" not in gone.stderr, gone

    pinned = bootsecrets(aws_manifest(outdir, imds, moto, [
        {"path": "pinned", "ref": f"{name}/rot", "version_id": v1, "version_stage": "AWSCURRENT"},
    ], settings="deadline_seconds = 60"))
    assert pinned.code == 1, pinned
    assert "secret `pinned`" in pinned.stderr, pinned
    assert "`version_id` and `version_stage` do not match" in pinned.stderr, pinned
    assert "InvalidRequestException" in pinned.stderr and "deletion" not in pinned.stderr, pinned

    for r in (gone, pinned):
        assert "retrying" not in r.stderr and r.elapsed < 30, r
        for words in ("marked deleted", "not associated", "You provided", "You tried"):
            assert words not in r.output, (words, r)
    assert published(outdir) == {}

    # The pair that does match is read.
    r = bootsecrets(aws_manifest(outdir, imds, moto, [
        {"path": "pinned", "ref": f"{name}/rot", "version_id": v1, "version_stage": "AWSPREVIOUS"},
    ]))
    assert r.code == 0, r
    assert (outdir / "pinned").read_bytes() == b"old"
