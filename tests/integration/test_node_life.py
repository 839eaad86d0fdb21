"""Secrets that know the node's life (`unless_exists`, `optional`), and failures reported in full:
a failed run names every failing secret with its cause, and publishes nothing."""

import os
import re
import socket
import struct
import subprocess

from conftest import BIN, aws_manifest, node_argv, published, status
from support.faults import aws_error


def seed(moto, name, **values):
    sm = moto.client("secretsmanager")
    for k, v in values.items():
        sm.create_secret(Name=f"{name}/{k}", SecretString=v)
    return sm


def test_a_secret_is_skipped_once_its_path_exists(moto, imds, outdir, name, bootsecrets, tmp_path):
    """The kubelet bootstrap token: fetched while the node has no kubeconfig, skipped after it
    joined, even once the token is gone from the backend."""
    sm = seed(moto, name, token="bootstrap-1", ca="ca-1")
    kubeconfig = tmp_path / "var-lib-kubelet" / "kubeconfig"
    m = aws_manifest(outdir, imds, moto, [
        {"path": "kubelet/bootstrap-token", "ref": f"{name}/token",
         "unless_exists": str(kubeconfig)},
        {"path": "kubelet/ca.crt", "ref": f"{name}/ca"},
    ])
    r = bootsecrets(m)
    assert r.code == 0, r
    assert set(published(outdir)) == {"kubelet/bootstrap-token", "kubelet/ca.crt"}
    assert status(outdir)["run"]["skipped"] == []

    kubeconfig.parent.mkdir()
    kubeconfig.write_text("joined")
    sm.delete_secret(SecretId=f"{name}/token", ForceDeleteWithoutRecovery=True)
    r = bootsecrets(m)
    assert r.code == 0, r
    assert f"skipped kubelet/bootstrap-token: {kubeconfig} exists (unless_exists)" in r.stderr, r
    assert "removed kubelet/bootstrap-token" in r.stderr, r
    assert set(published(outdir)) == {"kubelet/ca.crt"}, "a skipped secret is not published"
    st = status(outdir)
    assert st["run"]["skipped"] == [{"path": "kubelet/bootstrap-token",
                                     "unless_exists": str(kubeconfig)}]
    assert [s["path"] for s in st["secrets"]] == ["kubelet/ca.crt"]


def test_a_skipped_secret_needs_no_backend(moto, imds, outdir, name, bootsecrets, tmp_path):
    """Its backend is not even contacted: a backend only skipped secrets use may be down."""
    seed(moto, name, ca="ca-1")
    flag = tmp_path / "joined"
    flag.write_text("")
    m = aws_manifest(outdir, imds, moto, [
        {"path": "ca", "ref": f"{name}/ca", "backend": "aws"},
        {"path": "token", "ref": "t", "backend": "down", "unless_exists": str(flag)},
    ]) + '\n[backend.down]\ntype = "aws"\nregion = "us-east-1"\nendpoint = "http://127.0.0.1:9"\n' \
        'imds_endpoint = "http://127.0.0.1:9"\n'
    r = bootsecrets(m)
    assert r.code == 0, r
    assert set(published(outdir)) == {"ca"}


def test_without_its_path_a_conditional_secret_fails_closed(moto, imds, outdir, name, bootsecrets,
                                                            tmp_path):
    seed(moto, name, ca="ca-1")
    m = aws_manifest(outdir, imds, moto, [
        {"path": "kubelet/bootstrap-token", "ref": f"{name}/token",
         "unless_exists": str(tmp_path / "no-kubeconfig")},
        {"path": "kubelet/ca.crt", "ref": f"{name}/ca"},
    ])
    r = bootsecrets(m)
    assert r.code == 1, r
    assert "secret `kubelet/bootstrap-token`" in r.stderr and "not found" in r.stderr, r
    assert published(outdir) == {}


def test_an_optional_secret_that_fails_is_a_warning(moto, imds, outdir, name, bootsecrets):
    seed(moto, name, a="a-1")
    m = aws_manifest(outdir, imds, moto, [
        {"path": "a", "ref": f"{name}/a"},
        {"path": "extra", "ref": f"{name}/missing", "optional": True},
    ])
    r = bootsecrets(m)
    assert r.code == 0, r
    assert "warning: optional secret(s) `extra` not fetched: secret `extra`" in r.stderr, r
    assert "not found" in r.stderr, r
    assert {p: f.read_text() for p, f in published(outdir).items()} == {"a": "a-1"}
    st = status(outdir)
    assert st["run"]["outcome"] == "published" and st["run"]["exit_code"] == 0
    [f] = st["run"]["failures"]
    assert f["secrets"] == ["extra"] and f["optional"] is True and f["class"] == "permanent", f
    assert "not found" in f["error"]


def test_an_outage_never_takes_a_published_optional_secret_away(moto, imds, outdir, name,
                                                                bootsecrets, fault_proxy):
    """A refresh whose optional secret's backend keeps failing transiently keeps the value it
    published before, as it is (kept twice over, through the binary under the unit's
    restrictions), while the other secrets still rotate; the status says which file was kept and
    when it was fetched. Once the backend answers again the new value is written; once it says
    the secret is gone, the file goes."""
    sm = seed(moto, name, a="a-1", x="x-1")
    proxy = fault_proxy(moto.url)
    m = aws_manifest(outdir, imds, moto, [
        {"path": "a", "ref": f"{name}/a", "backend": "aws"},
        {"path": "extra/x", "ref": f"{name}/x", "optional": True, "backend": "flaky",
         "mode": "0440"},
    ], settings="deadline_seconds = 4\nstartup_jitter_ms = 0") + (
        f'\n[backend.flaky]\ntype = "aws"\nregion = "us-east-1"\nendpoint = "{proxy.url}"\n'
        f'imds_endpoint = "{imds.url}"\n')
    values = lambda: {p: f.read_text() for p, f in published(outdir).items()}  # noqa: E731
    r = bootsecrets(m)
    assert r.code == 0, r
    assert values() == {"a": "a-1", "extra/x": "x-1"}
    first = {s["path"]: s for s in status(outdir)["secrets"]}["extra/x"]

    proxy.inject(aws_error(503, "ServiceUnavailableException", "busy"))
    sm.put_secret_value(SecretId=f"{name}/a", SecretString="a-2")
    sm.put_secret_value(SecretId=f"{name}/x", SecretString="x-2")
    for _ in range(2):
        r = bootsecrets(m)
        assert r.code == 0, r
        assert "optional secret(s) `extra/x` not fetched" in r.stderr, r
        assert "kept extra/x as published before" in r.stderr, r
        assert values() == {"a": "a-2", "extra/x": "x-1"}, r
        st = status(outdir)
        assert st["run"]["kept"] == ["extra/x"] and st["run"]["removed"] == [], st["run"]
        [f] = st["run"]["failures"]
        assert f["secrets"] == ["extra/x"] and f["class"] == "deadline", f
        kept = {s["path"]: s for s in st["secrets"]}["extra/x"]
        assert kept["kept"] is True, kept
        for k in ("sha256", "size", "mode", "uid", "gid", "fetched_at", "version"):
            assert kept[k] == first[k], (k, kept, first)
        assert (outdir / "extra/x").stat().st_mode & 0o7777 == 0o440
    versions = [d for d in os.listdir(outdir) if d.startswith("..v-")]
    data = os.readlink(outdir / "..data")
    assert len(versions) == 2, "the published version and the one the kept file lives in"
    [older] = [v for v in versions if v != data]
    left = sorted(str(p.relative_to(outdir / older)) for p in (outdir / older).rglob("*"))
    assert left == ["extra", "extra/x"], "only the kept file stays there: a-1 does not linger"

    proxy.clear()
    r = bootsecrets(m)
    assert r.code == 0, r
    assert values() == {"a": "a-2", "extra/x": "x-2"}
    st = status(outdir)
    assert st["run"]["kept"] == [] and "kept" not in st["secrets"][1], st
    assert len([d for d in os.listdir(outdir) if d.startswith("..v-")]) == 1

    sm.delete_secret(SecretId=f"{name}/x", ForceDeleteWithoutRecovery=True)
    r = bootsecrets(m)
    assert r.code == 0, r
    assert "removed extra/x: its optional secret could not be fetched" in r.stderr, r
    assert values() == {"a": "a-2"}
    st = status(outdir)
    assert st["run"]["removed"] == ["extra/x"] and st["run"]["kept"] == [], st["run"]
    assert st["run"]["failures"][0]["class"] == "permanent"


def test_every_failing_secret_is_reported_and_nothing_is_published(moto, imds, outdir, name,
                                                                    bootsecrets):
    sm = seed(moto, name, a="a-1", b="b-1", c="c-1")
    m = aws_manifest(outdir, imds, moto, [
        {"path": "a", "ref": f"{name}/a"}, {"path": "b", "ref": f"{name}/b"},
        {"path": "c", "ref": f"{name}/c"}, {"path": "d", "ref": f"{name}/d", "optional": True},
    ])
    assert bootsecrets(m).code == 0  # d is optional and missing: a warning
    before = {p: f.read_text() for p, f in published(outdir).items()}
    assert before == {"a": "a-1", "b": "b-1", "c": "c-1"}
    sm.delete_secret(SecretId=f"{name}/a", ForceDeleteWithoutRecovery=True)
    sm.put_secret_value(SecretId=f"{name}/b", SecretString="b-2")
    sm.delete_secret(SecretId=f"{name}/c", ForceDeleteWithoutRecovery=True)
    r = bootsecrets(m)
    assert r.code == 1, r
    # Each failure on its own line, with its cause; then what the run did about them.
    for path in ("a", "c"):
        assert f"error: secret `{path}` (backend `aws`" in r.stderr, (path, r)
    assert r.stderr.rstrip().splitlines()[-1] == (
        "bootsecrets: error: could not fetch 2 of 4 secrets (`a`, `c`); nothing was published"), r
    assert r.stderr.count("not found") >= 3, r  # a, c, and the optional d's warning
    assert {p: f.read_text() for p, f in published(outdir).items()} == before, \
        "b's new value must not be published when a and c failed"
    st = status(outdir)
    assert st["run"]["outcome"] == "failed"
    assert [(f["secrets"], f["optional"]) for f in st["run"]["failures"]] == [
        (["a"], False), (["c"], False), (["d"], True)]


def test_the_exit_code_is_the_most_severe_class(moto, imds_factory, fault_proxy, outdir, name,
                                                bootsecrets):
    """A permanent failure (exit 1) outweighs a deadline (exit 3); deadlines alone give 3."""
    seed(moto, name, a="a-1")
    imds = imds_factory()
    proxy = fault_proxy(moto.url)
    proxy.inject(aws_error(503, "ServiceUnavailable", "down for maintenance"), times=None)
    mixed = aws_manifest(outdir, imds, moto, [
        {"path": "a", "ref": f"{name}/a", "backend": "late"},
        {"path": "b", "ref": f"{name}/missing", "backend": "aws"},
    ], settings="deadline_seconds = 4") + late_backend(proxy, imds)
    r = bootsecrets(mixed)
    assert r.code == 1, r
    assert "could not fetch 2 of 2 secrets (`a`, `b`)" in r.stderr, r
    assert "deadline of 4s exceeded" in r.stderr and "not found" in r.stderr, r
    only_late = aws_manifest(outdir, imds, moto, [
        {"path": "a", "ref": f"{name}/a", "backend": "late"},
    ], settings="deadline_seconds = 3") + late_backend(proxy, imds)
    r = bootsecrets(only_late.replace('[backend.aws]\ntype = "aws"', '[backend.unused]\ntype = "aws"'))
    assert r.code == 3, r


def late_backend(proxy, imds):
    return f'''
[backend.late]
type = "aws"
region = "us-east-1"
endpoint = "{proxy.url}"
imds_endpoint = "{imds.url}"
'''


def parse_journal(datagram: bytes) -> list:
    """systemd's native journal protocol: `KEY=value\n`, or `KEY\n` + u64 LE length + value +
    `\n` (systemd.journal-fields(7), "Native Journal Protocol")."""
    fields, i = [], 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        line = datagram[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            i = nl + 1
        else:
            k = line
            (n,) = struct.unpack_from("<Q", datagram, nl + 1)
            start = nl + 1 + 8
            v = datagram[start:start + n]
            assert datagram[start + n:start + n + 1] == b"\n", datagram
            i = start + n + 1
        assert re.fullmatch(rb"[A-Z0-9_]+", k) and not k.startswith(b"_"), k
        fields.append((k.decode(), v.decode()))
    return fields


def run_with_journal(manifest_path, tmp_path, socket_dir=True):
    """Runs the binary as systemd would with StandardError=journal: stderr is a stream whose
    device and inode $JOURNAL_STREAM names, and (when `socket_dir`) a journal socket, ours,
    where /run/systemd/journal/socket is. Returns (entries, stderr text)."""
    entries = []
    binds = []
    if socket_dir:
        run_systemd = tmp_path / "run-systemd"
        (run_systemd / "journal").mkdir(parents=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(run_systemd / "journal" / "socket"))
        sock.settimeout(0.2)
        binds = [(run_systemd, "/run/systemd")]
    r_fd, w_fd = os.pipe()
    st = os.fstat(w_fd)
    env = {"PATH": os.environ["PATH"], "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    proc = subprocess.Popen(node_argv([str(BIN), "run", "--manifest", str(manifest_path)],
                                      binds=binds), stderr=w_fd, stdout=subprocess.DEVNULL, env=env)
    os.close(w_fd)
    with os.fdopen(r_fd) as r:
        err = r.read()
    proc.wait(timeout=60)
    if socket_dir:
        while True:
            try:
                entries.append(parse_journal(sock.recv(1 << 20)))
            except socket.timeout:
                break
        sock.close()
    return proc.returncode, entries, err


def test_the_journal_gets_structured_fields_and_one_priority_per_entry(moto, imds, outdir, name,
                                                                        tmp_path):
    seed(moto, name, a="journal-canary-value")
    mpath = tmp_path / "manifest.toml"
    mpath.write_text(aws_manifest(outdir, imds, moto, [
        {"path": "kubelet/a", "ref": f"{name}/a"},
        {"path": "b", "ref": f"{name}/missing"},
    ]))
    code, entries, err = run_with_journal(mpath, tmp_path)
    assert code == 1 and err == "", err
    assert entries, "nothing reached the journal socket"
    for e in entries:
        d = dict(e)
        assert d["SYSLOG_IDENTIFIER"] == "bootsecrets" and d["PRIORITY"] in "34567", e
        assert not any("journal-canary-value" in v for _, v in e), e
    [failure] = [dict(e) for e in entries if ("SECRET_PATH", "b") in e]
    assert failure["PRIORITY"] == "3" and failure["ERROR_CLASS"] == "permanent", failure
    assert failure["BACKEND"] == "aws" and "not found" in failure["MESSAGE"], failure
    last = dict(entries[-1])
    assert last["PRIORITY"] == "3" and last["MESSAGE"].startswith("could not fetch secret `b`"), last

    # A message of several lines is one entry (the binary-safe field form), at one priority.
    mpath.write_text("[settings]\ndeadline_seconds = 0\ndefault_mode = \"0777\"\n")
    code, entries, err = run_with_journal(mpath, tmp_path / "again")
    assert code == 2 and err == "", err
    [entry] = [dict(e) for e in entries if e[0][1] == "3"]
    assert entry["MESSAGE"].count("\n") >= 2 and "deadline_seconds" in entry["MESSAGE"], entry


def test_without_a_journal_socket_every_line_carries_its_priority(tmp_path):
    mpath = tmp_path / "manifest.toml"
    mpath.write_text("[settings]\ndeadline_seconds = 0\ndefault_mode = \"0777\"\n")
    code, _, err = run_with_journal(mpath, tmp_path, socket_dir=False)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) >= 3 and all(line.startswith("<3>") for line in lines), err
