"""Local adversaries: a manifest, a file it names, or a directory on the way that someone other
than root controls is refused (sshd's StrictModes), unless --allow-insecure-permissions says
this is a development machine; an output root someone else prepared is refused."""

import os
import subprocess

from conftest import BIN, aws_manifest, node_argv, published

NOBODY = 65534


def run(manifest_path, *args, command="check"):
    return subprocess.run(node_argv([str(BIN), command, "--manifest", str(manifest_path), *args]),
                          capture_output=True, text=True,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})


def test_manifest_writable_by_others_or_not_owned_by_root_is_refused(moto, imds, outdir, name,
                                                                     tmp_path):
    m = tmp_path / "manifest.toml"
    m.write_text(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}]))
    m.chmod(0o644)
    assert run(m).returncode == 0
    m.chmod(0o664)
    r = run(m)
    assert r.returncode == 2 and "writable by group or others (mode 0664)" in r.stderr, r
    r = run(m, "--allow-insecure-permissions")
    assert r.returncode == 0 and "allowed by --allow-insecure-permissions" in r.stderr, r
    m.chmod(0o644)
    os.chown(m, NOBODY, NOBODY)
    r = run(m)
    assert r.returncode == 2 and f"owned by uid {NOBODY}, not by root" in r.stderr, r
    # `run` refuses it the same way, before touching anything.
    r = run(m, command="run")
    assert r.returncode == 2 and not outdir.exists(), r


def test_a_directory_on_the_way_that_others_control_is_refused(moto, imds, outdir, name,
                                                                tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # world-writable, not sticky: anyone could swap the manifest
    m = shared / "manifest.toml"
    m.write_text(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}]))
    r = run(m)
    assert r.returncode == 2 and f"directory {shared} is writable" in r.stderr, r
    shared.chmod(0o1777)  # sticky, like /tmp: entries of others cannot be renamed or removed
    assert run(m).returncode == 0
    shared.chmod(0o755)
    os.chown(shared, NOBODY, NOBODY)
    r = run(m)
    assert r.returncode == 2 and f"directory {shared} is owned by uid {NOBODY}" in r.stderr, r


def test_credential_files_follow_the_same_rules(outdir, credfile, bootsecrets):
    tok = credfile("token", "s.token")
    os.chown(tok, NOBODY, NOBODY)
    m = f'''
[settings]
output_root = "{outdir}"
[backend.v]
type = "vault"
address = "http://127.0.0.1:1"
[backend.v.auth]
method = "token"
token_file = "{tok}"
[[secret]]
path = "a"
ref = "secret/a"
'''
    r = bootsecrets(m, command="check")
    assert r.code == 2 and f"owned by uid {NOBODY}, not by root" in r.stderr, r


def test_an_output_root_prepared_by_someone_else_is_refused(moto, imds, outdir, name,
                                                            bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="x")
    outdir.mkdir()
    os.chown(outdir, NOBODY, NOBODY)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}]))
    assert r.code == 1 and f"owned by uid {NOBODY}" in r.stderr, r
    assert published(outdir) == {}
    # ...and so is one below a directory someone else owns.
    outdir.rmdir()
    outdir.mkdir(mode=0o755)
    os.chown(outdir, NOBODY, NOBODY)
    below = outdir / "root"
    r = bootsecrets(aws_manifest(below, imds, moto, [{"path": "a", "ref": f"{name}/a"}]))
    assert r.code == 1 and f"its ancestor {outdir} is owned by uid {NOBODY}" in r.stderr, r
    assert not below.exists()
