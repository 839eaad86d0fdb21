"""units/ and butane-snippets/: systemd's own analysis of the unit, Debian's Ignition validator on
the generated configs, and the Butane and Ignition renderings saying the same thing."""

import base64
import gzip
import json
import os
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import yaml

from conftest import BIN, ROOT, node_argv
from support.systemd import add_unit_commands, verify_stderr

UNIT = ROOT / "units" / "bootsecrets.service"
DROPIN = ROOT / "units" / "kubelet.service.d" / "10-bootsecrets.conf"
SHA = "ab" * 64
MANIFEST_PATH = "/etc/bootsecrets/manifest.toml"
# The real Butane compiler: BUTANE, else the shared test tools' copy; without it the Butane tests
# skip, saying so.
BUTANE = Path(os.environ.get("BUTANE", ROOT.parent / "shared" / "tools" / "butane"))


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
    add_unit_commands(root)
    r = subprocess.run(["systemd-analyze", "verify", f"--root={root}", unit.name, timer.name],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "" and verify_stderr(r.stderr) == "", r
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
    add_unit_commands(root)
    shutil.copy("/bin/true", root / "opt/bin/kubelet")
    r = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "bootsecrets.service", "kubelet.service"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "" and verify_stderr(r.stderr) == "", r  # warnings count as failures


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


def render(fmt, variant, *extra, manifest=ROOT / "examples" / "manifest.toml"):
    r = subprocess.run([str(BIN), "render", fmt, "--variant", variant, "--binary-url",
                        "http://10.0.2.100/bootsecrets", "--binary-sha512", SHA,
                        "--manifest", str(manifest), *extra],
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


def assert_renderings_agree(bu, ign):
    want = butane_to_ignition(bu)
    got_files = [{"path": f["path"], "mode": f["mode"],
                  "contents": {k: v for k, v in f["contents"].items() if k in ("source", "verification")}}
                 for f in ign["storage"]["files"]]
    assert got_files == want["files"]
    assert ign["systemd"]["units"] == want["units"]


@pytest.mark.parametrize("variant,version", [("flatcar", "1.0.0"), ("fcos", "1.4.0")])
@pytest.mark.parametrize("dropin", [False, True])
def test_butane_and_ignition_renderings_agree_and_validate(tmp_path, variant, version, dropin):
    extra = ["--kubelet-dropin"] if dropin else []
    bu = yaml.safe_load(render("butane", variant, *extra))
    ign_text = render("ignition", variant, *extra)
    ign = json.loads(ign_text)
    assert (bu["variant"], bu["version"]) == (variant, version)
    assert ign["ignition"]["version"] == "3.3.0"
    assert_renderings_agree(bu, ign)
    assert ign["systemd"]["units"][0]["contents"] == UNIT.read_text()
    assert (len(ign["systemd"]["units"]) == 2) == dropin
    path = tmp_path / "c.ign"
    path.write_text(ign_text)
    r = subprocess.run(["ignition-validate", str(path)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", r


@pytest.mark.parametrize("variant", ["flatcar", "fcos"])
def test_checked_in_snippets_validate(variant):
    names = ["bootsecrets.ign"] + (["bootsecrets-sysext.ign"] if variant == "flatcar" else [])
    for name in names:
        r = subprocess.run(["ignition-validate", str(ROOT / "butane-snippets" / variant / name)],
                           capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", (name, r)
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


def butane_compile(tmp_path, bu_text):
    """The real Butane's Ignition for `bu_text`, or a skip that names the missing compiler."""
    if not (BUTANE.is_file() and os.access(BUTANE, os.X_OK)):
        pytest.skip(f"butane not found at {BUTANE} (set BUTANE to the Butane compiler): the real "
                    "Butane compile was NOT checked")
    files = tmp_path / "butane-files"
    files.mkdir(exist_ok=True)
    src = tmp_path / "config.bu"
    src.write_text(bu_text)
    r = subprocess.run([str(BUTANE), "--strict", "--files-dir", str(files), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r
    return json.loads(r.stdout)


def file_bytes(contents):
    """The bytes an Ignition file entry's `contents` (a data URL, maybe gzip'ed) writes."""
    src = contents["source"]
    assert src.startswith("data:"), src
    meta, _, data = src[len("data:"):].partition(",")
    raw = base64.b64decode(data, validate=True) if meta.endswith(";base64") else urllib.parse.unquote_to_bytes(data)
    compression = contents.get("compression")
    if compression == "gzip":
        return gzip.decompress(raw)
    assert compression in (None, ""), compression
    return raw


def manifest_entry(files):
    [entry] = [f for f in files if f["path"] == MANIFEST_PATH]
    return entry


# Manifests that TOML accepts but that a YAML literal block (`inline: |`) written line by line
# does not carry unchanged: indentation, YAML 1.1 line breaks (U+0085, U+2028, U+2029), CRLF,
# whitespace-only lines, the final newline(s), characters YAML does not allow raw.
TRICKY_MANIFESTS = {
    "indented first line": "  [settings]\n  deadline_seconds = 60\n",
    "tab-indented first line": "\t[settings]\n\tdeadline_seconds = 60\n",
    "tab-indented later line": "[settings]\n\tdeadline_seconds = 60\n",
    "empty first lines": "\n\n[settings]\n  deadline_seconds = 60\n",
    "indented after an empty first line": "\n    [settings]\n    deadline_seconds = 60\n",
    "whitespace-only first line": "   \n[settings]\n",
    "whitespace-only line inside": "[settings]\n  \t \ndeadline_seconds = 60\n",
    "trailing blanks": "[settings]   \ndeadline_seconds = 60 \t\n",
    "CRLF": "# written on Windows\r\n[settings]\r\ndeadline_seconds = 60\r\n",
    "CRLF, indented, quotes and backslashes":
        '  [[secret]]\r\n  path = "a"\r\n  ref = "q\\"uote\\\\back"  \r\n',
    "no final newline": "[settings]\ndeadline_seconds = 60",
    "two final newlines": "[settings]\n\n",
    "many final newlines": "[settings]\n\n\n\n",
    "only newlines": "\n\n",
    "empty": "",
    "U+2028 in a comment": "# line\u2028separator\n[settings]\n",
    "U+2029 in a string": '[[secret]]\npath = "a"\nref = "para\u2029graph"\n',
    "U+0085 in a comment": "# next\u0085line\n[settings]\n",
    "U+0085 before a newline": "# next line\u0085\n[settings]\n",
    "C1 control in a string": '[[secret]]\npath = "a"\nref = "csi\u009b"\n',
    "U+FEFF in a comment": "# zero\ufeffwidth\n[settings]\n",
    "byte order mark": "\ufeff[settings]\n",
    "U+FFFE in a comment": "# not\ufffea character\n[settings]\n",
    "non-ASCII, safe for a literal block": "# café, 日本, \U0001f511\n[settings]\n",
    "non-ASCII with CRLF": "# café, 日本, \U0001f511\r\n[settings]\r\n",
    "YAML-looking lines": '# ---\n# ...\n# - key: |\n# "x": &a *a\n[settings]\n',
    "tabs inside lines": "[settings]\ndeadline_seconds\t=\t60\n#\tend\n",
}


def with_a_backend(text):
    """`text` made a manifest `render` accepts (it validates as `check --offline`): a backend and
    a secret inserted before its first table, with that line's indentation and the text's line
    endings, so its beginning and its end stay exactly as they were. None for a text without a
    table (refused by render)."""
    nl = "\r\n" if "\r\n" in text else "\n"
    pos = 0
    for line in text.splitlines(keepends=True):
        bare = line.lstrip("\ufeff")
        indent = bare[:len(bare) - len(bare.lstrip(" \t"))]
        if bare.lstrip(" \t").startswith("["):
            at = pos + (len(line) - len(bare)) + len(indent)
            body = "".join(f"{l}{nl}{indent}" for l in
                           ['[backend.a]', 'type = "aws"', '[[secret]]', 'path = "zz"', 'ref = "zz"'])
            return text[:at] + body + text[at:]
        pos += len(line)
    return None


@pytest.fixture(params=sorted(k for k in TRICKY_MANIFESTS if with_a_backend(TRICKY_MANIFESTS[k])),
                ids=lambda k: k.replace(" ", "-"))
def tricky_manifest(request, tmp_path):
    data = with_a_backend(TRICKY_MANIFESTS[request.param]).encode()
    path = tmp_path / "manifest.toml"
    path.write_bytes(data)
    return path, data


def test_a_manifest_render_would_refuse_is_not_rendered(tmp_path):
    for text in (t for t in TRICKY_MANIFESTS.values() if with_a_backend(t) is None):
        m = tmp_path / "m.toml"
        m.write_text(text)
        r = subprocess.run([str(BIN), "render", "butane", "--variant", "flatcar", "--binary-url",
                            "https://x/b", "--binary-sha512", SHA, "--manifest", str(m)],
                           capture_output=True, text=True)
        assert r.returncode == 2 and "no backend is configured" in r.stderr, (text, r)


@pytest.mark.parametrize("variant", ["flatcar", "fcos"])
def test_the_embedded_manifest_round_trips_through_yaml_and_ignition(tmp_path, tricky_manifest, variant):
    path, data = tricky_manifest
    bu_text = render("butane", variant, manifest=path)
    # Nothing a YAML parser could take for a line break or refuse: tab, \n, printable characters.
    odd = {c for c in bu_text
           if not (c in "\t\n" or " " <= c <= "~" or (c >= "\xa0" and c not in "\u2028\u2029\ufeff\ufffe\uffff"))}
    assert not odd, f"the Butane text holds raw {sorted(map(hex, map(ord, odd)))}"
    bu = yaml.safe_load(bu_text)
    inline = manifest_entry(bu["storage"]["files"])["contents"]["inline"]
    assert inline.encode() == data
    ign_text = render("ignition", variant, manifest=path)
    assert file_bytes(manifest_entry(json.loads(ign_text)["storage"]["files"])["contents"]) == data
    p = tmp_path / "c.ign"
    p.write_text(ign_text)
    r = subprocess.run(["ignition-validate", str(p)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", r


@pytest.mark.parametrize("variant", ["flatcar", "fcos"])
def test_the_embedded_manifest_round_trips_through_butane(tmp_path, tricky_manifest, variant):
    path, data = tricky_manifest
    ign = butane_compile(tmp_path, render("butane", variant, manifest=path))
    assert file_bytes(manifest_entry(ign["storage"]["files"])["contents"]) == data
    ours = json.loads(render("ignition", variant, manifest=path))
    assert ign["systemd"] == ours["systemd"]
    assert [f["path"] for f in ign["storage"]["files"]] == [f["path"] for f in ours["storage"]["files"]]


# settings.output_root (or the layout's default) -> the directives of the drop-in each unit needs
# (None: the shipped units already write there).
OUTPUT_ROOTS = {
    "default": ("", None, None),
    "credstore layout": ('layout = "credstore"\n', None, None),
    "shipped, written out": ('output_root = "/run/credstore/"\n', None, None),
    "under /run": ('output_root = "/run/k8s/secrets"\n',
                   ["[Service]", "ExecStartPre=+/usr/bin/mkdir -p -m 0700 /run/k8s/secrets", "ReadWritePaths=-/run/k8s/secrets"],
                   ["[Service]", "ReadWritePaths=-/run/k8s/secrets"]),
    "credstore under /run": ('layout = "credstore"\noutput_root = "/run/creds"\n',
                             ["[Service]", "ExecStartPre=+/usr/bin/mkdir -p -m 0700 /run/creds", "ReadWritePaths=-/run/creds"],
                             ["[Service]", "ReadWritePaths=-/run/creds"]),
    "outside /run": ('output_root = "/srv/bootsecrets"\n',
                     ["[Unit]", "RequiresMountsFor=/srv/bootsecrets", "[Service]", "ReadWritePaths=/srv/bootsecrets"],
                     ["[Unit]", "RequiresMountsFor=/srv/bootsecrets", "[Service]", "ReadWritePaths=/srv/bootsecrets"]),
}
ROOT_DROPIN = "10-output-root.conf"


@pytest.fixture(params=sorted(OUTPUT_ROOTS), ids=lambda k: k.replace(" ", "-").replace(",", ""))
def output_root(request, tmp_path):
    settings, boot, refresh = OUTPUT_ROOTS[request.param]
    path = tmp_path / "manifest.toml"
    path.write_text(f'[settings]\n{settings}[backend.aws]\ntype = "aws"\n[[secret]]\npath = "token"\nref = "x"\n')
    return path, {"bootsecrets.service": boot, "bootsecrets-refresh.service": refresh}


def directives(text):
    return [l for l in text.splitlines() if l and not l.startswith("#")]


def install_units(root, ign):
    """Writes the Ignition config's units and drop-ins under ROOT/etc/systemd/system, as Ignition does."""
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for unit in ign["systemd"]["units"]:
        if "contents" in unit:
            (etc / unit["name"]).write_text(unit["contents"])
        for d in unit.get("dropins", []):
            (etc / f"{unit['name']}.d").mkdir(exist_ok=True)
            (etc / f"{unit['name']}.d" / d["name"]).write_text(d["contents"])
    (root / "opt/bin").mkdir(parents=True)
    shutil.copy(BIN, root / "opt/bin/bootsecrets")
    add_unit_commands(root)
    return etc


@pytest.mark.parametrize("variant", ["flatcar", "fcos"])
@pytest.mark.parametrize("refresh", [False, True], ids=["boot", "refresh"])
def test_output_root_dropins_agree_verify_and_validate(tmp_path, output_root, variant, refresh):
    manifest, want = output_root
    extra = ["--refresh"] if refresh else []
    bu = yaml.safe_load(render("butane", variant, *extra, manifest=manifest))
    ign_text = render("ignition", variant, *extra, manifest=manifest)
    ign = json.loads(ign_text)
    assert_renderings_agree(bu, ign)
    units = {u["name"]: u for u in ign["systemd"]["units"]}
    assert set(units) == ({"bootsecrets.service", "bootsecrets-refresh.service", "bootsecrets-refresh.timer"}
                          if refresh else {"bootsecrets.service"})
    for name, unit in units.items():
        expected = want.get(name)
        if expected is None:
            assert "dropins" not in unit, unit
        else:
            [d] = unit["dropins"]
            assert d["name"] == ROOT_DROPIN
            assert directives(d["contents"]) == expected, d["contents"]
        assert unit["contents"] == (ROOT / "units" / name).read_text()

    p = tmp_path / "c.ign"
    p.write_text(ign_text)
    r = subprocess.run(["ignition-validate", str(p)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", r

    root = tmp_path / "root"
    etc = install_units(root, ign)
    r = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "" and verify_stderr(r.stderr) == "", r  # warnings count as failures
    for name in units:
        if name.endswith(".service"):
            r = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}", "--no-pager",
                                name], capture_output=True, text=True)
            m = re.search(rf"Overall exposure level for {re.escape(name)}: (\d+\.\d+)", r.stdout)
            assert m and float(m.group(1)) <= 2.0, r.stdout + r.stderr
    # verify read the drop-ins: a bad line in one is reported.
    for name in units:
        if want.get(name):
            dropin = etc / f"{name}.d" / ROOT_DROPIN
            dropin.write_text(dropin.read_text() + "NotADirective=1\n")
            r = subprocess.run(["systemd-analyze", "verify", f"--root={root}", name], capture_output=True, text=True)
            assert f"{ROOT_DROPIN}:" in r.stderr and "NotADirective" in r.stderr, r


@pytest.mark.parametrize("variant", ["flatcar", "fcos"])
@pytest.mark.parametrize("extra", [[], ["--refresh", "--kubelet-dropin"]], ids=["boot", "refresh-kubelet"])
def test_butane_compiles_the_snippet_to_the_ignition_rendering(tmp_path, output_root, variant, extra):
    manifest, _ = output_root
    bu_text = render("butane", variant, *extra, manifest=manifest)
    check_butane_agrees(tmp_path, bu_text, variant, extra, manifest)


@pytest.mark.parametrize("url", ["s3://artifacts/bootsecrets/v1/bootsecrets", "gs://artifacts/bootsecrets",
                                 "https://acct.blob.core.windows.net/bin/bootsecrets",
                                 "tftp://10.0.0.1/bootsecrets", "arn:aws:s3:::artifacts/bootsecrets"])
@pytest.mark.parametrize("variant", ["flatcar", "fcos"])
def test_every_binary_url_scheme_ignition_fetches_renders(tmp_path, url, variant):
    """s3://, gs://, arn: and Azure Blob https:// are fetched by Ignition with the instance's own
    identity; the sha512 is checked whatever the scheme. arn: needs spec 3.4.0."""
    out = {}
    for fmt in ("butane", "ignition"):
        r = subprocess.run([str(BIN), "render", fmt, "--variant", variant, "--binary-url", url,
                            "--binary-sha512", SHA, "--manifest", str(ROOT / "examples" / "manifest.toml")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r
        out[fmt] = r.stdout
    ign = json.loads(out["ignition"])
    [binary] = [f for f in ign["storage"]["files"] if f["path"] == "/opt/bin/bootsecrets"]
    assert binary["contents"] == {"source": url, "verification": {"hash": f"sha512-{SHA}"}}, binary
    want = "3.4.0" if url.startswith("arn:") else "3.3.0"
    assert ign["ignition"]["version"] == want
    if want == "3.3.0":
        p = tmp_path / "c.ign"
        p.write_text(out["ignition"])
        r = subprocess.run(["ignition-validate", str(p)], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", r
    # (Debian's ignition-validate knows specs up to 3.3.0; the real Butane judges 3.4.0.)
    ours = json.loads(out["ignition"])
    compiled = butane_compile(tmp_path, out["butane"])
    assert compiled["ignition"]["version"] == want
    assert compiled["storage"]["files"][0]["contents"] == ours["storage"]["files"][0]["contents"]
    assert compiled["systemd"] == ours["systemd"]


@pytest.mark.parametrize("url", ["s3://bucket-only", "ftp://host/bootsecrets", "arn:aws:iam::123456789012:role/x",
                                 "file:///opt/bin/bootsecrets"])
def test_a_binary_url_ignition_cannot_fetch_is_refused(url):
    r = subprocess.run([str(BIN), "render", "ignition", "--variant", "flatcar", "--binary-url", url,
                        "--binary-sha512", SHA, "--manifest", str(ROOT / "examples" / "manifest.toml")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--binary-url" in r.stderr and r.stdout == "", r


def check_butane_agrees(tmp_path, bu_text, variant, extra, manifest):
    ign = butane_compile(tmp_path, bu_text)
    ours = json.loads(render("ignition", variant, *extra, manifest=manifest))
    assert ign["ignition"]["version"] == ours["ignition"]["version"]
    assert ign["systemd"] == ours["systemd"]
    files, our_files = ign["storage"]["files"], ours["storage"]["files"]
    assert [(f["path"], f["mode"]) for f in files] == [(f["path"], f["mode"]) for f in our_files]
    assert files[0]["contents"] == our_files[0]["contents"]  # the binary: URL and hash
    assert file_bytes(manifest_entry(files)["contents"]) == manifest.read_bytes()
    assert file_bytes(manifest_entry(our_files)["contents"]) == manifest.read_bytes()
    p = tmp_path / "butane.ign"
    p.write_text(json.dumps(ign))
    r = subprocess.run(["ignition-validate", str(p)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", r


def test_render_refuses_an_output_root_it_cannot_install(tmp_path):
    for root, says in [("/run/user", "a directory the system shares"), ("/var/run/x", "write `/run/x` instead"),
                       ("/run/with space", "would not take literally")]:
        m = tmp_path / "m.toml"
        m.write_text(f'[settings]\noutput_root = "{root}"\n[backend.a]\ntype = "aws"\n'
                     '[[secret]]\npath = "x"\nref = "x"\n')
        for fmt in ("butane", "ignition"):
            r = subprocess.run([str(BIN), "render", fmt, "--variant", "flatcar", "--binary-url", "http://x/b",
                                "--binary-sha512", SHA, "--manifest", str(m)], capture_output=True, text=True)
            assert r.returncode == 2 and r.stdout == "", r
            assert f"settings.output_root `{root}`" in r.stderr and says in r.stderr, r.stderr


def test_render_refuses_what_check_refuses(tmp_path):
    """render validates as `check --offline` does: a manifest check refuses is never rendered."""
    m = tmp_path / "m.toml"
    m.write_text('[backend.a]\ntype = "aws"\nregion = "eu-west-1a"\n'
                 '[[secret]]\npath = "x"\nref = "x"\nmode = "0666"\n')
    for fmt in ("butane", "ignition"):
        r = subprocess.run([str(BIN), "render", fmt, "--variant", "flatcar", "--binary-url",
                            "https://example.com/bootsecrets", "--binary-sha512", SHA,
                            "--manifest", str(m)], capture_output=True, text=True)
        assert r.returncode == 2 and r.stdout == "", r
        assert "availability zone" in r.stderr and "0666" in r.stderr, r
    # Users and files of the node are not looked up where render runs.
    m.write_text('[backend.a]\ntype = "aws"\n[[secret]]\npath = "x"\nref = "x"\n'
                 'owner = "someone-only-on-the-node"\non_change = ["/usr/bin/nowhere-here"]\n')
    r = subprocess.run([str(BIN), "render", "ignition", "--variant", "flatcar", "--binary-url",
                        "https://example.com/bootsecrets", "--binary-sha512", SHA,
                        "--manifest", str(m)], capture_output=True, text=True)
    assert r.returncode == 0, r


def render_sysext(fmt, variant, *extra, manifest=ROOT / "examples" / "manifest.toml"):
    r = subprocess.run([str(BIN), "render", fmt, "--variant", variant, "--install", "sysext",
                        "--image-url", "http://10.0.2.100/bootsecrets.raw", "--image-sha512", SHA,
                        "--manifest", str(manifest), *extra], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("extra", [[], ["--refresh", "--kubelet-dropin"]], ids=["plain", "refresh-dropin"])
@pytest.mark.parametrize("variant", ["flatcar", "fcos"])
def test_sysext_renderings_validate_and_butane_compiles_them_alike(tmp_path, output_root, variant, extra):
    manifest, _ = output_root
    ours_text = render_sysext("ignition", variant, *extra, manifest=manifest)
    p = tmp_path / "ours.ign"
    p.write_text(ours_text)
    r = subprocess.run(["ignition-validate", str(p)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", r
    ours = json.loads(ours_text)
    [image] = [f for f in ours["storage"]["files"] if f["path"].startswith("/opt/extensions/bootsecrets/")]
    assert image["contents"]["verification"]["hash"] == f"sha512-{SHA}"
    assert not any(f["path"] == "/opt/bin/bootsecrets" for f in ours["storage"]["files"])
    assert {"path": "/etc/extensions/bootsecrets.raw", "target": image["path"], "hard": False} \
        in ours["storage"]["links"]
    ign = butane_compile(tmp_path, render_sysext("butane", variant, *extra, manifest=manifest))
    assert ign.get("systemd") == ours.get("systemd")
    assert ign["storage"]["links"] == ours["storage"]["links"]
    files, our_files = ign["storage"]["files"], ours["storage"]["files"]
    assert [(f["path"], f["mode"]) for f in files] == [(f["path"], f["mode"]) for f in our_files]
    assert files[0]["contents"] == our_files[0]["contents"]
    assert file_bytes(manifest_entry(files)["contents"]) == manifest.read_bytes()


@pytest.mark.parametrize("args, says", [
    (["--install", "sysext", "--binary-url", "http://x/b", "--binary-sha512", SHA],
     "--binary-url does not apply to --install sysext"),
    (["--install", "sysext", "--image-url", "http://x/b.raw"], "--install sysext needs --image-url and --image-sha512"),
    (["--image-url", "http://x/b.raw", "--image-sha512", SHA], "--image-url does not apply to --install binary"),
    (["--binary-url", "http://x/b", "--binary-sha512", SHA, "--arch", "arm64"],
     "--arch does not apply to --install binary"),
    (["--install", "sysext", "--image-url", "ftp://x/b.raw", "--image-sha512", SHA], "--image-url `ftp://x/b.raw`"),
    (["--install", "sysext", "--image-url", "http://x/b.raw", "--image-sha512", "abc"],
     "--image-sha512 must be 128 hex digits"),
])
def test_render_refuses_flags_that_do_not_belong_to_the_install(args, says):
    r = subprocess.run([str(BIN), "render", "ignition", "--variant", "flatcar", "--manifest",
                        str(ROOT / "examples" / "manifest.toml"), *args], capture_output=True, text=True)
    assert r.returncode == 2 and says in r.stderr and r.stdout == "", r


def test_the_units_of_each_install_verify_where_that_install_puts_the_binary(tmp_path):
    for install, bindir, unitdir in (("binary", "opt/bin", "etc/systemd/system"),
                                     ("sysext", "usr/bin", "usr/lib/systemd/system")):
        root = tmp_path / install
        (root / "usr/lib/systemd").mkdir(parents=True)
        shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
        (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
        (root / bindir).mkdir(parents=True, exist_ok=True)
        shutil.copy(BIN, root / bindir / "bootsecrets")
        add_unit_commands(root)
        r = subprocess.run([str(BIN), "units", "--install", install, "--output-dir", str(root / unitdir)],
                           capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout == "" and verify_stderr(r.stderr) == "", r
        text = (root / unitdir / "bootsecrets.service").read_text()
        assert re.search(rf"^ExecStart=/{bindir}/bootsecrets$", text, re.M), text
        assert (root / unitdir / "bootsecrets-refresh.service").read_text().count(f"/{bindir}/bootsecrets run") == 1
        r = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "bootsecrets.service",
                            "bootsecrets-refresh.service", "bootsecrets-refresh.timer"],
                           capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout == "" and verify_stderr(r.stderr) == "", (install, r)
    r = subprocess.run([str(BIN), "units", "--output-dir", str(tmp_path / "missing")], capture_output=True, text=True)
    assert r.returncode == 1 and "cannot write" in r.stderr, r
