"""The rest of the AWS read path on both Secrets Manager servers, moto and a real LocalStack
(tests/support/localstack.py; the cases of test_aws.py marked `@on_moto_and_localstack` are the
other half): a secret scheduled for deletion, the AWSPENDING stage, an unchanged second run,
throttling and 5xx. Credentials come from the IMDSv2 double, minted by each server's own STS.

LocalStack cannot be made to throttle or fail Secrets Manager by itself (its error-injection
settings cover Kinesis and DynamoDB only; its chaos API is not in localstack-core), so those
answers come from the fault proxy in front of it, which then lets the retry through to it. And
LocalStack checks no signatures and no IAM policy: the tests of those stay on moto, and the last
test here shows why.
"""

import json
import os
import stat

import pytest

from conftest import aws_manifest, published, status
from support.faults import GET_SECRET_VALUE, THROTTLING, Respond, aws_error


class At:
    """Stands in for the server argument of aws_manifest: only its `url` is used."""

    def __init__(self, url):
        self.url = url


def test_imds_credentials_are_an_assumed_role_of_the_server_itself(aws_server, aws_imds):
    """What bootsecrets signs with is a session of the `node` role, minted by that server's STS."""
    import boto3
    import urllib.request

    def call(method, path, headers):
        req = urllib.request.Request(aws_imds.url + path, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.read().decode()

    tok = call("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    creds = json.loads(call("GET", "/latest/meta-data/iam/security-credentials/node",
                            {"X-aws-ec2-metadata-token": tok}))
    sts = boto3.client("sts", endpoint_url=aws_server.url, region_name="us-east-1",
                       aws_access_key_id=creds["AccessKeyId"],
                       aws_secret_access_key=creds["SecretAccessKey"],
                       aws_session_token=creds["Token"])
    arn = sts.get_caller_identity()["Arn"]
    assert arn.startswith("arn:aws:sts::") and ":assumed-role/node/" in arn, arn


def test_secret_scheduled_for_deletion_is_a_permanent_error_until_restored(
        aws_server, aws_imds, outdir, name, bootsecrets):
    sm = aws_server.client("secretsmanager")
    sm.create_secret(Name=f"{name}/ok", SecretString="fine")
    sm.create_secret(Name=f"{name}/gone", SecretString="soon-gone")
    sm.delete_secret(SecretId=f"{name}/gone", RecoveryWindowInDays=7)
    m = aws_manifest(outdir, aws_imds, aws_server, [
        {"path": "ok", "ref": f"{name}/ok"},
        {"path": "gone", "ref": f"{name}/gone"},
    ], settings="deadline_seconds = 60")
    r = bootsecrets(m)
    assert r.code == 1, r
    assert ("secret `gone`" in r.stderr and "scheduled for deletion" in r.stderr
            and "(InvalidRequestException, HTTP 400)" in r.stderr), r
    assert "retrying" not in r.stderr and r.elapsed < 30, r
    assert published(outdir) == {}

    sm.restore_secret(SecretId=f"{name}/gone")
    r = bootsecrets(m)
    assert r.code == 0, r
    assert (outdir / "gone").read_bytes() == b"soon-gone"


def test_pending_stage_is_read_by_stage_and_current_stays_current(aws_server, aws_imds, outdir,
                                                                  name, bootsecrets):
    sm = aws_server.client("secretsmanager")
    sm.create_secret(Name=f"{name}/rot", SecretString="current")
    pending = sm.put_secret_value(SecretId=f"{name}/rot", SecretString="pending",
                                  VersionStages=["AWSPENDING"])["VersionId"]
    r = bootsecrets(aws_manifest(outdir, aws_imds, aws_server, [
        {"path": "current", "ref": f"{name}/rot"},
        {"path": "pending", "ref": f"{name}/rot", "version_stage": "AWSPENDING"},
        {"path": "by-id", "ref": f"{name}/rot", "version_id": pending},
    ]))
    assert r.code == 0, r
    assert (outdir / "current").read_bytes() == b"current"
    assert (outdir / "pending").read_bytes() == b"pending"
    assert (outdir / "by-id").read_bytes() == b"pending"
    assert {s["path"]: s["version"] for s in status(outdir)["secrets"]}["pending"] == pending


def test_unknown_stage_and_version_id_are_not_found(aws_server, aws_imds, outdir, name,
                                                   bootsecrets):
    sm = aws_server.client("secretsmanager")
    sm.create_secret(Name=f"{name}/s", SecretString="x")
    for key, value in (("version_stage", "NOSUCHSTAGE"),
                       ("version_id", "00000000-0000-4000-8000-000000000000")):
        r = bootsecrets(aws_manifest(outdir, aws_imds, aws_server,
                                     [{"path": "s", "ref": f"{name}/s", key: value}]))
        assert r.code == 1, (key, r)
        assert "secret `s`" in r.stderr and "ResourceNotFoundException" in r.stderr, (key, r)
        assert published(outdir) == {}


def test_unchanged_second_run_publishes_nothing_new_and_a_rotation_does(aws_server, aws_imds,
                                                                       outdir, name, bootsecrets):
    sm = aws_server.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString="v1")
    sm.create_secret(Name=f"{name}/b", SecretBinary=b"\x00bin-v1")
    m = aws_manifest(outdir, aws_imds, aws_server, [
        {"path": "a", "ref": f"{name}/a", "mode": "0440"},
        {"path": "d/b", "ref": f"{name}/b"},
    ])
    r = bootsecrets(m)
    assert r.code == 0, r
    first = os.readlink(outdir / "..data")
    assert status(outdir)["run"]["outcome"] == "published"

    r = bootsecrets(m)
    assert r.code == 0 and "unchanged" in r.stderr, r
    assert os.readlink(outdir / "..data") == first
    st = status(outdir)
    assert st["run"]["outcome"] == "unchanged" and st["run"]["changed"] == []

    sm.put_secret_value(SecretId=f"{name}/a", SecretString="v2")
    r = bootsecrets(m)
    assert r.code == 0, r
    assert os.readlink(outdir / "..data") != first
    assert (outdir / "a").read_bytes() == b"v2" and (outdir / "d" / "b").read_bytes() == b"\x00bin-v1"
    assert stat.S_IMODE((outdir / "a").stat().st_mode) == 0o440
    assert status(outdir)["run"]["changed"] == ["a"]


def test_throttling_is_retried_then_read(aws_server, aws_imds, fault_proxy, outdir, name,
                                         bootsecrets):
    aws_server.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="after-throttle")
    p = fault_proxy(aws_server.url)
    rule = p.inject(aws_error(400, *THROTTLING), headers=GET_SECRET_VALUE, times=2)
    r = bootsecrets(aws_manifest(outdir, aws_imds, At(p.url), [{"path": "a", "ref": f"{name}/a"}],
                                 settings="deadline_seconds = 30"))
    assert r.code == 0, r
    assert (outdir / "a").read_bytes() == b"after-throttle"
    assert rule.applied == 2
    served = [e for e in p.log if e["target"] == GET_SECRET_VALUE["X-Amz-Target"]]
    assert [e["action"] for e in served] == ["respond", "respond", "forward"], served
    assert served[-1]["status"] == 200
    assert "throttled (ThrottlingException, HTTP 400)" in r.stderr, r


@pytest.mark.parametrize("answer", [
    pytest.param(aws_error(500, "InternalServiceError", "boom"), id="500-InternalServiceError"),
    pytest.param(Respond(503, "<html>Service Unavailable</html>", [("Content-Type", "text/html")]),
                 id="503-html"),
])
def test_5xx_is_retried_then_read(aws_server, aws_imds, fault_proxy, outdir, name, bootsecrets,
                                  answer):
    aws_server.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="after-5xx")
    p = fault_proxy(aws_server.url)
    rule = p.inject(answer, headers=GET_SECRET_VALUE, times=2)
    r = bootsecrets(aws_manifest(outdir, aws_imds, At(p.url), [{"path": "a", "ref": f"{name}/a"}],
                                 settings="deadline_seconds = 30"))
    assert r.code == 0, r
    assert (outdir / "a").read_bytes() == b"after-5xx"
    assert rule.applied == 2
    assert f"HTTP {answer.status}" in r.stderr and "secret `a`" in r.stderr, r
    assert "boom" not in r.output


def test_5xx_until_the_deadline_exits_3_and_publishes_nothing(aws_server, aws_imds, fault_proxy,
                                                              outdir, name, bootsecrets):
    aws_server.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="never")
    p = fault_proxy(aws_server.url)
    p.inject(aws_error(500, "InternalServiceError", "boom"), headers=GET_SECRET_VALUE, times=None)
    r = bootsecrets(aws_manifest(outdir, aws_imds, At(p.url), [{"path": "a", "ref": f"{name}/a"}],
                                 settings="deadline_seconds = 3"))
    assert r.code == 3, r
    assert "service error (InternalServiceError, HTTP 500)" in r.stderr, r
    assert r.elapsed < 3 + 2, r
    assert published(outdir) == {}


# -- LocalStack itself

def _listening(pid: int) -> list[tuple[str, str]]:
    """(protocol, local address:port) of every listening or bound socket of process `pid`."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/{pid}/net/{proto}") as f:
            next(f)
            for line in f:
                cols = line.split()
                local, state, inode = cols[1], cols[3], cols[9]
                if inode not in inodes or (proto.startswith("tcp") and state != "0A"):
                    continue  # not this process's, or a TCP connection rather than a listener
                addr, port = local.split(":")
                if len(addr) == 8:
                    ip = ".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0))
                else:
                    ip = "::" if int(addr, 16) == 0 else addr
                found.append((proto, f"{ip}:{int(port, 16)}"))
    return found


def test_localstack_listens_on_loopback_only_and_writes_under_its_own_directory(localstack):
    socks = _listening(localstack.proc.pid)
    assert ("tcp", f"127.0.0.1:{localstack.port}") in socks, socks
    assert all(addr.startswith("127.") for _, addr in socks), socks  # no 0.0.0.0, no DNS on :53
    env = localstack.env()
    assert env["FILESYSTEM_ROOT"].startswith(str(localstack.home))
    assert env["OVERRIDE_IN_DOCKER"] == "0"
    assert any(os.scandir(env["FILESYSTEM_ROOT"])), "it writes its state where it was told"


def test_localstack_checks_no_signature_so_those_tests_stay_on_moto(localstack, moto,
                                                                    imds_factory, outdir, name,
                                                                    bootsecrets):
    """The same corrupted secret key that moto refuses (test_aws.py) passes at LocalStack."""
    from support.imds import ImdsDouble

    localstack.client("secretsmanager").create_secret(Name=f"{name}/sig", SecretString="unsigned")
    imds = ImdsDouble(localstack, corrupt_secret_key=True).start()
    try:
        r = bootsecrets(aws_manifest(outdir, imds, localstack, [{"path": "sig", "ref": f"{name}/sig"}]))
    finally:
        imds.stop()
    assert r.code == 0, r
    assert (outdir / "sig").read_bytes() == b"unsigned"
    bad = imds_factory(corrupt_secret_key=True)  # the same knob against moto: refused
    moto.client("secretsmanager").create_secret(Name=f"{name}/sig", SecretString="x")
    r = bootsecrets(aws_manifest(outdir, bad, moto, [{"path": "sig", "ref": f"{name}/sig"}]))
    assert r.code == 1 and "SignatureDoesNotMatch" in r.stderr, r


def test_readme_recipe_for_a_localstack_you_already_run(localstack, outdir, name, bootsecrets,
                                                       tmp_path):
    """The README's way: the IMDSv2 double's command line minting from the LocalStack, and the
    endpoints given by AWS_ENDPOINT_URL and AWS_EC2_METADATA_SERVICE_ENDPOINT, not the manifest."""
    import subprocess
    import sys

    from conftest import ROOT
    from support.net import free_port, wait_http

    localstack.client("secretsmanager").create_secret(Name=f"{name}/db", SecretString="by-env")
    port = free_port()
    log = open(tmp_path / "imds.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "support.imds", "--sts", localstack.url,
                             "--port", str(port)], cwd=ROOT / "tests", stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/latest/meta-data/", timeout=30)
        r = bootsecrets(f"""
[settings]
output_root = "{outdir}"

[backend.aws]
type = "aws"

[[secret]]
path = "db"
ref = "{name}/db"
""", env={"AWS_ENDPOINT_URL": localstack.url, "AWS_REGION": "us-east-1",
          "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{port}"})
    finally:
        proc.terminate()
        proc.wait(10)
    assert r.code == 0, (r, (tmp_path / "imds.log").read_text())
    assert (outdir / "db").read_bytes() == b"by-env"
    assert status(outdir)["run"]["outcome"] == "published"
    assert "account 000000000000" in (tmp_path / "imds.log").read_text()
