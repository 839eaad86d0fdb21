"""`bootsecrets check`: offline validation and the printed plan."""

import pytest

from conftest import aws_manifest


class Unreachable:
    url = "http://127.0.0.1:9"  # discard port: nothing answers; check must not try


def test_check_prints_the_plan_and_uses_no_network(moto, imds, outdir, bootsecrets):
    """Both endpoints are live listeners that record contact: check must make none."""
    from support.proxy import LateProxy

    backend = LateProxy(moto.port, down_for=0).start()
    try:
        m = aws_manifest(outdir, imds, moto, [
            {"path": "kubelet/token", "ref": "prod/token", "mode": "0440", "group": "0"},
            {"path": "db", "ref": "prod/db", "json_key": "password", "version_stage": "AWSPREVIOUS"},
        ], settings='root_group = "0"').replace(moto.url, f"http://127.0.0.1:{backend.port}")
        r = bootsecrets(m, command="check")
    finally:
        backend.stop()
    assert r.code == 0, r
    assert imds.requests == [] and backend.first_contact is None, "check touched the network"
    assert f"output root  {outdir} (directory 0750" in r.stdout, r
    assert f"0440 root:0  {outdir}/kubelet/token  <- aws prod/token" in r.stdout, r
    assert '[version_stage AWSPREVIOUS] (json_key "password")' in r.stdout, r
    assert "is valid" in r.stdout
    assert not outdir.exists()


def test_check_reports_every_problem_with_exit_2(outdir, bootsecrets):
    m = aws_manifest(outdir, Unreachable, Unreachable, [
        {"path": "a", "ref": "x", "mode": "0644"},
        {"path": "b", "ref": "y", "owner": "no-such-user-here"},
        {"path": "b", "ref": "z"},
        {"path": "c", "ref": "", "encoding": "rot13"},
    ], settings="concurrency = 0")
    r = bootsecrets(m, command="check")
    assert r.code == 2, r
    for needle in ("0644", "no-such-user-here", "concurrency", "`ref` must name a secret", "rot13"):
        assert needle in r.stderr, (needle, r)


def test_unknown_keys_are_errors(outdir, bootsecrets):
    m = aws_manifest(outdir, Unreachable, Unreachable, [{"path": "a", "ref": "x", "jsonkey": "k"}])
    r = bootsecrets(m, command="check")
    assert r.code == 2, r
    assert "unknown field `jsonkey`" in r.stderr, r
    r = bootsecrets(m.replace('type = "aws"', 'type = "awss"'), command="check")
    assert r.code == 2 and "unknown variant `awss`" in r.stderr, r


def test_invalid_manifest_fails_run_with_exit_2(outdir, bootsecrets):
    r = bootsecrets("[settings\n", command="run")
    assert r.code == 2, r
    assert "not valid" in r.stderr


def test_check_refuses_what_the_node_cannot_keep_safe(outdir, bootsecrets):
    """Group-writable modes (one consumer could change what another reads), (uid_t)-1 (chown's
    "leave unchanged"), a non-root root_owner (the unit's CAP_CHOWN cannot enter its directory)."""
    m = aws_manifest(outdir, Unreachable, Unreachable, [
        {"path": "a", "ref": "x", "mode": "0660"},
        {"path": "b", "ref": "y", "owner": "4294967295"},
        {"path": "c", "ref": "z", "group": "4294967295"},
    ], settings='root_owner = "nobody"')
    r = bootsecrets(m, command="check")
    assert r.code == 2, r
    for needle in ("mode `0660` lets the group write", "user `4294967295` has id 4294967295",
                   "group `4294967295` has id 4294967295", "settings.root_owner `nobody`"):
        assert needle in r.stderr, (needle, r)


@pytest.mark.parametrize("root", ["/dev/shm", "/run", "/tmp", "/run/", "/var/tmp"])
def test_a_shared_system_directory_is_not_an_output_root(root, bootsecrets):
    m = aws_manifest(root, Unreachable, Unreachable, [{"path": "a", "ref": "x"}])
    r = bootsecrets(m, command="check")
    assert r.code == 2 and "is a directory the system shares" in r.stderr, r


def test_check_warns_when_a_run_cannot_fit_the_units_timeout(outdir, bootsecrets):
    m = aws_manifest(outdir, Unreachable, Unreachable, [
        {"path": "a", "ref": "x", "on_change": ["/bin/true"]}], settings="deadline_seconds = 140")
    r = bootsecrets(m, command="check")
    assert r.code == 0, r
    assert ("a run may take up to 190 s (deadline_seconds 140 + token revocation, on_change "
            "commands and slack), more than bootsecrets.service's TimeoutStartSec=180") in r.stdout, r
    assert "bootsecrets-refresh.service" not in r.stdout, r
    fits = aws_manifest(outdir, Unreachable, Unreachable, [
        {"path": "a", "ref": "x", "on_change": ["/bin/true"]}])
    r = bootsecrets(fits, command="check")
    assert r.code == 0 and "TimeoutStartSec" not in r.stdout, r


def test_plain_http_is_judged_by_the_real_host(outdir, bootsecrets):
    """`http://host#@localhost` reaches `host`: plain http there needs allow_http."""
    for url in ("http://secrets.example.com#@localhost", "http://localhost@secrets.example.com"):
        m = aws_manifest(outdir, Unreachable, Unreachable, [{"path": "a", "ref": "x"}])
        m = m.replace('endpoint = "http://127.0.0.1:9"', f'endpoint = "{url}"', 1)
        assert url in m
        r = bootsecrets(m, command="check")
        assert r.code == 2 and "allow_http" in r.stderr, (url, r)


def test_check_offline_validates_what_does_not_depend_on_this_machine(outdir, bootsecrets,
                                                                      tmp_path):
    """For CI building user data: the users, groups and files belong to the node."""
    m = f'''
[settings]
output_root = "{outdir}"
root_group = "kubelet-readers-on-the-node"

[backend.v]
type = "vault"
ca_file = "/etc/pki/vault-ca.pem"

[backend.v.auth]
method = "approle"
role_id = "node"
secret_id_file = "/var/lib/bootsecrets/secret-id"

[[secret]]
path = "a"
ref = "secret/a"
owner = "kubelet-on-the-node"
on_change = ["/usr/bin/not-on-this-machine", "restart"]
'''
    r = bootsecrets(m, command="check")
    assert r.code == 2, r
    for needle in ("kubelet-readers-on-the-node", "kubelet-on-the-node", "/etc/pki/vault-ca.pem",
                   "/var/lib/bootsecrets/secret-id", "/usr/bin/not-on-this-machine",
                   "`address` is required"):
        assert needle in r.stderr, (needle, r)
    r = bootsecrets(m, "--offline", command="check")
    assert r.code == 0, r
    assert "is valid (offline: users, groups and the files it names are checked on the node)" \
        in r.stdout, r
    assert "0400 kubelet-on-the-node:root" in r.stdout, r
    # What does not depend on the machine is still checked.
    bad = m.replace('path = "a"', 'path = "../a"').replace('root_group', 'root_grup')
    r = bootsecrets(bad, "--offline", command="check")
    assert r.code == 2 and "root_grup" in r.stderr, r
    r = bootsecrets(m.replace('path = "a"', 'path = "../a"'), "--offline", command="check")
    assert r.code == 2 and "path" in r.stderr, r


def test_a_region_must_be_a_region_name(outdir, bootsecrets):
    for region, needle in [("eu-west-1a", "is an availability zone, not a region: the region is "
                                          "`eu-west-1`"),
                           ("Frankfurt", "is not an AWS region name")]:
        m = aws_manifest(outdir, Unreachable, Unreachable, [{"path": "a", "ref": "x"}],
                         region=region)
        r = bootsecrets(m, command="check")
        assert r.code == 2 and f"region `{region}` {needle}" in r.stderr, r
