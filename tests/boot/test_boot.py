"""A real first boot: Debian with dracut + Ignition in the initramfs, systemd as PID 1, under qemu
(software emulation). Ignition applies the config rendered by `bootsecrets render ignition`,
downloads the freshly built static binary from a host server with sha512 verification, and
systemd enables the unit by preset. Or (`--install sysext`) Ignition downloads the release's
systemd-sysext image, systemd-sysext merges it and the rendered links enable the units it carries.
Secrets come from the real moto server and the IMDSv2 double on the host.

Network safety: qemu user networking with restrict=on; the guest reaches only the guestfwd
addresses below, each mapped to one loopback port of a test server:
  10.0.2.100:80 -> the binary's HTTP server   10.0.2.101:80 -> moto (or a late proxy to it)
  10.0.2.102:80 -> the IMDSv2 double            10.0.2.103:80 -> the host's "fixed" signal
Every qemu run is under `timeout` (tests/boot/boot.sh).
"""

import base64
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from support.gce import GceMetadataDouble, SecretManagerDouble  # noqa: E402
from support.imds import ImdsDouble  # noqa: E402
from support.moto import Moto  # noqa: E402
from support.proxy import LateProxy  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from images import SYSTEMD, build_image  # noqa: E402

HERE = Path(__file__).resolve().parent
STATIC_BIN = Path(os.environ.get("BOOTSECRETS_STATIC_BIN",
                                 ROOT / "target" / "x86_64-unknown-linux-gnu" / "release" / "bootsecrets"))
HOST_BIN = Path(os.environ.get("BOOTSECRETS_BIN", ROOT / "target" / "debug" / "bootsecrets"))
VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
SYSEXT_NAME = f"bootsecrets-{VERSION}-x86-64.raw"
# The release's sysext image (release/build.sh).
SYSEXT_IMAGE = Path(os.environ.get("BOOTSECRETS_SYSEXT_IMAGE", ROOT / "dist" / VERSION / SYSEXT_NAME))
BINARY_GUEST, MOTO_GUEST, IMDS_GUEST, FIX_GUEST = "10.0.2.100", "10.0.2.101", "10.0.2.102", "10.0.2.103"


class Net:
    """Where the guest finds the test servers. imds=None: the manifest names no imds_endpoint (the
    default, 169.254.169.254)."""
    def __init__(self, binary, moto, imds):
        self.binary, self.moto, self.imds = binary, moto, imds

    def imds_line(self):
        return f'imds_endpoint = "http://{self.imds}"' if self.imds else ""


NET = Net(BINARY_GUEST, MOTO_GUEST, IMDS_GUEST)
# A guest on 169.254.169.0/24 (boot.sh GUEST_NET): the IMDS double at the real address, reached
# only the way the guest's routes allow.
LOCKED_NET = "169.254.169.0/24"
LNET = Net("169.254.169.100", "169.254.169.101", None)
# systemd.imds.network= defaults to "unlocked" (systemd 262.1's manual pages, and a boot of this
# image without it: 85-imds-early.network then has no prohibit route), and systemd.imds.import=
# to false outside the initrd (this image's initrd has no systemd-imds): both are asked for.
LOCK_APPEND = "systemd.imds.network=locked systemd.imds.import=1"
# The lock is systemd-imdsd's 85-imds-early.network, and networkd configures a link with the
# first .network file (by name) that matches it: the image's 20-virtio.network and the initrd's
# 71-default.network (from ip=dhcp, kept in /run) would win. Masked (a link to /dev/null in
# /etc), as on an image whose own network files sort after it.
LOCK_MASKED = ["/etc/systemd/network/20-virtio.network", "/etc/systemd/network/71-default.network"]


@pytest.fixture(scope="module")
def images():
    built = {}

    def get(suite):
        if suite not in built:
            built[suite] = build_image(suite)
        return built[suite]
    return get


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    m = Moto(log_path=tmp_path_factory.mktemp("moto") / "moto.log").start()
    yield m
    m.stop()


def serve(d):
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(d), **kw)  # noqa: E731
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture(scope="module")
def binary_server(tmp_path_factory):
    assert STATIC_BIN.exists(), f"{STATIC_BIN} missing: build the static release binary first"
    d = tmp_path_factory.mktemp("www")
    shutil.copy(STATIC_BIN, d / "bootsecrets")
    srv = serve(d)
    yield srv.server_address[1], hashlib.sha512((d / "bootsecrets").read_bytes()).hexdigest()
    srv.shutdown()


@pytest.fixture(scope="module")
def sysext_server(tmp_path_factory):
    assert SYSEXT_IMAGE.exists(), f"{SYSEXT_IMAGE} missing: run release/build.sh first"
    d = tmp_path_factory.mktemp("www-sysext")
    shutil.copy(SYSEXT_IMAGE, d / SYSEXT_NAME)
    srv = serve(d)
    yield srv.server_address[1], hashlib.sha512((d / SYSEXT_NAME).read_bytes()).hexdigest()
    srv.shutdown()


def data_url(text):
    return "data:;base64," + base64.b64encode(text.encode()).decode()


def credstore_manifest(name, net=NET):
    return f"""[settings]
layout = "credstore"
deadline_seconds = 60

[backend.aws]
type = "aws"
endpoint = "http://{net.moto}"
allow_http = true
{net.imds_line()}

[[secret]]
path = "probe-token"
ref = "{name}/token"
"""


def manifest(name, deadline=90, net=NET):
    return f"""# boot test manifest: references only
[settings]
root_group = "nogroup"
deadline_seconds = {deadline}

[backend.aws]
type = "aws"
endpoint = "http://{net.moto}"
allow_http = true
{net.imds_line()}

[[secret]]
path = "kubelet/bootstrap-token"
ref = "{name}/token"
mode = "0440"
owner = "nobody"
group = "nogroup"
on_change = ["/usr/bin/systemctl", "try-reload-or-restart", "consumer.service"]
# Needed until the node has joined: kubelet then runs on its own rotated credentials.
unless_exists = "/var/lib/kubelet/kubeconfig"

[[secret]]
path = "db/password"
ref = "{name}/db"
json_key = "password"
"""


def ignition_config(tmp, name, sha512, deadline=90, refresh_probe=False, sysext=False, recovery=None,
                    net=NET, files=(), masked=(), manifest_text=None, restart_probe=False):
    """files: more (path, text) for the guest; masked: paths Ignition links to /dev/null;
    manifest_text: the manifest, instead of the AWS one."""
    mpath = tmp / "manifest.toml"
    mpath.write_text(manifest_text or manifest(name, deadline, net))
    if sysext:
        # Fedora CoreOS's rendering: this guest, like Fedora CoreOS, has systemd-sysext.service
        # disabled and no ensure-sysext.service (Flatcar's).
        install = ["--variant", "fcos", "--install", "sysext",
                   "--image-url", f"http://{net.binary}/{SYSEXT_NAME}", "--image-sha512", sha512]
    else:
        install = ["--variant", "flatcar", "--binary-url", f"http://{net.binary}/bootsecrets",
                   "--binary-sha512", sha512]
    r = subprocess.run([str(HOST_BIN), "render", "ignition", *install,
                        "--manifest", str(mpath), "--refresh"], capture_output=True, text=True,
                       check=True)
    cfg = json.loads(r.stdout)
    if refresh_probe:
        cfg["storage"]["files"].append({"path": "/etc/bootsecrets/refresh-probe", "mode": 0o644,
                                        "contents": {"source": data_url("")}})
        # A second manifest with the credstore layout, for a consumer that reads its credential
        # with LoadCredential= by its fixed path (through the ..data link).
        cfg["storage"]["files"].append({
            "path": "/etc/bootsecrets/credstore.toml", "mode": 0o644,
            "contents": {"source": data_url(credstore_manifest(name, net))}})
    if restart_probe:
        cfg["storage"]["files"].append({"path": "/etc/bootsecrets/restart-probe", "mode": 0o644,
                                        "contents": {"source": data_url("")}})
    for fpath in masked:
        cfg["storage"].setdefault("links", []).append({"path": fpath, "target": "/dev/null", "overwrite": True})
    for fpath, text in files:
        cfg["storage"]["files"].append({"path": fpath, "mode": 0o644, "overwrite": True,
                                        "contents": {"source": data_url(text)}})
    if recovery:
        # What the person on call does, in order (tests/boot/guest/recovery-probe).
        cfg["storage"]["files"].append({"path": "/etc/bootsecrets/recovery-probe", "mode": 0o644,
                                        "contents": {"source": data_url(recovery + "\n")}})
    for script in ("kubelet-standin", "boot-report", "refresh-probe", "consumer-standin", "recovery-probe",
                   "restart-probe"):
        cfg["storage"]["files"].append({"path": f"/opt/bin/{script}", "mode": 0o755,
                                        "contents": {"source": data_url((HERE / "guest" / script).read_text())}})
    units = cfg["systemd"]["units"]
    for extra in [
        {"name": "kubelet.service", "enabled": True, "contents":
            "[Unit]\nDescription=kubelet stand-in\n[Service]\nType=oneshot\nRemainAfterExit=yes\n"
            "ExecStart=/opt/bin/kubelet-standin\n[Install]\nWantedBy=multi-user.target\n"},
        {"name": "consumer.service", "enabled": True, "contents":
            "[Unit]\nDescription=a consumer of the token\nAfter=kubelet.service\n"
            "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/opt/bin/consumer-standin\n"
            "[Install]\nWantedBy=multi-user.target\n"},
        {"name": "boot-report.service", "enabled": True, "contents":
            "[Unit]\nDescription=report to the host\n"
            "After=bootsecrets.service kubelet.service consumer.service\n"
            # It waits for restarts to settle and for the host's fix (boot.sh bounds the boot).
            "[Service]\nType=oneshot\nTimeoutStartSec=infinity\nExecStart=/opt/bin/boot-report\n"
            "[Install]\nWantedBy=multi-user.target\n"},
    ]:
        # The sysext rendering already has kubelet.service (its drop-in): one entry per unit.
        same = [u for u in units if u["name"] == extra["name"]]
        if same:
            same[0].update(extra)
        else:
            units.append(extra)
    path = tmp / "config.ign"
    path.write_text(json.dumps(cfg))
    v = subprocess.run(["ignition-validate", str(path)], capture_output=True, text=True)
    assert v.returncode == 0 and not v.stdout.strip() and not v.stderr.strip(), v
    return path


class Report:
    def __init__(self, text):
        m = re.search(r"BEGIN-REPORT\n(.*?)END-REPORT", text, re.S)
        assert m, f"no report from the guest:\n{text[-3000:]}"
        self.lines = m.group(1).splitlines()

    def prop(self, unit, key):
        for line in self.lines:
            if line.startswith(f"{unit} {key}="):
                return line.split("=", 1)[1]
        return None

    def starting(self, prefix):
        return [line[len(prefix) + 1:] for line in self.lines if line.startswith(prefix + " ")]

    def __repr__(self):
        return "\n".join(self.lines)


def boot(image, tmp, config, hostports, label, second_boot=False, on_line=None, env=None):
    """One boot under boot.sh. on_line=(line, action): action() runs once, when the guest has
    written that line to its results port (the host's part of a scenario, mid-boot). env: more
    of boot.sh's settings (GUEST_NET, SMBIOS)."""
    results = tmp / f"{label}.results"
    env = dict(os.environ, OVERLAY=str(tmp / "disk.qcow2"), BOOT_TIMEOUT="480",
               CONSOLE_LOG=str(tmp / f"{label}.console"), **(env or {}))
    args = [str(HERE / "boot.sh"), str(image), "-" if second_boot else str(config), str(results)]
    args += [f"{ip}:80={port}" for ip, port in hostports]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if on_line:
        line, action = on_line
        while proc.poll() is None:
            if results.exists() and f"\n{line}\n" in results.read_text(errors="replace"):
                action()
                break
            time.sleep(1)
    out, _ = proc.communicate()
    r = subprocess.CompletedProcess(args, proc.returncode, out, "")
    console = (tmp / f"{label}.console").read_text(errors="replace")
    assert r.returncode == 0, f"qemu: {r.stdout}{r.stderr}\n--- console tail\n{console[-4000:]}"
    return Report(results.read_text(errors="replace"))


def tree(lines):
    """`find -printf '%M %u:%g %P'` lines as {path: (mode, owner)}, version directories named
    alike (a republished set moves to a new one)."""
    out = {}
    for line in lines:
        mode, owner, *path = line.split(" ", 2)
        out[re.sub(r"\.\.v-[0-9a-f]+", "..v-*", path[0] if path else "")] = (mode, owner)
    return out


def seed(moto, name, token="boot-token-1", password="boot-pw-1"):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/token", SecretString=token)
    sm.create_secret(Name=f"{name}/db", SecretString=json.dumps({"password": password}))


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def assert_secrets_seen(rep, token, password, extra=None):
    """`extra`: more files, {path: (entry fields, sha256)}."""
    saw = rep.starting("saw")
    assert "fstype tmpfs" in saw, rep
    entries = {e.split()[-1]: e.split()[1:5] for e in saw if e.startswith("entry ")}
    assert entries["kubelet/bootstrap-token"] == ["f", "440", "nobody", "nogroup"], rep
    assert entries["db/password"] == ["f", "400", "root", "root"], rep
    assert entries["kubelet"] == ["d", "750", "root", "nogroup"], rep
    for path, (fields, _) in (extra or {}).items():
        assert entries[path] == fields, (path, rep)
    hashes = {line.split()[2].rsplit("/", 1)[-1]: line.split()[1] for line in saw if line.startswith("sha256 ")}
    assert hashes == {"bootstrap-token": sha(token), "password": sha(password),
                      **{p.rsplit("/", 1)[-1]: h for p, (_, h) in (extra or {}).items()}}, rep


@pytest.mark.parametrize("suite", ["bookworm", "sid"])
def test_first_boot_then_second_boot_with_a_rotated_value(images, suite, moto, binary_server, tmp_path):
    """Scenarios 1 (OK, kubelet after bootsecrets) and 4 (second boot of the same disk: /run is
    empty again, bootsecrets fetches again and picks up a rotated value), on systemd 252 and 262."""
    image = images(suite)
    port, sha512 = binary_server
    name = f"boot-{uuid.uuid4().hex[:8]}"
    seed(moto, name)
    moto.client("secretsmanager").create_secret(Name=f"{name}/token-next",
                                                SecretString="boot-token-next")
    imds = ImdsDouble(moto).start()
    try:
        cfg = ignition_config(tmp_path, name, sha512, refresh_probe=True)
        fwd = [(BINARY_GUEST, port), (MOTO_GUEST, moto.port), (IMDS_GUEST, imds.port)]
        rep = boot(image, tmp_path, cfg, fwd, "first")
        assert rep.starting("systemd-version") == [str(SYSTEMD[suite])], rep
        assert rep.prop("bootsecrets", "Result") == "success", rep
        assert rep.prop("bootsecrets", "NRestarts") == "0", rep
        assert rep.prop("kubelet", "ActiveState") == "active", rep
        # The binary install: the unit Ignition wrote, running the binary Ignition downloaded.
        assert rep.starting("unit-path") == ["/etc/systemd/system/bootsecrets.service"], rep
        assert "exec-path=/opt/bin/bootsecrets" in rep.lines, rep
        assert not any("bootsecrets" in line for line in rep.starting("sysext")), rep
        done = int(rep.prop("bootsecrets", "ExecMainExitTimestampMonotonic"))
        started = int(rep.prop("kubelet", "ExecMainStartTimestampMonotonic"))
        assert 0 < done <= started, rep
        assert_secrets_seen(rep, "boot-token-1", "boot-pw-1")
        assert any("done: 2 secret(s)" in j for j in rep.starting("journal-bootsecrets")), rep
        # journalctl finds a secret's lines by its field; a good boot logs nothing at err.
        assert [j.split()[0:2] for j in rep.starting("journal-token")] == [
            ["wrote", "kubelet/bootstrap-token"]], rep
        assert rep.starting("journal-err") == [], rep
        # The status file is the last run's: the refresh probe's unchanged refresh (below).
        assert rep.starting("status-outcome") == ["unchanged"], rep
        assert rep.starting("failed-unit") == [], rep
        # Refresh without a reboot: the timer is enabled; the refresh service published the
        # token's next value and its on_change command restarted the consumer, from the sandbox.
        assert rep.starting("refresh-start-exit") == ["0"], rep
        assert rep.prop("refresh", "Result") == "success", rep
        assert rep.prop("refresh-timer", "ActiveState") == "active", rep
        assert rep.prop("refresh-timer", "UnitFileState") == "enabled", rep
        assert rep.starting("refresh-token")[0].split()[0] == sha("boot-token-next"), rep
        assert rep.starting("consumer") == [f"run {sha('boot-token-1')}",
                                            f"run {sha('boot-token-next')}"], rep
        assert rep.starting("refresh-status") == ["published"], rep
        assert any("running on_change command" in j for j in rep.starting("journal-refresh")), rep
        # A refresh with nothing changed, under the unit's CAP_CHOWN alone, of a token only its
        # consumer may read: nothing moves and nobody restarts.
        assert rep.starting("unchanged-start-exit") == ["0"], rep
        assert rep.prop("unchanged", "Result") == "success", rep
        assert rep.starting("unchanged-data") == ["same"], rep
        assert rep.starting("unchanged-consumer-runs") == ["0"], rep
        assert rep.starting("unchanged-status") == ["unchanged"], rep
        journal = rep.starting("journal-unchanged")
        assert any(j.startswith("unchanged kubelet/bootstrap-token") for j in journal), rep
        assert not any("running on_change command" in j for j in journal), rep
        # doctor, on the node: healthy, and systemd's ordering read where systemd runs.
        assert rep.starting("doctor-exit") == ["0"], rep
        doctor = rep.starting("doctor")
        assert any(d.startswith("ok    unit ordering") and "requires bootsecrets.service" in d
                   for d in doctor), rep
        assert any(d.startswith("ok    identity `aws`") and "instance role `node`" in d
                   for d in doctor), rep
        # The credstore layout: the credential's fixed path is a link through ..data, and
        # systemd's LoadCredential= reads it (a transient unit, as a consumer would).
        assert rep.starting("credstore-run-exit") == ["0"], rep
        assert rep.starting("credstore-link") == ["..data/probe-token"], rep
        assert rep.starting("credstore-loaded")[0].split()[0] == sha("boot-token-1"), rep
        probes = rep.starting("probe")
        assert len(probes) == 4 and all(" 000 exit=" in p and "exit=0" not in p for p in probes), rep
        first_boot_id = rep.starting("boot-id")

        # The node joined (the report wrote /var/lib/kubelet/kubeconfig, as kubelet does after
        # its TLS bootstrap). The bootstrap token then expires: it is deleted from the backend,
        # and the password rotated. An OS-update reboot must still start kubelet.
        sm = moto.client("secretsmanager")
        sm.delete_secret(SecretId=f"{name}/token", ForceDeleteWithoutRecovery=True)
        sm.put_secret_value(SecretId=f"{name}/db", SecretString=json.dumps({"password": "boot-pw-2"}))
        rep2 = boot(image, tmp_path, None, fwd, "second", second_boot=True)
        assert rep2.starting("boot-id") != first_boot_id
        assert rep2.prop("bootsecrets", "Result") == "success", rep2
        assert rep2.prop("kubelet", "ActiveState") == "active", rep2
        saw = rep2.starting("saw")
        assert [e.split()[1:5] + e.split()[-1:] for e in saw if e.startswith("entry ")] == [
            ["d", "750", "root", "nogroup", "db"], ["f", "400", "root", "root", "db/password"]], rep2
        assert [line.split()[1] for line in saw if line.startswith("sha256 ")] == [sha("boot-pw-2")], rep2
        assert any(j.startswith("skipped kubelet/bootstrap-token: /var/lib/kubelet/kubeconfig exists")
                   for j in rep2.starting("journal-bootsecrets")), rep2
        assert rep2.starting("status-skipped") == ["kubelet/bootstrap-token"], rep2
    finally:
        imds.stop()


@pytest.mark.parametrize("suite", ["bookworm", "sid"])
def test_a_restart_of_the_unit_keeps_the_consumers_owners(images, suite, moto, binary_server, tmp_path):
    """`systemctl restart bootsecrets.service` on a running node, with `root_group` and a file
    owned by its consumer: what systemd does to the output root before bootsecrets runs (seen by
    an ExecStartPre= of the unit itself), after a run that succeeds, and after one that fails."""
    image = images(suite)
    port, sha512 = binary_server
    name = f"boot-{uuid.uuid4().hex[:8]}"
    seed(moto, name)
    imds = ImdsDouble(moto).start()
    try:
        cfg = ignition_config(tmp_path, name, sha512, restart_probe=True)
        fwd = [(BINARY_GUEST, port), (MOTO_GUEST, moto.port), (IMDS_GUEST, imds.port)]
        rep = boot(image, tmp_path, cfg, fwd, "restart")
        assert rep.prop("bootsecrets", "Result") == "success", rep
        before = rep.starting("restart-before")
        assert tree(before)[""] == ("drwxr-x---", "root:nogroup"), rep
        assert tree(before)["..v-*/kubelet/bootstrap-token"] == ("-r--r-----", "nobody:nogroup"), rep
        # What the unit's own ExecStartPre= saw, after systemd set up the unit and before
        # bootsecrets ran ("during"); after a run that succeeded; after one that failed (a secret
        # the backend does not have, exit 1), which publishes nothing; and once recovered. With
        # RuntimeDirectory= (measured on 252 and 262) the root was 0700 root:root "during" and
        # every file root:root, and after the failed run the token stayed root:root.
        for phase in ("restart-during", "restart-after", "failed-during", "failed-after", "recovered"):
            assert tree(rep.starting(phase)) == tree(before), (phase, rep)
        assert rep.starting("restart-exit") == ["0"], rep
        assert rep.starting("failed-restart-exit") != ["0"], rep
        assert rep.starting("restart-recovered-exit") == ["0"], rep
    finally:
        imds.stop()


@pytest.mark.parametrize("suite", ["bookworm", "sid"])
def test_missing_secret_keeps_kubelet_down(images, suite, moto, binary_server, tmp_path, tmp_path_factory):
    """Scenario 2: a first boot whose bootstrap token is missing (it is only skipped once the node
    has joined): bootsecrets fails, is not restarted (a permanent failure), kubelet never starts,
    nothing is written. Then the person on call: the host creates the secret, the guest runs
    `systemctl restart bootsecrets.service` (bootsecrets succeeds, kubelet stays down: its start
    job failed with the first run, and nothing starts it again) and `systemctl start
    kubelet.service`, which brings kubelet up with the secret."""
    image = images(suite)
    port, sha512 = binary_server
    name = f"boot-{uuid.uuid4().hex[:8]}"
    moto.client("secretsmanager").create_secret(  # no {name}/token
        Name=f"{name}/db", SecretString=json.dumps({"password": "p"}))
    fix = tmp_path_factory.mktemp("www-fix")
    fix_srv = serve(fix)

    def fixed():
        moto.client("secretsmanager").create_secret(Name=f"{name}/token", SecretString="fixed-token")
        (fix / "fixed").write_text("fixed\n")
    imds = ImdsDouble(moto).start()
    try:
        cfg = ignition_config(tmp_path, name, sha512, recovery="await-fix restart start")
        rep = boot(image, tmp_path, cfg, [(BINARY_GUEST, port), (MOTO_GUEST, moto.port), (IMDS_GUEST, imds.port),
                                          (FIX_GUEST, fix_srv.server_address[1])],
                   "fail", on_line=("await-fix", fixed))
    finally:
        imds.stop()
        fix_srv.shutdown()
    assert rep.starting("systemd-version") == [str(SYSTEMD[suite])], rep
    assert rep.prop("bootsecrets", "Result") == "exit-code", rep
    assert rep.prop("bootsecrets", "ExecMainStatus") == "1", rep
    # No restart loop on a permanent failure (RestartPreventExitStatus=1 2).
    assert rep.prop("bootsecrets", "NRestarts") == "0", rep
    assert not any(j.startswith("bootsecrets.service: Scheduled restart job") for j in rep.starting("journal")), rep
    assert [u.split()[0] for u in rep.starting("failed-unit")] == ["bootsecrets.service"], rep
    assert rep.prop("kubelet", "ActiveState") == "inactive", rep
    assert rep.prop("kubelet", "ExecMainStartTimestampMonotonic") == "0", rep
    assert any("Dependency failed for kubelet" in j for j in rep.starting("journal")), rep
    assert any("secret `kubelet/bootstrap-token`" in j and "not found" in j
               for j in rep.starting("journal-bootsecrets")), rep
    # Each failure is its own entry at err with its fields, and so is the summary.
    permanent = rep.starting("journal-permanent")
    assert len(permanent) == 1 and "not found" in permanent[0], rep
    assert rep.starting("journal-token") == permanent, rep
    # (systemd's own "Failed to start bootsecrets.service" is at err too, when journald has
    # ingested it by the time the report reads the journal: it is not the binary's.)
    assert [j for j in rep.starting("journal-err") if not j.startswith("Failed to start bootsecrets.service")] \
        == permanent + ["could not fetch secret `kubelet/bootstrap-token`; nothing was published"], rep
    assert [x for x in rep.starting("listing") if x.split()[0] == "f"] == [], rep
    assert rep.starting("status-outcome") == ["failed"], rep
    assert rep.starting("saw") == [], rep
    # The recovery by hand, as docs/guide/debugging.md and fleet.md describe it.
    assert "recovery-await timeout" not in rep.lines, rep
    assert rep.starting("recovery-restart-exit") == ["0"], rep
    assert rep.starting("recovery-restart") == ["bootsecrets active success", "kubelet inactive"], rep
    assert rep.starting("recovery-start-exit") == ["0"], rep
    assert rep.starting("recovery-start") == ["bootsecrets active success", "kubelet active"], rep
    assert f"sha256 {sha('fixed-token')}  /run/bootsecrets/kubelet/bootstrap-token" in rep.starting("recovery-saw"), rep


@pytest.mark.parametrize("suite", ["bookworm", "sid"])
def test_an_outage_longer_than_the_deadline_heals(images, suite, moto, binary_server, tmp_path):
    """Scenario 7: Secrets Manager is down for 40 s, twice the run's deadline (20 s). The first run
    ends with exit 3 (every failure transient); the unit's Restart= runs it again 15 s later, and
    that run succeeds. On systemd 262 (RestartMode=direct) kubelet's start job waited through the
    restart and kubelet starts with no one acting. On systemd 252, which ignores RestartMode=,
    bootsecrets heals the same way but kubelet's start job failed with the first run: kubelet
    stays down until `systemctl start kubelet.service`, which is what the docs say for < 254."""
    image = images(suite)
    port, sha512 = binary_server
    name = f"boot-{uuid.uuid4().hex[:8]}"
    seed(moto, name)
    imds = ImdsDouble(moto).start()
    proxy = LateProxy(moto.port, down_for=40.0).start()
    try:
        cfg = ignition_config(tmp_path, name, sha512, deadline=20,
                              recovery="start" if SYSTEMD[suite] < 254 else None)
        rep = boot(image, tmp_path, cfg, [(BINARY_GUEST, port), (MOTO_GUEST, proxy.port), (IMDS_GUEST, imds.port)],
                   "heal")
    finally:
        proxy.stop()
        imds.stop()
    assert proxy.refused >= 2 and proxy.forwarded >= 1, (proxy.refused, proxy.forwarded)
    assert rep.starting("systemd-version") == [str(SYSTEMD[suite])], rep
    journal = rep.starting("journal-bootsecrets")
    assert any("deadline of 20s exceeded" in j for j in journal), rep
    assert any(j.startswith("bootsecrets.service: Scheduled restart job") for j in rep.starting("journal")), rep
    assert int(rep.prop("bootsecrets", "NRestarts")) >= 1, rep
    assert rep.prop("bootsecrets", "ActiveState") == "active", rep
    assert rep.prop("bootsecrets", "Result") == "success", rep
    if SYSTEMD[suite] >= 254:
        assert rep.prop("kubelet", "ActiveState") == "active", rep
        assert not any("Dependency failed" in j for j in rep.starting("journal")), rep
        assert rep.starting("failed-unit") == [], rep
        done = int(rep.prop("bootsecrets", "ExecMainExitTimestampMonotonic"))
        started = int(rep.prop("kubelet", "ExecMainStartTimestampMonotonic"))
        assert 0 < done <= started, rep
        assert_secrets_seen(rep, "boot-token-1", "boot-pw-1")
    else:
        assert rep.prop("kubelet", "ActiveState") == "inactive", rep
        assert any("Dependency failed for kubelet" in j for j in rep.starting("journal")), rep
        assert rep.starting("saw") == [], rep
        assert rep.starting("recovery-start-exit") == ["0"], rep
        assert rep.starting("recovery-start") == ["bootsecrets active success", "kubelet active"], rep


def test_late_backend_is_waited_for(images, moto, binary_server, tmp_path):
    """Scenario 3: Secrets Manager drops connections for its first 25 s; bootsecrets retries within
    its deadline, then kubelet starts (systemd 252; on 262 the healing scenario covers it)."""
    image = images("bookworm")
    port, sha512 = binary_server
    name = f"boot-{uuid.uuid4().hex[:8]}"
    seed(moto, name)
    imds = ImdsDouble(moto).start()
    proxy = LateProxy(moto.port, down_for=25.0).start()
    try:
        cfg = ignition_config(tmp_path, name, sha512, deadline=120)
        rep = boot(image, tmp_path, cfg, [(BINARY_GUEST, port), (MOTO_GUEST, proxy.port), (IMDS_GUEST, imds.port)],
                   "late")
    finally:
        proxy.stop()
        imds.stop()
    assert proxy.refused >= 2 and proxy.forwarded >= 1, (proxy.refused, proxy.forwarded)
    assert rep.prop("bootsecrets", "Result") == "success", rep
    assert rep.prop("kubelet", "ActiveState") == "active", rep
    assert any("retrying" in j for j in rep.starting("journal-bootsecrets")), rep
    assert rep.prop("bootsecrets", "NRestarts") == "0", rep
    assert_secrets_seen(rep, "boot-token-1", "boot-pw-1")


@pytest.mark.parametrize("suite", ["bookworm", "sid"])
def test_sysext_first_boot(images, suite, moto, sysext_server, tmp_path):
    """Scenario 5: the release's systemd-sysext image, installed by `render --install sysext`
    (Fedora CoreOS's rendering, which enables systemd-sysext.service and loads the merged units):
    Ignition downloads it with sha512 verification into /opt/extensions and links it into
    /etc/extensions, systemd-sysext merges it into /usr, the rendered [Install] links enable the
    units it carries, and bootsecrets, run from /usr/bin, gates kubelet. On systemd 252 and 262."""
    image = images(suite)
    port, sha512 = sysext_server
    name = f"boot-{uuid.uuid4().hex[:8]}"
    seed(moto, name)
    imds = ImdsDouble(moto).start()
    try:
        cfg = ignition_config(tmp_path, name, sha512, sysext=True)
        rep = boot(image, tmp_path, cfg, [(BINARY_GUEST, port), (MOTO_GUEST, moto.port), (IMDS_GUEST, imds.port)],
                   "sysext")
    finally:
        imds.stop()
    assert rep.starting("systemd-version") == [str(SYSTEMD[suite])], rep
    # The image is merged (ID=_any and ARCHITECTURE=x86-64 accepted by systemd 252 and 262) ...
    assert rep.prop("sysext-unit", "Result") == "success", rep
    assert rep.prop("sysext-unit", "ActiveState") == "active", rep
    assert any(line.split()[:2] == ["/usr", "bootsecrets"] for line in rep.starting("sysext")), rep
    # ... the units are the image's, running the image's binary; nothing at /opt/bin.
    assert rep.starting("unit-path") == ["/usr/lib/systemd/system/bootsecrets.service"], rep
    assert "exec-path=/usr/bin/bootsecrets" in rep.lines, rep
    assert "opt-bin present" not in rep.lines, rep
    # The fail-closed gate holds: bootsecrets ran, and finished before kubelet started.
    assert rep.prop("bootsecrets", "Result") == "success", rep
    assert rep.prop("kubelet", "ActiveState") == "active", rep
    done = int(rep.prop("bootsecrets", "ExecMainExitTimestampMonotonic"))
    started = int(rep.prop("kubelet", "ExecMainStartTimestampMonotonic"))
    assert 0 < done <= started, rep
    assert_secrets_seen(rep, "boot-token-1", "boot-pw-1")
    assert any("done: 2 secret(s)" in j for j in rep.starting("journal-bootsecrets")), rep
    assert rep.starting("journal-err") == [], rep
    # The refresh timer, enabled by its link to the image's unit.
    assert rep.prop("timer", "UnitFileState") == "enabled", rep
    assert rep.prop("timer", "ActiveState") == "active", rep
    assert rep.starting("timer-path") == ["/usr/lib/systemd/system/bootsecrets-refresh.timer"], rep
    assert rep.starting("failed-unit") == [], rep


def test_sysext_image_the_node_refuses_keeps_kubelet_down(images, moto, tmp_path, tmp_path_factory):
    """Scenario 6: the same image rebuilt with ARCHITECTURE=arm64, which systemd-sysext refuses on
    this x86-64 node: nothing is merged, the links point at nothing, and kubelet, which requires
    bootsecrets.service, never starts (fail-closed)."""
    image = images("bookworm")
    assert SYSEXT_IMAGE.exists(), f"{SYSEXT_IMAGE} missing: run release/build.sh first"
    tree = tmp_path / "tree"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(SYSEXT_IMAGE)], check=True)
    release = tree / "usr/lib/extension-release.d/extension-release.bootsecrets"
    release.write_text(release.read_text().replace("ARCHITECTURE=x86-64", "ARCHITECTURE=arm64"))
    www = tmp_path_factory.mktemp("www-arm64")
    subprocess.run(["mksquashfs", str(tree), str(www / SYSEXT_NAME), "-quiet", "-all-root", "-no-xattrs"],
                   check=True, capture_output=True)
    srv = serve(www)
    name = f"boot-{uuid.uuid4().hex[:8]}"
    seed(moto, name)
    imds = ImdsDouble(moto).start()
    try:
        sha512 = hashlib.sha512((www / SYSEXT_NAME).read_bytes()).hexdigest()
        cfg = ignition_config(tmp_path, name, sha512, sysext=True)
        rep = boot(image, tmp_path, cfg, [(BINARY_GUEST, srv.server_address[1]), (MOTO_GUEST, moto.port),
                                          (IMDS_GUEST, imds.port)], "sysext-refused")
    finally:
        imds.stop()
        srv.shutdown()
    assert not any("bootsecrets" in line for line in rep.starting("sysext")), rep
    assert rep.starting("unit-path") == [""], rep  # bootsecrets.service does not exist
    assert rep.prop("bootsecrets", "ExecMainStartTimestampMonotonic") in (None, "0"), rep
    assert rep.prop("kubelet", "ActiveState") == "inactive", rep
    assert rep.prop("kubelet", "ExecMainStartTimestampMonotonic") == "0", rep
    assert rep.starting("saw") == [], rep
    # The sysext rendering's kubelet drop-in stopped it (a Requires= on the missing unit would not).
    assert any("Assertion failed" in j and "kubelet" in j for j in rep.starting("journal")), rep


def test_the_units_verify_silently_under_systemd_262(images):
    """systemd 262's own analysis (the sid image's systemd-analyze, run in its rootfs by chroot) of
    the shipped units and the kubelet drop-in: the keys systemd 254 added (the restart policy)
    are known there, so nothing at all may be printed; and the unit keeps its exposure score.
    The units are put in the rootfs's /etc/systemd/system for the check and removed after it (the
    image's disk was made from the rootfs before)."""
    rootfs = images("sid") / "rootfs"
    etc = rootfs / "etc/systemd/system"
    units = ["bootsecrets.service", "bootsecrets-refresh.service", "bootsecrets-refresh.timer"]
    placed = [etc / u for u in units] + [etc / "kubelet.service", etc / "kubelet.service.d", rootfs / "opt/bin"]
    assert not any(p.exists() for p in placed), placed
    try:
        for unit in units:
            shutil.copy(ROOT / "units" / unit, etc)
        (etc / "kubelet.service.d").mkdir()
        shutil.copy(ROOT / "units/kubelet.service.d/10-bootsecrets.conf", etc / "kubelet.service.d")
        (etc / "kubelet.service").write_text("[Unit]\nDescription=kubelet stand-in\n[Service]\nExecStart=/opt/bin/kubelet\n")
        (rootfs / "opt/bin").mkdir(parents=True)
        shutil.copy(STATIC_BIN, rootfs / "opt/bin/bootsecrets")
        shutil.copy(rootfs / "usr/bin/true", rootfs / "opt/bin/kubelet")

        def analyze(*args):
            return subprocess.run(["chroot", str(rootfs), "systemd-analyze", *args], capture_output=True, text=True)
        version = subprocess.run(["chroot", str(rootfs), "systemctl", "--version"], capture_output=True,
                                 text=True, check=True).stdout
        assert version.startswith("systemd 262"), version
        r = analyze("verify", *units, "kubelet.service")
        assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r
        r = analyze("security", "--offline=true", "--no-pager", "/etc/systemd/system/bootsecrets.service")
        m = re.search(r"Overall exposure level for bootsecrets.service: (\d+\.\d+)", r.stdout)
        assert m and float(m.group(1)) <= 2.0, r.stdout + r.stderr
        # The same check sees a key this systemd does not know.
        (etc / "bootsecrets.service").write_text((ROOT / "units/bootsecrets.service").read_text()
                                                 .replace("RestartSteps=", "RestartStep="))
        r = analyze("verify", "bootsecrets.service")
        assert "Unknown key 'RestartStep'" in r.stderr, r
    finally:
        for p in placed:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


def test_a_metadata_service_locked_by_systemd_imdsd(images, moto, binary_server, tmp_path):
    """Scenario 8, systemd 262 with systemd-imds: a guest that hwdb takes for EC2 (qemu -smbios
    type=0,vendor=Amazon EC2), so systemd-imds-generator pulls in systemd-imdsd, the early network
    with its prohibit route, and systemd-imds-import. The guest's network is 169.254.169.0/24 and
    the IMDSv2 double answers at the real 169.254.169.254; the kernel command line leaves
    systemd.imds.network=locked (the default is unlocked). The manifest names no imds_endpoint, as on EC2.
    The shipped unit (CAP_CHOWN only) meets the prohibit route, asks the real systemd-imdsd over
    Varlink, and the secrets are there before kubelet starts. Then doctor, as the person on call
    runs it, and the credstore layout beside the credentials systemd-imds-import wrote into
    /run/credstore (from the instance's hostname and user data)."""
    image = images("sid")
    port, sha512 = binary_server
    name = f"boot-{uuid.uuid4().hex[:8]}"
    seed(moto, name)
    hostname = "ip-10-0-0-10.ec2.internal"
    user_data = json.dumps({"systemd.credentials": [{"name": "imds.probe", "text": "from-the-user-data"}]})
    imds = ImdsDouble(moto, hostname=hostname, user_data=user_data).start()
    files = [
        ("/etc/bootsecrets/credstore.toml", credstore_manifest(name, LNET)),
        ("/etc/bootsecrets/credstore-clash.toml",
         credstore_manifest(name, LNET) + f'\n[[secret]]\npath = "imds.probe"\nref = "{name}/token"\n'),
    ]
    try:
        cfg = ignition_config(tmp_path, name, sha512, net=LNET, recovery="doctor credstore", files=files,
                              masked=LOCK_MASKED)
        rep = boot(image, tmp_path, cfg, [(LNET.binary, port), (LNET.moto, moto.port), ("169.254.169.254", imds.port)],
                   "locked", env={"GUEST_NET": LOCKED_NET, "SMBIOS": "type=0,vendor=Amazon EC2",
                                  "EXTRA_APPEND": LOCK_APPEND})
    finally:
        imds.stop()
    assert rep.starting("systemd-version") == ["262"], rep
    # The lock is real: hwdb's vendor, the prohibit route, the daemon's socket; curl is refused.
    assert rep.starting("imds-vendor") == ["amazon-ec2"], rep
    assert any(r.startswith("prohibit 169.254.169.254") for r in rep.starting("route-prohibit")), rep
    assert rep.prop("imdsd-socket", "ActiveState") == "active", rep
    assert "probe http://169.254.169.254/ 000 exit=7" in rep.lines, rep
    # Through the shipped unit, with no change to the manifest: the route refused bootsecrets,
    # which asked systemd-imdsd; the secrets were there before kubelet.
    assert rep.prop("bootsecrets", "Result") == "success", rep
    assert rep.prop("kubelet", "ActiveState") == "active", rep
    journal = rep.starting("journal-bootsecrets")
    assert any("the route is locked (systemd-imdsd); asking systemd-imdsd" in j for j in journal), rep
    assert any("done: 2 secret(s)" in j for j in journal), rep
    assert rep.starting("journal-err") == [], rep
    assert_secrets_seen(rep, "boot-token-1", "boot-pw-1")
    done = int(rep.prop("bootsecrets", "ExecMainExitTimestampMonotonic"))
    started = int(rep.prop("kubelet", "ExecMainStartTimestampMonotonic"))
    assert 0 < done <= started, rep
    # The double was asked by the daemon (IMDSv2: a token, then the role's credentials).
    paths = [(m, p) for m, p, _ in imds.requests]
    assert ("PUT", "/latest/api/token") in paths and ("GET", "/latest/meta-data/iam/security-credentials/node") in paths
    # doctor on the locked node.
    assert rep.starting("doctor-exit") == ["0"], rep
    route = [d for d in rep.starting("doctor") if "metadata route" in d]
    assert len(route) == 1 and route[0].startswith("ok") and "locked by a prohibit route" in route[0] \
        and "vendor amazon-ec2" in route[0], rep
    assert any(d.startswith("ok    identity `aws`") for d in rep.starting("doctor")), rep
    # systemd-imds-import wrote its credentials; bootsecrets' credstore run (under the shipped
    # unit's restrictions) added its own beside them and touched neither.
    before = rep.starting("credstore-before")
    assert {"firstboot.hostname", "imds.probe"} <= set(before), rep
    assert rep.starting("credstore-unit-exit") == ["0"], rep
    after = set(rep.starting("credstore-after"))
    assert set(before) | {"probe-token", "..data"} <= after, rep
    assert rep.starting("credstore-sum-after") == rep.starting("credstore-sum-before"), rep
    assert rep.starting("credstore-link") == ["..data/probe-token"], rep
    loaded = {line.split()[0]: line.split()[1] for line in rep.starting("credstore-loaded")}
    assert loaded["probe-token"] == sha("boot-token-1"), rep
    assert loaded["imds.probe"] == sha("from-the-user-data"), rep
    hostname_sum = [s.split()[0] for s in rep.starting("credstore-sum-before") if s.endswith("firstboot.hostname")]
    assert loaded["firstboot.hostname"] == hostname_sum[0], rep
    # A manifest naming one of them is refused, saying why, and the credential stays.
    assert rep.starting("credstore-clash-exit") == ["1"], rep
    assert any("/run/credstore/imds.probe exists and bootsecrets did not write it" in c
               for c in rep.starting("credstore-clash")), rep
    assert [s.split()[0] for s in rep.starting("credstore-sum-clash")] == \
        [s.split()[0] for s in rep.starting("credstore-sum-before") if s.endswith("imds.probe")], rep
    assert rep.starting("credstore-link-clash") == ["..data/probe-token"], rep


def test_a_gce_metadata_server_locked_by_systemd_imdsd(images, binary_server, tmp_path):
    """Scenario 9, the same lock on a guest hwdb takes for GCE (qemu -smbios type=1,product=Google
    Compute Engine): the GCE metadata double at 169.254.169.254, `metadata.google.internal` in the
    guest's /etc/hosts as on GCE images, the Secret Manager double beside it. The gcp backend's
    default metadata endpoint meets the prohibit route, asks the real systemd-imdsd for the
    service account's token, and the secrets are written before kubelet starts."""
    image = images("sid")
    port, sha512 = binary_server
    md = GceMetadataDouble().start()
    sm = SecretManagerDouble(md).start()
    sm.add_version("tok", b"gce-token-1")
    sm.add_version("db", json.dumps({"password": "gce-pw-1"}).encode())
    text = f"""# boot test manifest (GCP): references only
[settings]
root_group = "nogroup"
deadline_seconds = 90

[backend.gcp]
type = "gcp"
endpoint = "http://{LNET.moto}"
allow_http = true
project = "{md.project_id}"

[[secret]]
path = "kubelet/bootstrap-token"
ref = "tok"
mode = "0440"
owner = "nobody"
group = "nogroup"

[[secret]]
path = "db/password"
ref = "db"
json_key = "password"

# A file assembled from a secret, on the first boot: an environment file for a service.
[[template]]
path = "kubelet/bootstrap.env"
format = "env"
mode = "0440"
owner = "nobody"
group = "nogroup"
text = '''
TOKEN={{{{ secret "kubelet/bootstrap-token" }}}}
'''
"""
    files = [("/etc/hosts", "127.0.0.1 localhost\n127.0.1.1 bootsecrets-test\n"
                            "169.254.169.254 metadata.google.internal\n")]
    try:
        cfg = ignition_config(tmp_path, "gcp", sha512, net=LNET, recovery="doctor", files=files,
                              masked=LOCK_MASKED, manifest_text=text)
        rep = boot(image, tmp_path, cfg, [(LNET.binary, port), (LNET.moto, sm.port), ("169.254.169.254", md.port)],
                   "locked-gce", env={"GUEST_NET": LOCKED_NET, "SMBIOS": "type=1,product=Google Compute Engine",
                                      "EXTRA_APPEND": "systemd.imds.network=locked"})
    finally:
        sm.stop()
        md.stop()
    assert rep.starting("systemd-version") == ["262"], rep
    assert rep.starting("imds-vendor") == ["google-gcp"], rep
    assert any(r.startswith("prohibit 169.254.169.254") for r in rep.starting("route-prohibit")), rep
    assert "probe http://169.254.169.254/ 000 exit=7" in rep.lines, rep
    assert rep.prop("bootsecrets", "Result") == "success", rep
    assert rep.prop("kubelet", "ActiveState") == "active", rep
    assert any("the route is locked (systemd-imdsd); asking systemd-imdsd" in j
               for j in rep.starting("journal-bootsecrets")), rep
    assert rep.starting("journal-err") == [], rep
    # The template: written with its mode and owner before kubelet started, and read back
    # unchanged by systemd's EnvironmentFile= parser.
    assert_secrets_seen(rep, "gce-token-1", "gce-pw-1", extra={
        "kubelet/bootstrap.env": (["f", "440", "nobody", "nogroup"], sha('TOKEN="gce-token-1"\n'))})
    assert rep.starting("envfile-token") == [f"{sha('gce-token-1')}  -"], rep
    assert any(j.startswith("wrote kubelet/bootstrap.env (0440 nobody:nogroup")
               for j in rep.starting("journal-bootsecrets")), rep
    # Asked by the daemon: the token (with Metadata-Flavor, which the double requires).
    paths = [r.path for r in md.requests]
    assert any(p.startswith("/computeMetadata/v1/instance/service-accounts/") and p.endswith("/token")
               for p in paths), paths
    assert rep.starting("doctor-exit") == ["0"], rep
    route = [d for d in rep.starting("doctor") if "metadata route" in d]
    assert len(route) == 1 and route[0].startswith("ok") and "locked by a prohibit route" in route[0] \
        and "vendor google-gcp" in route[0], rep
