"""A recognisable secret value, and every token and credential the metadata double hands out,
never appear in stdout or stderr: not on success, not on any failure path."""

import json

import pytest

from conftest import aws_manifest

CANARY = "CANARY-7f3a9c-secret-value"


def assert_clean(r, imds):
    assert CANARY not in r.output, r
    assert CANARY[::-1] not in r.output
    for tok in imds.handed_out:
        assert tok not in r.output, ("a token or credential leaked", r)


def test_success_never_prints_the_value(moto, imds, outdir, name, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/c", SecretString=CANARY)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "c", "ref": f"{name}/c"}]), "-vv")
    assert r.code == 0, r
    assert (outdir / "c").read_text() == CANARY
    assert imds.handed_out, "the double handed out credentials"
    assert_clean(r, imds)


@pytest.mark.parametrize("stored,extra", [
    (json.dumps({"other": CANARY}), {"json_key": "password"}),       # JSON key missing
    (f'"{CANARY}"', {"json_key": "password"}),                       # JSON, but not an object
    (CANARY, {"json_key": "password"}),                              # not JSON at all
    ('{"password": ' + CANARY + "}", {"json_key": "password"}),      # broken JSON around the value
    (CANARY + "!*", {"encoding": "base64"}),                         # not base64
    (json.dumps({"password": CANARY + "!"}), {"json_key": "password", "encoding": "base64"}),
])
def test_failed_transforms_never_print_the_value(moto, imds, outdir, name, bootsecrets, stored, extra):
    moto.client("secretsmanager").create_secret(Name=f"{name}/c", SecretString=stored)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "c", "ref": f"{name}/c", **extra}]), "-vv")
    assert r.code == 1, r
    assert "secret `c`" in r.stderr, r
    assert_clean(r, imds)
    assert not (outdir / "c").exists()


def test_auth_failures_never_print_credentials(moto, imds_factory, outdir, name, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/c", SecretString=CANARY)
    for kw in ({"corrupt_secret_key": True}, {"role": "nobody"}):
        imds = imds_factory(**kw)
        r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "c", "ref": f"{name}/c"}]), "-vv")
        assert r.code == 1, r
        assert_clean(r, imds)

