"""units/ and butane-snippets/: systemd's own analysis of the unit, Debian's Ignition validator on
the generated configs, and the Butane and Ignition renderings saying the same thing."""

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import BIN, ROOT, node_argv

UNIT = ROOT / "units" / "bootsecrets.service"
DROPIN = ROOT / "units" / "kubelet.service.d" / "10-bootsecrets.conf"
SHA = "ab" * 64


def test_unit_security_exposure_is_at_most_2_0():
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for bootsecrets.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout
    gate = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20", "--no-pager",
                           str(UNIT)], capture_output=True)
    assert gate.returncode == 0


def test_refresh_units_are_as_hardened_and_verify(tmp_path):
    unit = ROOT / "units" / "bootsecrets-refresh.service"
    timer = ROOT / "units" / "bootsecrets-refresh.timer"
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for bootsecrets-refresh.service: (\d+\.\d+)", r.stdout)
    assert m and float(m.group(1)) <= 2.0, r.stdout + r.stderr
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for f in (UNIT, unit, timer):
        shutil.copy(f, etc)
    (root / "opt/bin").mkdir(parents=True)
    shutil.copy(BIN, root / "opt/bin/bootsecrets")
    r = subprocess.run(["systemd-analyze", "verify", f"--root={root}", unit.name, timer.name],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r
    text = unit.read_text()
    assert "RemainAfterExit" not in text and "Before=kubelet" not in text
    assert "RuntimeDirectory=" not in text, "the boot unit owns the output directories"


def test_unit_and_dropin_verify_silently(tmp_path):
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    etc = root / "etc/systemd/system"
    (etc / "kubelet.service.d").mkdir(parents=True)
    shutil.copy(UNIT, etc)
    shutil.copy(DROPIN, etc / "kubelet.service.d")
    (etc / "kubelet.service").write_text("[Unit]\nDescription=kubelet stand-in\n[Service]\nExecStart=/opt/bin/kubelet\n")
    (root / "opt/bin").mkdir(parents=True)
    shutil.copy(BIN, root / "opt/bin/bootsecrets")
    shutil.copy("/bin/true", root / "opt/bin/kubelet")
    r = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "bootsecrets.service", "kubelet.service"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r  # warnings count as failures


def test_unit_timeout_is_above_the_binary_deadline(tmp_path):
    m = tmp_path / "m.toml"
    m.write_text('[backend.a]\ntype = "aws"\nregion = "us-east-1"\n[[secret]]\npath = "x"\nref = "x"\n')
    plan = subprocess.run(node_argv([str(BIN), "check", "--manifest", str(m)]), capture_output=True,
                          text=True)
    deadline = int(re.search(r"deadline\s+(\d+) s", plan.stdout).group(1))
    timeout = int(re.search(r"^TimeoutStartSec=(\d+)$", UNIT.read_text(), re.M).group(1))
    assert timeout >= deadline + 30, (timeout, deadline)
    text = UNIT.read_text()
    for needed in ("Type=oneshot", "RemainAfterExit=yes", "Wants=network-online.target",
                   "After=network-online.target", "Before=kubelet.service", "RequiredBy=kubelet.service"):
        assert re.search(rf"^{re.escape(needed)}$", text, re.M), needed
    assert "ProcSubset=pid" not in text.replace("Not ProcSubset=pid", "")


def render(fmt, variant, *extra):
    r = subprocess.run([str(BIN), "render", fmt, "--variant", variant, "--binary-url",
                        "http://10.0.2.100/bootsecrets", "--binary-sha512", SHA,
                        "--manifest", str(ROOT / "examples" / "manifest.toml"), *extra],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def butane_to_ignition(bu):
    """The subset of Butane's translation our snippets use (files with source/inline + hash,
    units with contents/enabled/dropins), as Butane does it, to compare with `render ignition`."""
    files = []
    for f in bu["storage"]["files"]:
        c = f["contents"]
        src = c.get("source") or "data:;base64," + base64.b64encode(c["inline"].encode()).decode()
        res = {"source": src}
        if "verification" in c:
            res["verification"] = c["verification"]
        files.append({"path": f["path"], "mode": f["mode"], "contents": res})
    return {"files": files, "units": bu["systemd"]["units"]}


@pytest.mark.parametrize("variant,version", [("flatcar", "1.0.0"), ("fcos", "1.4.0")])
@pytest.mark.parametrize("dropin", [False, True])
def test_butane_and_ignition_renderings_agree_and_validate(tmp_path, variant, version, dropin):
    extra = ["--kubelet-dropin"] if dropin else []
    bu = yaml.safe_load(render("butane", variant, *extra))
    ign_text = render("ignition", variant, *extra)
    ign = json.loads(ign_text)
    assert (bu["variant"], bu["version"]) == (variant, version)
    assert ign["ignition"]["version"] == "3.3.0"
    want = butane_to_ignition(bu)
    got_files = [{"path": f["path"], "mode": f["mode"],
                  "contents": {k: v for k, v in f["contents"].items() if k in ("source", "verification")}}
                 for f in ign["storage"]["files"]]
    assert got_files == want["files"]
    assert ign["systemd"]["units"] == want["units"]
    assert ign["systemd"]["units"][0]["contents"] == UNIT.read_text()
    assert (len(ign["systemd"]["units"]) == 2) == dropin
    path = tmp_path / "c.ign"
    path.write_text(ign_text)
    r = subprocess.run(["ignition-validate", str(path)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", r


@pytest.mark.parametrize("variant", ["flatcar", "fcos"])
def test_checked_in_snippets_validate(variant):
    r = subprocess.run(["ignition-validate", str(ROOT / "butane-snippets" / variant / "bootsecrets.ign")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", r
    worker = yaml.safe_load((ROOT / "butane-snippets" / variant / "worker.bu").read_text())
    assert worker["variant"] == variant
    assert {"local": "bootsecrets.ign"} in worker["ignition"]["config"]["merge"]


def test_ignition_validate_rejects_a_broken_config(tmp_path):
    """The validator is not a rubber stamp: a bad hash format is refused."""
    bad = json.loads(render("ignition", "flatcar"))
    bad["storage"]["files"][0]["contents"]["verification"]["hash"] = "sha512-nothex"
    p = tmp_path / "bad.ign"
    p.write_text(json.dumps(bad))
    assert subprocess.run(["ignition-validate", str(p)], capture_output=True).returncode != 0
