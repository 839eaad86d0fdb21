"""The writer through the built binary: modes and owners, traversal, symlinks, tmpfs, cleanup."""

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, aws_manifest, status

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


def test_entries_planted_under_the_root_are_never_followed(moto, imds, outdir, name, bootsecrets,
                                                          tmp_path):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString="aaa")
    sm.create_secret(Name=f"{name}/b", SecretString="bbb")
    victim = outdir.parent / f"{outdir.name}-victim"
    victim.write_text("untouched")
    try:
        outdir.mkdir(mode=0o700)
        # Symlinks under output names (a file, a directory) are replaced by bootsecrets' own links.
        (outdir / "b").symlink_to(victim)
        (outdir / "sub").symlink_to(tmp_path)
        m = aws_manifest(outdir, imds, moto, [
            {"path": "a", "ref": f"{name}/a"}, {"path": "b", "ref": f"{name}/b"},
            {"path": "sub/c", "ref": f"{name}/a"}])
        r = bootsecrets(m)
        assert r.code == 0, r
        assert victim.read_text() == "untouched"
        assert list(tmp_path.iterdir()) == [tmp_path / "manifest.toml"]
        assert (outdir / "b").read_text() == "bbb" and (outdir / "sub" / "c").read_text() == "aaa"
        assert os.readlink(outdir / "b") == "..data/b"
        # A hard link (or any non-link entry) under an output name is refused: nothing changes.
        published = os.readlink(outdir / "..data")
        (outdir / "b").unlink()
        os.link(victim, outdir / "b")
        sm.put_secret_value(SecretId=f"{name}/a", SecretString="rotated")
        r = bootsecrets(m)
        assert r.code == 1, r
        assert "exists and bootsecrets did not write it" in r.stderr and "nothing was published" in r.stderr
        assert victim.read_text() == "untouched"
        assert os.readlink(outdir / "..data") == published
        assert (outdir / "a").read_text() == "aaa"
    finally:
        victim.unlink()


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
    # A directory on disk the sandboxed binary can see: the build directory, unless the checkout
    # is under /tmp or /var/tmp (hidden by the unit's private /tmp), then /var/lib.
    def usable(d: Path) -> bool:
        if any(str(d.resolve()).startswith(p) for p in ("/tmp/", "/var/tmp/")):
            return False
        fstype = subprocess.run(["stat", "-f", "-c", "%T", str(d)], capture_output=True, text=True).stdout.strip()
        return fstype not in ("tmpfs", "ramfs")

    parent = next((d for d in (ROOT / "target", Path("/var/lib")) if usable(d)), None)
    if parent is None:
        pytest.skip("neither the build directory nor /var/lib is on a disk the unit can see")
    disk = parent / f"bootsecrets-non-tmpfs-{name}"
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="aaa")
    m = aws_manifest(disk, imds, moto, [{"path": "a", "ref": f"{name}/a"}])
    # Under ProtectSystem=strict a root elsewhere exists beforehand and is made writable by a
    # ReadWritePaths= drop-in (what `render` adds for a custom output_root).
    disk.mkdir(mode=0o700)
    try:
        r = bootsecrets(m, rw=[disk])
        assert r.code == 1, r
        assert "is not on tmpfs or ramfs" in r.stderr, r
        assert not (disk / "a").exists()
        r = bootsecrets(m, "--allow-non-tmpfs", rw=[disk])
        assert r.code == 0, r
        assert (disk / "a").read_bytes() == b"aaa"
        assert "allowed by --allow-non-tmpfs" in r.stderr
        # A root that does not exist yet, in a writable directory on the disk: refused before
        # it is made, so the refusal leaves nothing behind.
        scratch = disk / "scratch"
        scratch.mkdir(mode=0o700)
        m2 = aws_manifest(scratch / "root", imds, moto, [{"path": "a", "ref": f"{name}/a"}])
        r = bootsecrets(m2, rw=[scratch])
        assert r.code == 1 and "is not on tmpfs or ramfs" in r.stderr, r
        assert list(scratch.iterdir()) == [], "the refused root was left on the disk"
    finally:
        subprocess.run(["rm", "-rf", str(disk)])


def test_a_failed_run_keeps_the_previous_set_exactly(moto, imds, outdir, name, bootsecrets):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString="first")
    secrets = [{"path": "a", "ref": f"{name}/a"}, {"path": "d/b", "ref": f"{name}/a"}]
    assert bootsecrets(aws_manifest(outdir, imds, moto, secrets)).code == 0
    before = names(outdir)
    published = os.readlink(outdir / "..data")
    sm.put_secret_value(SecretId=f"{name}/a", SecretString="second")
    r = bootsecrets(aws_manifest(outdir, imds, moto, secrets + [
        {"path": "new", "ref": f"{name}/missing"}]))
    assert r.code == 1, r
    assert (outdir / "a").read_bytes() == b"first"
    assert (outdir / "d" / "b").read_bytes() == b"first"
    assert names(outdir) == before and os.readlink(outdir / "..data") == published


def test_rotation_flips_the_set_and_an_unchanged_run_does_not(moto, imds, outdir, name,
                                                               bootsecrets):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString="v1")
    m = aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}])
    assert bootsecrets(m).code == 0
    first = os.readlink(outdir / "..data")
    r = bootsecrets(m)
    assert r.code == 0 and "unchanged" in r.stderr, r
    assert os.readlink(outdir / "..data") == first
    sm.put_secret_value(SecretId=f"{name}/a", SecretString="v2")
    r = bootsecrets(m)
    assert r.code == 0, r
    assert os.readlink(outdir / "..data") != first
    assert (outdir / "a").read_bytes() == b"v2"
    assert sorted(os.listdir(outdir)) == sorted(["..data", "..lock", os.readlink(outdir / "..data"),
                                                 "a", ".status.json"])


def test_leftovers_of_a_killed_run_are_removed(moto, imds, outdir, name, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="aaa")
    outdir.mkdir(mode=0o700)
    (outdir / "..v-00000000deadbeef").mkdir()
    (outdir / "..v-00000000deadbeef" / "a").write_text("half")
    (outdir / "..tmp-00000000deadbeef").symlink_to("..v-00000000deadbeef")
    (outdir / ".bootsecrets-tmp.123.00000000deadbeef").write_text("half")
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}]))
    assert r.code == 0, r
    assert sorted(os.listdir(outdir)) == sorted(["..data", "..lock", os.readlink(outdir / "..data"),
                                                 "a", ".status.json"])


def test_status_file_describes_the_set_and_the_last_run(moto, imds, outdir, name, bootsecrets):
    sm = moto.client("secretsmanager")
    arn = sm.create_secret(Name=f"{name}/a", SecretString="status-canary-1")["ARN"]
    m = aws_manifest(outdir, imds, moto, [{"path": "x/a", "ref": f"{name}/a", "mode": "0440"}])
    r = bootsecrets(m)
    assert r.code == 0, r
    st = status(outdir)
    assert stat.S_IMODE((outdir / ".status.json").stat().st_mode) == 0o600
    assert st["format"] == 2 and st["data"] == os.readlink(outdir / "..data")
    assert st["run"]["outcome"] == "published" and st["run"]["exit_code"] == 0
    assert st["run"]["changed"] == ["x/a"] and st["run"]["error"] is None
    [s] = st["secrets"]
    assert s["path"] == "x/a" and s["backend"] == "aws" and s["backend_type"] == "aws"
    assert s["ref"] == f"{name}/a" and s["mode"] == "0440" and s["size"] == 15
    assert s["sha256"] == hashlib.sha256(b"status-canary-1").hexdigest()
    assert s["version"] and s["fetched_at"].endswith("Z")
    assert st["run"]["started"] <= st["run"]["finished"]

    r = bootsecrets(m)
    assert status(outdir)["run"]["outcome"] == "unchanged"
    assert status(outdir)["run"]["changed"] == []

    sm.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    r = bootsecrets(m)
    assert r.code == 1, r
    st = status(outdir)
    assert st["run"]["outcome"] == "failed" and st["run"]["exit_code"] == 1
    assert "secret `x/a`" in st["run"]["error"]
    # The previous set is still what is published, and the status still describes it.
    assert [s["path"] for s in st["secrets"]] == ["x/a"]
    assert (outdir / "x" / "a").read_bytes() == b"status-canary-1"
    assert "status-canary-1" not in (outdir / ".status.json").read_text()


def test_a_run_waits_for_another_runs_lock(moto, imds, outdir, name, bootsecrets):
    import fcntl
    import threading
    import time
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="after-wait")
    outdir.mkdir(mode=0o700)
    # Another run holds the lock: root's own lock file in the root.
    fd = os.open(outdir / "..lock", os.O_RDONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    threading.Timer(2.0, lambda: os.close(fd)).start()
    start = time.monotonic()
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}]))
    assert r.code == 0, r
    assert time.monotonic() - start >= 1.8, "it must have waited for the lock"
    assert (outdir / "a").read_bytes() == b"after-wait"


def test_a_new_root_group_rewrites_the_set_with_the_new_directory_modes(moto, imds, outdir, name,
                                                                       bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="same")
    secrets = [{"path": "d/a", "ref": f"{name}/a", "mode": "0440"}]
    assert bootsecrets(aws_manifest(outdir, imds, moto, secrets)).code == 0
    first = os.readlink(outdir / "..data")
    assert stat.S_IMODE((outdir / first).stat().st_mode) == 0o700
    r = bootsecrets(aws_manifest(outdir, imds, moto, secrets, settings='root_group = "nogroup"'))
    assert r.code == 0, r
    second = os.readlink(outdir / "..data")
    assert second != first, "same values, but the directories must change: rewritten"
    assert stat.S_IMODE((outdir / second).stat().st_mode) == 0o750
    assert stat.S_IMODE((outdir / second / "d").stat().st_mode) == 0o750


HOLDER = r"""
import fcntl, os, sys, time
root = sys.argv[1]
fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
try:
    os.open(os.path.join(root, "..lock"), os.O_RDONLY)
    print("lock file: opened", flush=True)
except PermissionError:
    print("lock file: denied", flush=True)
except FileNotFoundError:
    print("lock file: absent", flush=True)
print("holding", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a consumer as nobody")
def test_a_root_group_member_cannot_hold_the_lock_of_later_runs(moto, imds, outdir, name,
                                                                 bootsecrets):
    """A consumer in root_group can open the root directory, and lock it: the runs' lock is a
    root-only file in it instead, so a refresh goes on while the consumer holds what it can."""
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString="one")
    m = aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a", "mode": "0440",
                                           "group": "nogroup"}],
                     settings='root_group = "nogroup"\ndeadline_seconds = 6')
    r = bootsecrets(m)
    assert r.code == 0, r
    holder = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         "/usr/bin/python3", "-c", HOLDER, str(outdir)],
        stdout=subprocess.PIPE, text=True)
    try:
        lines = [holder.stdout.readline().strip(), holder.stdout.readline().strip()]
        assert lines[1] == "holding", lines
        sm.put_secret_value(SecretId=f"{name}/a", SecretString="two")
        r = bootsecrets(m)
        assert r.code == 0, r
        assert "locked" not in r.stderr, r
        assert (outdir / "a").read_bytes() == b"two"
        assert lines[0] == "lock file: denied", lines
        st = (outdir / "..lock").lstat()
        assert stat.S_ISREG(st.st_mode) and (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="setting owners needs root")
def test_a_file_its_owner_may_write_is_never_trusted_unchanged(moto, imds, outdir, name,
                                                               bootsecrets):
    """An owner who may write its file can change the content and leave the ctime bootsecrets
    recorded (within the record's timestamp tick, or through a shared mapping): such a file is
    written again on every run, while a file its owner can only read keeps its inode. Its
    value is restored, and it counts as changed only when the value did (no on_change)."""
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString="backend-value")
    m = aws_manifest(outdir, imds, moto, [
        {"path": "rw", "ref": f"{name}/a", "owner": str(NOBODY), "mode": "0600"},
        {"path": "ro", "ref": f"{name}/a", "owner": str(NOBODY), "mode": "0400"},
    ], settings='root_group = "nogroup"')
    assert bootsecrets(m).code == 0
    ino = {p: (outdir / p).stat().st_ino for p in ("rw", "ro")}
    assert ino["rw"]
    # The owner overwrites its file in place (as a write within the tick would leave it).
    subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                    "/usr/bin/python3", "-c",
                    f"import os; fd = os.open('{outdir / 'rw'}', os.O_WRONLY); "
                    "os.write(fd, b'consumer-wrot'); os.close(fd)"], check=True)
    r = bootsecrets(m)
    assert r.code == 0, r
    assert (outdir / "rw").read_bytes() == b"backend-value"
    assert (outdir / "rw").stat().st_ino != ino["rw"], "an owner-writable file was trusted"
    # Untouched and unchanged: still written anew (its record cannot prove it untouched), still
    # not reported as changed.
    before = (outdir / "rw").stat().st_ino
    r = bootsecrets(m)
    assert r.code == 0, r
    assert (outdir / "rw").stat().st_ino != before, "an owner-writable file was trusted"
    assert status(outdir)["run"]["changed"] == [], status(outdir)["run"]
    assert (outdir / "ro").read_bytes() == b"backend-value"
    r = bootsecrets(m, command="check")
    assert r.code == 0 and "lets its owner `65534` write the file" in r.stdout, r
    # Without such a file, an unchanged set is left as it is.
    m = aws_manifest(outdir, imds, moto, [
        {"path": "ro", "ref": f"{name}/a", "owner": str(NOBODY), "mode": "0400"},
    ], settings='root_group = "nogroup"')
    assert bootsecrets(m).code == 0
    kept = (outdir / "ro").stat().st_ino
    assert bootsecrets(m).code == 0
    assert (outdir / "ro").stat().st_ino == kept
