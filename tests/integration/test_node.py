"""The binary as the node runs it: under the unit's own restrictions (CAP_CHOWN only, read-only
system, private /tmp), refreshes of consumer-owned files, owed actions across a crash, the
deadline with a hung resolver, the PATH of on_change commands, one manifest per root. A few tests
run the same thing as full root on purpose (a developer running bootsecrets by hand)."""

import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time

import pytest

from conftest import BIN, ROOT, SANDBOX, aws_manifest, node_argv, published, status
from support.inotify import Watch
from support.unit_sandbox import UnitSandbox

NOBODY = 65534


def sandboxed(*argv, **kw):
    return subprocess.run(node_argv(list(argv)), capture_output=True, text=True, **kw)


def test_the_harness_applies_the_units_restrictions(tmp_path):
    """What the harness promises, checked: the bounding set is the unit's, DAC does not apply
    to root any more, the system is read-only and /tmp is private. Both shipped units parse."""
    for unit in ("bootsecrets.service", "bootsecrets-refresh.service"):
        UnitSandbox(ROOT / "units" / unit)
    r = sandboxed("grep", "^CapBnd", "/proc/self/status")
    assert r.returncode == 0, r
    # CAP_CHOWN is capability 0: the bounding set is exactly bit 0.
    assert int(r.stdout.split()[1], 16) == 1, r.stdout
    private = tmp_path / "consumer-only"
    private.write_text("x")
    private.chmod(0o400)
    os.chown(private, NOBODY, NOBODY)
    assert sandboxed("cat", str(private)).returncode != 0, "root read a file only its owner may"
    assert subprocess.run(["cat", str(private)], capture_output=True).returncode == 0
    assert sandboxed("touch", "/etc/bootsecrets-harness-probe").returncode != 0
    assert not os.path.exists("/etc/bootsecrets-harness-probe")
    marker = "/tmp/bootsecrets-harness-private-tmp"
    open(marker, "w").close()
    try:
        assert sandboxed("test", "-e", marker).returncode != 0, "/tmp is not private"
    finally:
        os.unlink(marker)
    assert sandboxed("sh", "-c", "umask").stdout.strip() == "0077"
    assert "0" == sandboxed("sh", "-c", "ulimit -c").stdout.strip()


def consumer_manifest(outdir, imds, moto, name, log):
    return aws_manifest(outdir, imds, moto, [
        {"path": "kubelet/bootstrap-token", "ref": f"{name}/token", "owner": "nobody",
         "group": "nogroup", "mode": "0440",
         "on_change": ["/bin/sh", "-c", f"echo restarted >> {log}"]},
        {"path": "db", "ref": f"{name}/db"},
    ], settings='root_group = "nogroup"')


def refresh_changes_nothing(moto, imds, outdir, name, bootsecrets, tmp_path, **kw):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/token", SecretString="token-1")
    sm.create_secret(Name=f"{name}/db", SecretString="db-1")
    log = tmp_path / "restarts"
    m = consumer_manifest(outdir, imds, moto, name, log)
    r = bootsecrets(m, **kw)
    assert r.code == 0, r
    data = os.readlink(outdir / "..data")
    for _ in range(2):
        r = bootsecrets(m, **kw)
        assert r.code == 0, r
        assert "unchanged kubelet/bootstrap-token" in r.stderr, r
        assert "are unchanged" in r.stderr, r
        assert os.readlink(outdir / "..data") == data, "an unchanged set was republished"
        assert not log.exists(), "on_change ran although nothing changed"
        assert status(outdir)["run"]["outcome"] == "unchanged"
    # A rotation is still a change: republished once, one restart.
    sm.put_secret_value(SecretId=f"{name}/token", SecretString="token-2")
    r = bootsecrets(m, **kw)
    assert r.code == 0 and "wrote kubelet/bootstrap-token" in r.stderr, r
    assert "unchanged db" in r.stderr, r
    assert log.read_text() == "restarted\n"
    st = os.stat(outdir / "kubelet/bootstrap-token")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o440, NOBODY, NOBODY)


def test_a_refresh_of_consumer_owned_files_changes_nothing(moto, imds, outdir, name, bootsecrets,
                                                          tmp_path):
    """Under CAP_CHOWN alone root cannot read `0440 nobody:nogroup` back: unchanged detection
    must not need to."""
    refresh_changes_nothing(moto, imds, outdir, name, bootsecrets, tmp_path)


def test_a_refresh_of_consumer_owned_files_changes_nothing_as_full_root(
        moto, imds, outdir, name, bootsecrets, tmp_path):
    """The same run by hand as full root (development use) agrees."""
    refresh_changes_nothing(moto, imds, outdir, name, bootsecrets, tmp_path, as_full_root=True)


def test_a_file_touched_since_it_was_published_is_repaired(moto, imds, outdir, name, bootsecrets,
                                                           tmp_path):
    """The consumer owns its file and may chmod it, write and chmod it back: size, mode and owner
    as before, but the ctime moved, so the next refresh rewrites it."""
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/token", SecretString="token-1")
    sm.create_secret(Name=f"{name}/db", SecretString="db-1")
    m = consumer_manifest(outdir, imds, moto, name, tmp_path / "restarts")
    assert bootsecrets(m).code == 0
    f = outdir / "kubelet/bootstrap-token"
    f.chmod(0o640)
    f.write_text("token-X")
    f.chmod(0o440)
    r = bootsecrets(m)
    assert r.code == 0 and "wrote kubelet/bootstrap-token" in r.stderr, r
    assert f.read_text() == "token-1"


def test_owed_actions_survive_a_crash_right_after_the_flip(moto, imds, outdir, name, bootsecrets,
                                                           tmp_path):
    """Freeze the run the instant `..data` is renamed (inotify), then SIGKILL it: the new set is
    published and its on_change action must already be owed in the status file, and the next run
    must run it. A large previous set makes the clean-up after the flip long, so a status written
    only after it would not be there yet."""
    sm = moto.client("secretsmanager")
    n = 300
    for i in range(n):
        sm.create_secret(Name=f"{name}/s{i}", SecretString=f"v1-{i}")
    log = tmp_path / "restarts"
    action = ["/bin/sh", "-c", f"echo restarted >> {log}"]
    secrets = [{"path": f"many/s{i}", "ref": f"{name}/s{i}"} for i in range(n)]
    secrets[0]["on_change"] = action
    m = aws_manifest(outdir, imds, moto, secrets, settings="concurrency = 32")
    assert bootsecrets(m).code == 0
    mpath = tmp_path / "manifest.toml"
    # Rotate one secret and drop the rest: the previous version (n files) is removed after the flip.
    sm.put_secret_value(SecretId=f"{name}/s0", SecretString="v2-0")
    mpath.write_text(aws_manifest(outdir, imds, moto, secrets[:1]))
    watch = Watch(outdir)
    try:
        proc = subprocess.Popen(node_argv([str(BIN), "run", "--manifest", str(mpath)]),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={"PATH": os.environ["PATH"]})
        assert watch.wait_for("..data", timeout=60), proc.communicate()
        os.kill(proc.pid, signal.SIGSTOP)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    finally:
        watch.close()
    assert published(outdir)["many/s0"].read_text() == "v2-0", "the flip happened"
    st = status(outdir)
    # Owed on disk, unless the action even ran before the kill landed (at least once is the
    # promise: then the next run may run it again).
    assert log.exists() or action in st["run"]["pending_actions"], st["run"]
    r = bootsecrets(mpath.read_text())
    assert r.code == 0, r
    assert log.exists(), "the owed action was forgotten"
    assert status(outdir)["run"]["pending_actions"] == []


def test_the_deadline_holds_with_a_hung_resolver(moto, imds, outdir, name, bootsecrets, tmp_path):
    """A DNS server that never answers (a resolv.conf of the test's own, for this run only): the
    lookup hangs on a blocking thread, the deadline abandons it, and the process must still exit
    at the deadline instead of waiting for the lookup."""
    ns = f"127.{os.getpid() % 200 + 20}.{int(time.time()) % 250 + 1}.53"
    black_hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    black_hole.bind((ns, 53))
    stop = threading.Event()

    def swallow():
        black_hole.settimeout(0.2)
        while not stop.is_set():
            try:
                black_hole.recv(4096)
            except OSError:
                pass
    t = threading.Thread(target=swallow, daemon=True)
    t.start()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {ns}\noptions timeout:30 attempts:5\n")
    m = aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}],
                     settings="deadline_seconds = 3", backend_extra="allow_http = true").replace(
        moto.url, "http://secretsmanager.hung-resolver.test")
    try:
        r = bootsecrets(m, binds=[(resolv, "/etc/resolv.conf")], timeout=90)
    finally:
        stop.set()
        t.join()
        black_hole.close()
    assert r.code == 3, r
    assert "deadline of 3s exceeded" in r.stderr, r
    assert r.elapsed < 3 + 5, f"the process outlived its deadline: {r.elapsed:.1f} s\n{r}"


def test_on_change_gets_a_path_of_root_only_directories(moto, imds, outdir, name, bootsecrets,
                                                        tmp_path):
    """A world-writable directory where PATH names /usr/local/bin (mounted there for this run):
    whoever can write it would choose what `systemctl` means to a root on_change command."""
    open_dir = tmp_path / "world-writable"
    open_dir.mkdir()
    open_dir.chmod(0o1777)
    seen = tmp_path / "path-seen"
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString="v1")
    m = aws_manifest(outdir, imds, moto, [
        {"path": "a", "ref": f"{name}/a", "on_change": ["/bin/sh", "-c", f'echo "$PATH" > {seen}']}])
    binds = [(open_dir, "/usr/local/bin")]
    assert bootsecrets(m, binds=binds).code == 0
    sm.put_secret_value(SecretId=f"{name}/a", SecretString="v2")
    r = bootsecrets(m, binds=binds)
    assert r.code == 0, r
    dirs = seen.read_text().strip().split(":")
    assert "/usr/local/bin" not in dirs, dirs
    assert "/usr/bin" in dirs and "/bin" in dirs, dirs


def test_a_second_manifest_cannot_take_over_a_root(moto, imds, outdir, name, bootsecrets,
                                                   tmp_path):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString="first")
    sm.create_secret(Name=f"{name}/b", SecretString="second")
    first = aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}])
    assert bootsecrets(first).code == 0
    other = tmp_path / "other.toml"
    other.write_text(aws_manifest(outdir, imds, moto, [{"path": "b", "ref": f"{name}/b"}]))
    r = subprocess.run(node_argv([str(BIN), "run", "--manifest", str(other)]),
                       capture_output=True, text=True)
    assert r.returncode == 1, r
    assert f"holds the secrets of manifest {tmp_path / 'manifest.toml'}" in r.stderr, r
    assert "own settings.output_root" in r.stderr, r
    assert {p: f.read_text() for p, f in published(outdir).items()} == {"a": "first"}
    assert status(outdir)["manifest"] == str(tmp_path / "manifest.toml")


def test_the_status_records_what_the_next_run_compares(moto, imds, outdir, name, bootsecrets):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString="v1")
    assert bootsecrets(aws_manifest(outdir, imds, moto, [
        {"path": "d/a", "ref": f"{name}/a", "owner": "nobody", "mode": "0400"}])).code == 0
    st = status(outdir)
    assert st["format"] == 2 and st["data"] == os.readlink(outdir / "..data")
    (entry,) = st["secrets"]
    fst = os.stat(outdir / "d/a")
    assert (entry["uid"], entry["gid"], entry["inode"]) == (NOBODY, 0, fst.st_ino)
    assert entry["ctime"] == f"{fst.st_ctime_ns // 10**9}.{fst.st_ctime_ns % 10**9:09d}"
    assert json.dumps(st).count("v1") == 0
