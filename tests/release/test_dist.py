"""What release/build.sh produced (BOOTSECRETS_DIST, else dist/VERSION): every artifact present
and checksummed, the binary static and naming its commit, the sysext image's files, owners,
modes, times and metadata, its units those `bootsecrets units --install sysext` writes and
accepted by systemd-analyze, the SBOM and licences matching the binary's version. Run after
release/build.sh (tests/run does); a missing dist fails."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from support.systemd import add_unit_commands, verify_stderr  # noqa: E402
VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
DIST = Path(os.environ.get("BOOTSECRETS_DIST", ROOT / "dist" / VERSION))
BIN = f"bootsecrets-{VERSION}-x86_64-linux"
RAW = f"bootsecrets-{VERSION}-x86-64.raw"
ARTIFACTS = [BIN, RAW, f"{BIN}.cdx.json", "THIRD-PARTY-LICENSES.txt", "LICENSE", "bootsecrets.1",
             f"bootsecrets-{VERSION}-completions.tar.gz"]


def sums(name):
    return {line.split()[1]: line.split()[0] for line in (DIST / name).read_text().splitlines()}


def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def test_every_artifact_is_there_and_checksummed():
    assert DIST.is_dir(), f"{DIST} missing: run release/build.sh first"
    for name, algo in (("SHA256SUMS", hashlib.sha256), ("SHA512SUMS", hashlib.sha512)):
        s = sums(name)
        assert sorted(s) == sorted(ARTIFACTS), s
        for f, h in s.items():
            assert algo((DIST / f).read_bytes()).hexdigest() == h, (name, f)
    assert (DIST / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()
    assert "Apache License" in (ROOT / "LICENSE").read_text()


def commit_of_dist():
    return json.loads((DIST / f"{BIN}.cdx.json").read_text())["metadata"]["component"]["properties"][0]["value"]


def test_the_binary_is_static_and_says_what_it_is():
    b = DIST / BIN
    assert os.access(b, os.X_OK)
    assert b.read_bytes()[:4] == b"\x7fELF"
    # No dynamic loader and no shared library: no PT_INTERP, no DT_NEEDED (static-pie or static).
    r = subprocess.run(["readelf", "-l", "-d", str(b)], capture_output=True, text=True, check=True)
    assert "LOAD" in r.stdout and "INTERP" not in r.stdout and "NEEDED" not in r.stdout, r.stdout
    v = subprocess.run([str(b), "--version"], capture_output=True, text=True, check=True).stdout
    commit = commit_of_dist()
    assert v.splitlines() == [f"bootsecrets {VERSION}", f"commit: {commit}",
                              "backends: aws vault azure gcp", "target: x86_64-unknown-linux-gnu"], v
    # The build's paths are not in it: the checkout and cargo's registry were remapped.
    data = b.read_bytes()
    for path in {str(ROOT), os.path.realpath(ROOT), str(Path.home() / ".cargo")}:
        assert path.encode() not in data, path
    assert b"/cargo/registry/src/" in data  # dependencies' panic locations, remapped


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    d = tmp_path_factory.mktemp("sysext") / "root"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(d), str(DIST / RAW)], check=True)
    listing = subprocess.run(["unsquashfs", "-lln", "-n", str(DIST / RAW)], capture_output=True,
                             text=True, check=True).stdout
    return d, listing


def test_the_sysext_image_holds_the_binary_the_units_and_its_metadata(image, tmp_path):
    root, listing = image
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())
    assert files == [
        "usr/bin/bootsecrets",
        "usr/lib/extension-release.d/extension-release.bootsecrets",
        "usr/lib/systemd/system/bootsecrets-refresh.service",
        "usr/lib/systemd/system/bootsecrets-refresh.timer",
        "usr/lib/systemd/system/bootsecrets.service",
        "usr/share/bash-completion/completions/bootsecrets",
        "usr/share/fish/vendor_completions.d/bootsecrets.fish",
        "usr/share/licenses/bootsecrets/LICENSE",
        "usr/share/licenses/bootsecrets/THIRD-PARTY-LICENSES.txt",
        "usr/share/man/man1/bootsecrets.1",
        "usr/share/zsh/site-functions/_bootsecrets",
    ], files
    # The manual page and the completions are the binary's own (and the page is in dist/ too).
    assert (root / "usr/share/man/man1/bootsecrets.1").read_bytes() == (DIST / "bootsecrets.1").read_bytes()
    page = (root / "usr/share/man/man1/bootsecrets.1").read_text()
    assert ".TH bootsecrets 1" in page and "bootsecrets doctor" in page.replace("\\-", "-")
    assert "complete" in (root / "usr/share/bash-completion/completions/bootsecrets").read_text()
    assert (root / "usr/bin/bootsecrets").read_bytes() == (DIST / BIN).read_bytes()
    assert (root / "usr/lib/extension-release.d/extension-release.bootsecrets").read_text() == \
        "ID=_any\nARCHITECTURE=x86-64\nEXTENSION_RELOAD_MANAGER=1\n"
    # Owners root, fixed modes, every time the commit's.
    epoch = int(git("log", "-1", "--format=%ct", commit_of_dist().removesuffix("-dirty")))
    stamp = subprocess.run(["date", "-u", "-d", f"@{epoch}", "+%Y-%m-%d %H:%M"], capture_output=True,
                           text=True, check=True).stdout.strip()
    entries = [line for line in listing.splitlines() if line.startswith(("d", "-", "l"))]
    dirs = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()}
    assert len(entries) == len(files) + len(dirs) + 1, listing  # the files, their directories, /
    for line in entries:
        mode, owner = line.split()[:2]
        assert owner == "0/0", line
        assert stamp in line, (stamp, line)
        name = line.split()[-1]
        want = {"usr/bin/bootsecrets": "-rwxr-xr-x"}.get(name.removeprefix("squashfs-root/"),
                                                        "drwxr-xr-x" if mode[0] == "d" else "-rw-r--r--")
        assert mode == want, line
    # The units are the ones `bootsecrets units --install sysext` writes, from units/.
    host_bin = Path(os.environ.get("BOOTSECRETS_BIN", ROOT / "target" / "debug" / "bootsecrets"))
    (tmp_path / "u").mkdir()
    subprocess.run([str(host_bin), "units", "--install", "sysext", "--output-dir", str(tmp_path / "u")],
                   check=True)
    for unit in ("bootsecrets.service", "bootsecrets-refresh.service", "bootsecrets-refresh.timer"):
        text = (root / "usr/lib/systemd/system" / unit).read_text()
        assert text == (tmp_path / "u" / unit).read_text(), unit
        assert text.replace("/usr/bin/bootsecrets", "/opt/bin/bootsecrets") == \
            (ROOT / "units" / unit).read_text(), unit
    assert re.search(r"^ExecStart=/usr/bin/bootsecrets$", (root / "usr/lib/systemd/system/bootsecrets.service")
                     .read_text(), re.M)


def test_systemd_accepts_the_merged_units(image, tmp_path):
    """The units as systemd sees them once the image is merged into /usr: no error, no warning."""
    root, _ = image
    merged = tmp_path / "merged"
    (merged / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", merged / "usr/lib/systemd/system", symlinks=True)
    shutil.copytree(root / "usr", merged / "usr", dirs_exist_ok=True)
    (merged / "etc/systemd/system").mkdir(parents=True)
    add_unit_commands(merged)
    r = subprocess.run(["systemd-analyze", "verify", f"--root={merged}", "bootsecrets.service",
                        "bootsecrets-refresh.service", "bootsecrets-refresh.timer"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "" and verify_stderr(r.stderr) == "", r


def test_the_sbom_and_the_licences_describe_this_release():
    bom = json.loads((DIST / f"{BIN}.cdx.json").read_text())
    own = bom["metadata"]["component"]
    assert (own["name"], own["version"]) == ("bootsecrets", VERSION)
    assert {"name": "cargo:target", "value": "x86_64-unknown-linux-gnu"} in own["properties"]
    assert len(bom["components"]) > 100
    text = (DIST / "THIRD-PARTY-LICENSES.txt").read_text()
    assert text.startswith(f"Third-party software in bootsecrets {VERSION} (commit {commit_of_dist()}")
    for c in bom["components"]:
        assert f"\n{c['name']} {c['version']}\nlicence: " in text, c["name"]
