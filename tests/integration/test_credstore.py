"""The credstore layout shares /run/credstore with systemd: `systemd-imds-import` (systemd 261+)
writes the credentials it imports from the instance's user data there too. bootsecrets neither
removes nor replaces what it did not write, refuses a name both would write, and consumers
open both kinds of file the same way (as `LoadCredential=NAME:/run/credstore/NAME` does)."""

import os

from conftest import aws_manifest, status

# What systemd-imds-import leaves: regular files, root's alone.
FOREIGN = {"firstboot.hostname": b"node-7\n", "ssh.authorized_keys.root": b"ssh-ed25519 AAAA x\n"}


def prepare(outdir):
    outdir.mkdir(mode=0o700)
    for n, v in FOREIGN.items():
        p = outdir / n
        p.write_bytes(v)
        p.chmod(0o600)
    return {n: os.stat(outdir / n) for n in FOREIGN}


def untouched(outdir, before):
    for n, v in FOREIGN.items():
        st = os.lstat(outdir / n)
        assert (st.st_ino, st.st_mode, st.st_ctime_ns) == \
            (before[n].st_ino, before[n].st_mode, before[n].st_ctime_ns), n
        assert (outdir / n).read_bytes() == v, n


def test_credentials_systemd_wrote_are_left_as_they_are(moto, imds, outdir, name, bootsecrets):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/t", SecretString="token-1")
    sm.create_secret(Name=f"{name}/c", SecretString="ca-1")
    before = prepare(outdir)
    both = [{"path": "kubelet.token", "ref": f"{name}/t"}, {"path": "kubelet.ca", "ref": f"{name}/c"}]
    settings = 'layout = "credstore"'
    r = bootsecrets(aws_manifest(outdir, imds, moto, both, settings=settings))
    assert r.code == 0, r
    untouched(outdir, before)
    sm.put_secret_value(SecretId=f"{name}/t", SecretString="token-2")
    r = bootsecrets(aws_manifest(outdir, imds, moto, both, settings=settings))
    assert r.code == 0, r
    # Dropping a secret removes only bootsecrets' own name.
    r = bootsecrets(aws_manifest(outdir, imds, moto, both[:1], settings=settings))
    assert r.code == 0 and "removed kubelet.ca" in r.stderr, r
    untouched(outdir, before)
    # A consumer opens each by name, as PID 1 does for LoadCredential=.
    assert (outdir / "kubelet.token").read_bytes() == b"token-2"
    assert not (outdir / "kubelet.ca").exists()
    for n in FOREIGN:
        assert (outdir / n).is_file()
    assert sorted(e for e in os.listdir(outdir) if not e.startswith(".")) == \
        sorted([*FOREIGN, "kubelet.token"])


def test_a_name_systemd_already_wrote_is_refused(moto, imds, outdir, name, bootsecrets):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/t", SecretString="token-1")
    sm.create_secret(Name=f"{name}/h", SecretString="evil-hostname")
    before = prepare(outdir)
    m = aws_manifest(outdir, imds, moto, [
        {"path": "kubelet.token", "ref": f"{name}/t"},
        {"path": "firstboot.hostname", "ref": f"{name}/h"},
    ], settings='layout = "credstore"')
    r = bootsecrets(m)
    assert r.code == 1, r
    msg = r.stderr
    assert f"{outdir}/firstboot.hostname exists and bootsecrets did not write it" in msg, r
    assert "systemd-imds-import" in msg and "another path" in msg, r
    untouched(outdir, before)
    assert not (outdir / "kubelet.token").exists(), "nothing is published by a refused run"
    assert status(outdir)["run"]["outcome"] == "failed"
