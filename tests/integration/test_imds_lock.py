"""A node whose metadata service systemd-imdsd has locked (systemd 261+, booted with
`systemd.imds.network=locked`; the default is `unlocked`): a prohibit route to 169.254.169.254, so only systemd-imdsd reaches it, and others
ask it over Varlink (`io.systemd.InstanceMetadata.Get`).

Each test runs the binary, under the unit's restrictions, in a network namespace that has that
route and no metadata address (support.netns), and reaches the backend's double on the host
through a relay. systemd-imdsd is a double that follows systemd's interface definition
(support.imdsd) and, like the daemon, reaches the metadata service itself (the IMDS and GCE
metadata doubles on the host); it is mounted at /run/systemd/io.systemd.InstanceMetadata in the
binary's mount namespace. The manifests name no metadata endpoint: the defaults, as on a node."""

import errno
import json
import shutil
import socket
import tempfile
import urllib.parse
from pathlib import Path

import pytest

from conftest import published, status
from support.imdsd import ImdsdDouble
from support.netns import METADATA_IP, NetNs
from support.proxy import LateProxy


@pytest.fixture
def locked():
    ns = NetNs(addresses=()).create().lock_metadata()
    relays = []

    def relay(url: str) -> str:
        """`url` (a double on the host's loopback) as the namespace reaches it."""
        u = urllib.parse.urlsplit(url)
        p = LateProxy(u.port, 0, netns=ns).start()
        relays.append(p)
        return f"{u.scheme}://{u.hostname}:{p.port}"

    ns.relay = relay
    yield ns
    for p in relays:
        p.stop()
    ns.close()


@pytest.fixture
def run_systemd():
    """What the test mounts over /run/systemd: systemd-imdsd's socket, when a test starts one."""
    d = Path(tempfile.mkdtemp(prefix="bs-imdsd-", dir="/dev/shm"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def aws_manifest(outdir, endpoint, secrets):
    body = f"""
[settings]
output_root = "{outdir}"
startup_jitter_ms = 0
deadline_seconds = 20

[backend.aws]
type = "aws"
region = "us-east-1"
endpoint = "{endpoint}"
"""
    for s in secrets:
        body += "\n[[secret]]\n" + "".join(f'{k} = "{v}"\n' for k, v in s.items())
    return body


def test_the_lock_is_a_prohibit_route_answering_eacces(locked):
    """What the binary meets in these tests is what a locked node answers."""
    with locked.inside():
        s = socket.socket()
        with pytest.raises(OSError) as e:
            s.connect((METADATA_IP, 80))
        s.close()
    assert e.value.errno == errno.EACCES


def test_aws_identity_goes_through_systemd_imdsd(moto, imds, outdir, name, locked, run_systemd,
                                                 bootsecrets, binary):
    moto.client("secretsmanager").create_secret(Name=f"{name}/t", SecretString="token-1")
    daemon = ImdsdDouble(run_systemd, imds.url, vendor="amazon-ec2").start()
    try:
        r = bootsecrets(aws_manifest(outdir, locked.relay(moto.url), [
            {"path": "kubelet/token", "ref": f"{name}/t"}]),
            netns=locked, binds=[(run_systemd, "/run/systemd")], binary=binary)
    finally:
        daemon.stop()
    assert r.code == 0, r
    assert published(outdir)["kubelet/token"].read_text() == "token-1"
    assert "the route is locked (systemd-imdsd)" in r.stderr, r
    # The role, its credentials, and the identity document (the account, for messages).
    assert sorted(set(daemon.keys())) == ["/dynamic/instance-identity/document",
                                          "/meta-data/iam/security-credentials/",
                                          "/meta-data/iam/security-credentials/node"], daemon.calls
    for c in daemon.calls:
        assert c["parameters"].get("cache") is False, c  # credentials are asked for fresh
    assert status(outdir)["run"]["outcome"] == "published"


def test_a_locked_route_without_systemd_imdsd_names_the_lock(moto, imds, outdir, name, locked,
                                                            run_systemd, bootsecrets, binary):
    """No daemon to ask: a permanent failure at once (not a wait until the deadline), naming the
    lock, the kernel parameter and what to do."""
    moto.client("secretsmanager").create_secret(Name=f"{name}/t", SecretString="token-1")
    r = bootsecrets(aws_manifest(outdir, locked.relay(moto.url), [
        {"path": "kubelet/token", "ref": f"{name}/t"}]),
        netns=locked, binds=[(run_systemd, "/run/systemd")], binary=binary)
    assert r.code == 1, r
    for words in ("prohibit route", "systemd-imdsd", "systemd.imds.network=locked",
                  "systemd-imdsd.socket", "systemd.imds.network=unlocked"):
        assert words in r.stderr, (words, r)
    assert r.elapsed < 15, r
    assert published(outdir) == {}


def test_gcp_identity_goes_through_systemd_imdsd(gce_metadata, secret_manager, outdir, locked,
                                                 run_systemd, bootsecrets, tmp_path, binary):
    """The default metadata endpoint, metadata.google.internal, resolves to the metadata address
    as on GCE (here through the run's /etc/hosts)."""
    secret_manager.add_version("db", b"s3cret")
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{METADATA_IP} metadata.google.internal\n")
    daemon = ImdsdDouble(run_systemd, gce_metadata.url, vendor="gcp").start()
    sm = locked.relay(secret_manager.url)
    try:
        r = bootsecrets(f"""
[settings]
output_root = "{outdir}"
startup_jitter_ms = 0
deadline_seconds = 20

[backend.gcp]
type = "gcp"
endpoint = "{sm}"
project = "bootsecrets-test"

[[secret]]
path = "db"
ref = "db"
""", netns=locked, binds=[(run_systemd, "/run/systemd"), (hosts, "/etc/hosts")], binary=binary)
    finally:
        daemon.stop()
    assert r.code == 0, r
    assert published(outdir)["db"].read_bytes() == b"s3cret"
    assert "/instance/service-accounts/default/token" in daemon.keys(), daemon.calls
    assert r.stderr.count("the route is locked (systemd-imdsd); asking systemd-imdsd") == 1, r


def doctor_route(bootsecrets, manifest, locked, run_systemd, tmp_path):
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("ignition.platform.id=aws systemd.imds.network=locked\n")
    r = bootsecrets(manifest, "--json", command="doctor", netns=locked,
                    binds=[(run_systemd, "/run/systemd"), (cmdline, "/proc/cmdline")])
    report = json.loads(r.stdout)
    [f] = [c for c in report["checks"] if c["check"] == "metadata route"]
    return r, f


def test_doctor_reports_the_lock_the_daemon_and_its_vendor(moto, imds, outdir, name, locked,
                                                           run_systemd, bootsecrets, tmp_path, binary):
    moto.client("secretsmanager").create_secret(Name=f"{name}/t", SecretString="token-1")
    m = aws_manifest(outdir, locked.relay(moto.url), [{"path": "t", "ref": f"{name}/t"}])
    r, f = doctor_route(bootsecrets, m, locked, run_systemd, tmp_path)
    assert f["status"] == "fail", f
    assert "locked by a prohibit route (systemd.imds.network=locked on the kernel command " \
        "line)" in f["detail"] and "systemd-imdsd cannot be asked" in f["detail"], f
    assert "systemd-imdsd.socket" in f["hint"], f
    assert r.code != 0, r
    ident = [c for c in json.loads(r.stdout)["checks"] if c["check"] == "identity `aws`"][0]
    assert ident["status"] == "fail" and "prohibit route" in ident["detail"], ident
    assert "systemd-imdsd.socket" in ident["hint"] and "instance profile" not in ident["hint"], ident

    daemon = ImdsdDouble(run_systemd, imds.url, vendor="amazon-ec2").start()
    try:
        r, f = doctor_route(bootsecrets, m, locked, run_systemd, tmp_path)
    finally:
        daemon.stop()
    assert f["status"] == "ok", f
    assert "systemd-imdsd answers at /run/systemd/io.systemd.InstanceMetadata (vendor " \
        "amazon-ec2)" in f["detail"], f
    ident = [c for c in json.loads(r.stdout)["checks"] if c["check"] == "identity `aws`"][0]
    assert ident["status"] == "ok" and "instance role `node`" in ident["detail"], ident


def test_azure_identity_on_a_locked_node_names_the_lock(outdir, locked, run_systemd, bootsecrets):
    """Azure's managed-identity token endpoint does not fit systemd-imdsd's data URL, and the
    firewall mark would need CAP_NET_ADMIN: the run fails at once and says what to do."""
    r = bootsecrets(f"""
[settings]
output_root = "{outdir}"
startup_jitter_ms = 0
deadline_seconds = 20

[backend.kv]
type = "azure"
vault_url = "https://bootsecrets-test.vault.azure.net"

[[secret]]
path = "db"
ref = "db-password"
""", netns=locked, binds=[(run_systemd, "/run/systemd")])
    assert r.code == 1, r
    for words in ("prohibit route", "systemd.imds.network=locked", "systemd.imds.network=unlocked"):
        assert words in r.stderr, (words, r)
    assert r.elapsed < 15, r
