"""The writer through the built binary: modes and owners, traversal, symlinks, tmpfs, cleanup."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, aws_manifest

NOBODY = 65534  # `nobody` and `nogroup` on Debian


def names(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


@pytest.mark.skipif(os.geteuid() != 0, reason="setting owners needs root")
def test_modes_and_owners_by_name_and_id(moto, imds, outdir, name, bootsecrets):
    sm = moto.client("secretsmanager")
    for k in ("a", "b", "c"):
        sm.create_secret(Name=f"{name}/{k}", SecretString=k * 3)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [
        {"path": "by-name", "ref": f"{name}/a", "owner": "nobody", "group": "nogroup", "mode": "0440"},
        {"path": "by-id/x", "ref": f"{name}/b", "owner": str(NOBODY), "group": "0", "mode": "0600"},
        {"path": "default", "ref": f"{name}/c"},
    ], settings='root_group = "nogroup"\ndefault_mode = "0640"'))
    assert r.code == 0, r
    st = (outdir / "by-name").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o440, NOBODY, NOBODY)
    st = (outdir / "by-id" / "x").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, NOBODY, 0)
    st = (outdir / "default").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, 0)
    for d in (outdir, outdir / "by-id"):
        st = d.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 0, NOBODY)
    # As the owner `nobody` (group nogroup), the group-readable file can be read through the 0750 root.
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat",
                          str(outdir / "by-name")], capture_output=True)
    assert out.stdout == b"aaa", out


@pytest.mark.parametrize("bad", ["/etc/cron.d/x", "../escape", "a/../../escape", "a//b", "a/", "."])
def test_traversal_is_rejected_by_check_and_run(moto, imds, outdir, bootsecrets, bad):
    m = aws_manifest(outdir, imds, moto, [{"path": bad, "ref": "x"}])
    for command in ("check", "run"):
        r = bootsecrets(m, command=command)
        assert r.code == 2, r
        assert "path" in r.stderr, r
    assert not outdir.exists()


def test_symlink_planted_under_the_root_is_refused(moto, imds, outdir, name, bootsecrets):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString="aaa")
    sm.create_secret(Name=f"{name}/b", SecretString="bbb")
    victim = outdir.parent / f"{outdir.name}-victim"
    victim.write_text("untouched")
    try:
        outdir.mkdir(mode=0o700)
        (outdir / "b").symlink_to(victim)
        r = bootsecrets(aws_manifest(outdir, imds, moto, [
            {"path": "a", "ref": f"{name}/a"}, {"path": "b", "ref": f"{name}/b"}]))
        assert r.code == 1, r
        assert "is a symbolic link" in r.stderr and "nothing was published" in r.stderr, r
        assert victim.read_text() == "untouched"
        assert names(outdir) == ["b"]  # the staged `a` and its temp file are gone
    finally:
        victim.unlink()


def test_symlinked_directory_under_the_root_is_refused(moto, imds, outdir, name, bootsecrets, tmp_path):
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="aaa")
    outdir.mkdir(mode=0o700)
    (outdir / "sub").symlink_to(tmp_path)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "sub/a", "ref": f"{name}/a"}]))
    assert r.code == 1, r
    assert "is a symbolic link" in r.stderr, r
    assert list(tmp_path.iterdir()) == [tmp_path / "manifest.toml"]


def test_symlinked_output_root_is_refused(moto, imds, outdir, name, bootsecrets, tmp_path):
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="aaa")
    outdir.symlink_to("/dev/shm")
    try:
        r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}]))
        assert r.code == 1, r
        assert "is a symbolic link" in r.stderr, r
        assert not Path("/dev/shm/a").exists()
    finally:
        outdir.unlink()


def test_non_tmpfs_root_is_refused_unless_allowed(moto, imds, name, bootsecrets):
    disk = ROOT / "target" / f"non-tmpfs-{name}"
    fstype = subprocess.run(["stat", "-f", "-c", "%T", str(ROOT / "target")], capture_output=True, text=True).stdout.strip()
    if fstype in ("tmpfs", "ramfs"):
        pytest.skip("the build directory is itself on tmpfs")
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="aaa")
    m = aws_manifest(disk, imds, moto, [{"path": "a", "ref": f"{name}/a"}])
    try:
        r = bootsecrets(m)
        assert r.code == 1, r
        assert "is not on tmpfs or ramfs" in r.stderr, r
        assert not (disk / "a").exists()
        r = bootsecrets(m, "--allow-non-tmpfs")
        assert r.code == 0, r
        assert (disk / "a").read_bytes() == b"aaa"
        assert "allowed by --allow-non-tmpfs" in r.stderr
    finally:
        subprocess.run(["rm", "-rf", str(disk)])


def test_failure_leaves_no_temp_file_and_keeps_the_previous_file(moto, imds, outdir, name, bootsecrets):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString="first")
    m = aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}, {"path": "d/b", "ref": f"{name}/a"}])
    assert bootsecrets(m).code == 0
    sm.put_secret_value(SecretId=f"{name}/a", SecretString="second")
    # Make the second output unwritable: its target is now a directory.
    (outdir / "d" / "b").unlink()
    (outdir / "d" / "b").mkdir()
    r = bootsecrets(m)
    assert r.code == 1, r
    assert "is a directory" in r.stderr, r
    assert (outdir / "a").read_bytes() == b"first"
    assert not [n for n in names(outdir) if ".bootsecrets-tmp." in n], names(outdir)


def test_stale_temp_files_from_a_killed_run_are_removed(moto, imds, outdir, name, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="aaa")
    outdir.mkdir(mode=0o700)
    (outdir / ".bootsecrets-tmp.123.00000000deadbeef").write_text("half")
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}]))
    assert r.code == 0, r
    assert names(outdir) == ["a"]
