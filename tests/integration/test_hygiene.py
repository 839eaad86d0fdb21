"""Process hygiene observed from outside while the binary runs: no core files, and no secret in
its argv or environment."""

import os
import subprocess
import time

import pytest

from conftest import BIN, aws_manifest, node_argv


def test_running_process_has_core_dumps_off_and_clean_argv_env(moto, imds_factory, outdir, name, tmp_path):
    moto.client("secretsmanager").create_secret(Name=f"{name}/h", SecretString="hygiene-value")
    imds = imds_factory(listen_after=3.0)  # keeps the process alive long enough to look at it
    manifest = tmp_path / "m.toml"
    manifest.write_text(aws_manifest(outdir, imds, moto, [{"path": "h", "ref": f"{name}/h"}]))
    proc = subprocess.Popen(node_argv([str(BIN), "run", "--manifest", str(manifest)]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={"PATH": "/usr/bin:/bin"})
    try:
        limits = ""
        for _ in range(50):
            time.sleep(0.05)
            # Past the sandbox's own steps (unshare, sh, setpriv exec in the same process): the
            # binary itself, after its first steps (hardening runs first thing).
            if open(f"/proc/{proc.pid}/comm").read().strip() == BIN.name[:15]:
                time.sleep(0.2)
                limits = open(f"/proc/{proc.pid}/limits").read()
                break
        core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
        assert core.split()[4:6] == ["0", "0"], core  # soft and hard limit
        # The kernel makes /proc/PID/{environ,mem} of a non-dumpable process unreadable to
        # non-root; as root we can at least check nothing secret was put there.
        environ = open(f"/proc/{proc.pid}/environ", "rb").read()
        cmdline = open(f"/proc/{proc.pid}/cmdline", "rb").read()
        for blob in (environ, cmdline):
            assert b"hygiene-value" not in blob
            for tok in imds.handed_out:
                assert tok.encode() not in blob
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert (outdir / "h").read_bytes() == b"hygiene-value"


@pytest.mark.parametrize("command", ["run", "doctor"])
def test_process_is_non_dumpable(moto, imds_factory, name, command):
    """Run as `nobody`: a dumpable process's /proc/PID files belong to its own uid, a non-dumpable
    one's to root. So the owner of /proc/PID/environ tells whether PR_SET_DUMPABLE took effect.
    Not under the unit's restrictions: the point is a run by an unprivileged user, whose /proc
    files tell dumpable from not (a development run by hand, with even less than CAP_CHOWN)."""
    if os.geteuid() != 0:
        return
    work = f"/dev/shm/bootsecrets-dumpable-{name}"
    os.makedirs(work, mode=0o755)
    try:
        imds = imds_factory(listen_after=3.0)
        manifest = f"{work}/m.toml"
        with open(manifest, "w") as f:
            f.write(aws_manifest(f"{work}/out", imds, moto, [{"path": "h", "ref": f"{name}/h"}]))
        os.chmod(work, 0o777)
        proc = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                 str(BIN), command, "--manifest", manifest],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
        try:
            owner = None
            for _ in range(40):
                time.sleep(0.05)
                status = open(f"/proc/{proc.pid}/status").read()
                uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
                if uid_line.split()[1] == "65534" and BIN.name[:15] in open(f"/proc/{proc.pid}/comm").read():
                    time.sleep(0.3)  # past startup: hardening runs first thing
                    owner = os.stat(f"/proc/{proc.pid}/environ").st_uid
                    break
            assert owner == 0, f"/proc/PID/environ owned by {owner}: the process is dumpable"
            limits = open(f"/proc/{proc.pid}/limits").read()
            core = next(line for line in limits.splitlines()
                        if line.startswith("Max core file size"))
            assert core.split()[4:6] == ["0", "0"], core
        finally:
            proc.kill()
            proc.wait()
    finally:
        subprocess.run(["rm", "-rf", work])
