"""release/deps.py: the licence check (SPDX expressions evaluated with OR, AND, WITH and
parentheses; copyleft and unknown licences refused) and the SBOM's graph, from saved cargo outputs
(no build needed)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "release"))
import deps  # noqa: E402


@pytest.mark.parametrize("expr, chosen", [
    ("MIT", ["MIT"]),
    ("MIT OR Apache-2.0", ["Apache-2.0"]),
    ("Apache-2.0 OR MIT", ["Apache-2.0"]),
    ("MIT/Apache-2.0", ["Apache-2.0"]),
    ("Apache-2.0 / MIT", ["Apache-2.0"]),
    ("Unlicense OR MIT", ["MIT"]),
    ("ISC AND (Apache-2.0 OR ISC)", ["Apache-2.0", "ISC"]),
    ("(MIT OR Apache-2.0) AND Unicode-3.0", ["Apache-2.0", "Unicode-3.0"]),
    ("MPL-2.0 OR MIT", ["MIT"]),
    ("GPL-3.0-only OR Apache-2.0", ["Apache-2.0"]),
    ("Apache-2.0 WITH LLVM-exception", ["Apache-2.0 WITH LLVM-exception"]),
    ("Apache-2.0 WITH LLVM-exception OR MIT", ["Apache-2.0 WITH LLVM-exception"]),
    ("MIT AND BSD-3-Clause OR GPL-2.0", ["MIT", "BSD-3-Clause"]),
    ("mit or apache-2.0".replace("mit", "MIT").replace("apache", "Apache"), ["Apache-2.0"]),
])
def test_allowed_expressions_and_the_licence_taken(expr, chosen):
    assert deps.evaluate(expr) == chosen


@pytest.mark.parametrize("expr, says", [
    ("GPL-3.0-only", "GPL-3.0-only (copyleft)"),
    ("LGPL-2.1-or-later", "copyleft"),
    ("MPL-2.0", "MPL-2.0 (copyleft)"),
    ("MIT AND GPL-2.0", "GPL-2.0 (copyleft)"),
    # AND binds tighter than OR: (MIT AND MPL-2.0) OR AGPL-3.0 has no allowed choice.
    ("MIT AND MPL-2.0 OR AGPL-3.0", "AGPL-3.0 (copyleft)"),
    ("(MIT OR Apache-2.0) AND EPL-2.0", "EPL-2.0 (copyleft)"),
    ("LicenseRef-Proprietary", "not on the allow-list"),
    ("SSPL-1.0 OR Elastic-2.0", "not on the allow-list"),
    ("Apache-2.0 WITH Some-exception", "exception not on the allow-list"),
    ("MIT OR", "unexpected end"),
    ("(MIT", "unexpected end"),
    ("MIT Apache-2.0", "unexpected `Apache-2.0`"),
    ("", "empty"),
])
def test_refused_expressions_say_why(expr, says):
    with pytest.raises(deps.LicenceError) as e:
        deps.evaluate(expr)
    assert says in str(e.value)


def test_precedence_and_over_or():
    assert deps.parse("A OR B AND C") == ("OR", [("ID", "A"), ("AND", [("ID", "B"), ("ID", "C")])])
    assert deps.parse("(A OR B) AND C") == ("AND", [("OR", [("ID", "A"), ("ID", "B")]), ("ID", "C")])
    assert deps.parse("A WITH E AND B") == ("AND", [("WITH", "A", "E"), ("ID", "B")])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The project's own cargo outputs, saved, for runs with one licence changed."""
    d = tmp_path_factory.mktemp("cargo")
    target = "x86_64-unknown-linux-gnu"
    fmt = ["--prefix", "depth", "-f", "{p}|{f}", "--locked", "--target", target]

    def run(*cmd):
        return subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout

    (d / "meta.json").write_text(run("cargo", "metadata", "--format-version", "1", "--locked",
                                     "--filter-platform", target))
    (d / "tree.txt").write_text(run("cargo", "tree", "-e", "normal,build", *fmt))
    (d / "linked.txt").write_text(run("cargo", "tree", "-e", "normal", *fmt))
    return d


def run_deps(saved, out, meta=None):
    m = saved / "meta.json"
    if meta is not None:
        m = out.parent / "meta-changed.json"
        m.write_text(json.dumps(meta))
    return subprocess.run(
        [sys.executable, str(ROOT / "release" / "deps.py"), "--target", "x86_64-unknown-linux-gnu",
         "--out", str(out), "--name", "bin", "--commit", "c0ffee", "--metadata", str(m),
         "--tree", str(saved / "tree.txt"), "--linked", str(saved / "linked.txt")],
        capture_output=True, text=True, env={"SOURCE_DATE_EPOCH": "1700000000", "PATH": "/usr/bin:/bin"})


def with_licence(saved, crate, licence, licence_file=None):
    meta = json.loads((saved / "meta.json").read_text())
    [p] = [p for p in meta["packages"] if p["name"] == crate]
    p["license"] = licence
    p["license_file"] = licence_file
    return meta


@pytest.mark.parametrize("licence, says", [
    ("GPL-3.0-or-later", "tokio 1.54.1: `GPL-3.0-or-later`: no allowed choice: GPL-3.0-or-later (copyleft)"),
    ("MIT AND LGPL-2.1", "LGPL-2.1 (copyleft)"),
    ("Foo-1.0", "Foo-1.0 (not on the allow-list)"),
    (None, "no SPDX licence expression"),
])
def test_a_dependency_under_a_refused_licence_fails_the_release(saved, tmp_path, licence, says):
    out = tmp_path / "out"
    r = run_deps(saved, out, with_licence(saved, "tokio", licence, "LICENSE" if licence is None else None))
    assert r.returncode == 1, r
    assert "licence check failed" in r.stderr and says in r.stderr, r.stderr
    assert not out.exists() or not any(out.iterdir()), "nothing is written on failure"


def test_the_sbom_is_the_exact_release_graph(saved, tmp_path):
    out = tmp_path / "out"
    r = run_deps(saved, out)
    assert r.returncode == 0, r.stderr
    bom = json.loads((out / "bin.cdx.json").read_text())
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.5"
    assert bom["metadata"]["timestamp"] == "2023-11-14T22:13:20Z"
    comps = {(c["name"], c["version"]): c for c in bom["components"]}
    # Every crate `cargo tree -e normal,build` lists, and nothing else: no dev-dependency.
    tree = {re.match(r"^\d+(\S+) v([^\s|]+)", line).groups()
            for line in (saved / "tree.txt").read_text().splitlines()}
    tree -= {("bootsecrets", bom["metadata"]["component"]["version"])}
    assert set(comps) == tree
    assert not any(n in ("proptest", "rusty-fork", "wait-timeout") for n, _ in comps)
    [tokio] = [c for (n, _), c in comps.items() if n == "tokio"]
    feats = [p["value"] for p in tokio["properties"] if p["name"] == "cargo:features"]
    # The release build's features: not the test-util that only the dev-dependency turns on.
    assert feats and all("test-util" not in f for f in feats) and "rt" in feats[0].split(","), feats
    assert tokio["scope"] == "required" and tokio["hashes"][0]["alg"] == "SHA-256"
    # Proc-macros and build-script dependencies are not linked in.
    assert comps[next(k for k in comps if k[0] == "serde_derive")]["scope"] == "excluded"
    assert comps[next(k for k in comps if k[0] == "cc")]["scope"] == "excluded"
    own = bom["metadata"]["component"]
    assert {"name": "git:commit", "value": "c0ffee"} in own["properties"]
    assert {"name": "cargo:features", "value": "aws,azure,default,gcp,vault"} in own["properties"]
    deps_of = {d["ref"]: d["dependsOn"] for d in bom["dependencies"]}
    assert f"pkg:cargo/tokio@{tokio['version']}" in deps_of[own["bom-ref"]]
    # Every licence collected, each crate once, with its texts (or the canonical one).
    text = (out / "THIRD-PARTY-LICENSES.txt").read_text()
    for (n, v), c in comps.items():
        assert f"\n{n} {v}\nlicence: {c['licenses'][0]['expression']} (used under " in text, (n, v)
    assert "azure_core 1.1.0\nlicence: MIT (used under MIT)" in text
    assert "MIT (canonical text: the published crate has no licence file" in text
    # Reproducible: the same inputs give the same bytes.
    again = tmp_path / "again"
    assert run_deps(saved, again).returncode == 0
    for f in ("bin.cdx.json", "THIRD-PARTY-LICENSES.txt"):
        assert (out / f).read_bytes() == (again / f).read_bytes(), f
