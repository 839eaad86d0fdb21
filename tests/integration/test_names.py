"""Names, owners and the run path as users run them: the debug build and the static release
binary, each on Flatcar's and on Fedora CoreOS's user and group conventions (nsswitch.conf and
the name files of each, laid out in the run's private mount namespace by tests/support/nodeos.py),
under the unit's restrictions.

The static binary must never load an NSS module: it resolves names from the sources
nsswitch.conf names itself (src/accounts.rs), and refuses an unknown one with the same message
as the debug build, never a crash."""

import os
import stat
import sys
from pathlib import Path

import pytest

from conftest import BIN, ROOT, STATIC_BIN, aws_manifest

sys.path.insert(0, str(ROOT / "tests"))
from support.nodeos import NodeOs  # noqa: E402

REQUIRE_STATIC = os.environ.get("BOOTSECRETS_REQUIRE_STATIC") == "1"


def binaries():
    return ["debug", "static"]


@pytest.fixture(params=[(b, o) for b in binaries() for o in ("flatcar", "fcos")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def node(request, tmp_path):
    which, kind = request.param
    if which == "static":
        if STATIC_BIN is None:
            if REQUIRE_STATIC:
                pytest.fail("BOOTSECRETS_STATIC_BIN is not set: the static release binary must "
                            "be tested (tests/run builds it first)")
            pytest.skip("BOOTSECRETS_STATIC_BIN is not set (tests/run --quick): the static "
                        "release binary is tested by the full tests/run")
        binary = STATIC_BIN
    else:
        binary = BIN
    n = NodeOs(kind, tmp_path / f"os-{kind}").build()
    n.binary = binary
    n.which = which
    yield n
    n.close()


def on(node, bootsecrets, manifest, *args, command="run"):
    return bootsecrets(manifest, *args, command=command, binary=node.binary, **node.sandbox())


def names_manifest(outdir, imds, moto, name, node):
    """A secret per layer a name can come from, each owned by that layer's user and group."""
    secrets = []
    layers = sorted(set(node.users) | set(node.groups))
    for layer in layers:
        s = {"path": f"by-{layer}", "ref": f"{name}/s", "mode": "0440"}
        if layer in node.users:
            s["owner"] = node.users[layer][0]
        if layer in node.groups:
            s["group"] = node.groups[layer][0]
        secrets.append(s)
    return aws_manifest(outdir, imds, moto, secrets,
                        settings=f'root_group = "{node.groups["etc"][0]}"'), layers


def test_names_from_every_layer_resolve_and_own_the_files(moto, imds, outdir, name, node,
                                                          bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/s", SecretString="value")
    m, layers = names_manifest(outdir, imds, moto, name, node)
    r = on(node, bootsecrets, m, command="check")
    assert r.code == 0, r
    r = on(node, bootsecrets, m)
    assert r.code == 0, r
    for layer in layers:
        st = (outdir / f"by-{layer}").stat()
        uid = node.users.get(layer, ("root", 0))[1]
        gid = node.groups.get(layer, ("root", 0))[1]
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o440, uid, gid), layer
        assert (outdir / f"by-{layer}").read_bytes() == b"value"
    st = outdir.stat()
    assert (st.st_uid, st.st_gid) == (0, node.groups["etc"][1])
    if node.userdb:
        asked = {(c["method"].rsplit(".", 1)[1], c["parameters"].get("userName")
                  or c["parameters"].get("groupName")) for c in node.userdb.calls}
        assert ("GetUserRecord", "kube-node") in asked, node.userdb.calls


def test_an_unknown_name_is_refused_in_words_not_a_crash(moto, imds, outdir, name, node,
                                                          bootsecrets):
    m = aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a", "group": "kube-x"},
                                          {"path": "b", "ref": f"{name}/b", "owner": "kubelet-x"}])
    for command in ("check", "run", "doctor"):
        r = on(node, bootsecrets, m, command=command)
        assert r.code in (1, 2), r  # never 139 (SIGSEGV) or another signal
        assert "group `kube-x` does not exist" in r.output, r
        assert "user `kubelet-x` does not exist" in r.output, r
    looked = "/usr/share/baselayout/group" if node.kind == "flatcar" else "/usr/lib/group"
    assert looked in r.output, r
    assert not outdir.exists() or not any(outdir.iterdir())


def test_the_aws_example_manifest_checks_on_a_node_with_its_group(node, bootsecrets, tmp_path):
    """examples/terraform/aws: `kube` comes from the Butane config on the node."""
    text = (ROOT / "examples/terraform/aws/manifest.toml").read_text()
    text = text.replace('[backend.aws]\ntype = "aws"',
                        '[backend.aws]\ntype = "aws"\nregion = "eu-west-1"', 1)
    text = text.replace('root_group = "kube"', f'root_group = "{node.groups["etc"][0]}"', 1)
    ok = text.replace('group = "kube"', f'group = "{node.groups["etc"][0]}"')
    r = on(node, bootsecrets, ok, command="check")
    assert r.code == 0, r
    missing = text.replace(f'root_group = "{node.groups["etc"][0]}"', 'root_group = "kube-x"')
    r = on(node, bootsecrets, missing, command="check")
    assert r.code == 2 and "group `kube-x` does not exist" in r.stderr, r


def test_doctor_runs_through_on_the_node(moto, imds, outdir, name, node, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/s", SecretString="value")
    m, _ = names_manifest(outdir, imds, moto, name, node)
    r = on(node, bootsecrets, m, command="doctor")
    assert r.code in (0, 1), r
    assert "ok    manifest" in r.stdout and "ok    identity `aws`" in r.stdout, r
