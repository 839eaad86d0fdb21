#!/usr/bin/env python3
"""The dependencies of a release build: a CycloneDX SBOM of the exact graph, every licence
checked against an allow-list, and the licence texts the binary must carry.

    release/deps.py --target TRIPLE --out DIR --name BIN --commit COMMIT

writes DIR/BIN.cdx.json and DIR/THIRD-PARTY-LICENSES.txt, and exits 1 (writing nothing) when a
dependency's licence is copyleft, unknown, or has no text to carry.

The graph is what `cargo build --release --target TRIPLE` builds with the default features:
`cargo tree -e normal,build --target TRIPLE` resolves features exactly as that build does
(`cargo metadata` would add the features dev-dependencies turn on, such as tokio's test-util).
Crates that only run at build time (build scripts' dependencies, proc-macros) are listed with
scope "excluded"; their licences are checked and carried all the same. `cargo metadata` adds
what the tree lacks: licence expression, source, repository, description; Cargo.lock the
checksum. Standard library only; --metadata, --tree, --linked and --lock read saved outputs
instead of running cargo (the tests use them).
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# SPDX licence identifiers a dependency may be used under in an Apache-2.0 binary distributed
# with its notices: permissive licences only. In preference order: an `A OR B` dependency is
# taken under the first alternative that is allowed, best ranked first.
ALLOWED = [
    "Apache-2.0", "MIT", "BSD-3-Clause", "BSD-2-Clause", "ISC", "Zlib", "Unicode-3.0",
    "Unicode-DFS-2016", "BSL-1.0", "MIT-0", "0BSD", "CC0-1.0", "Unlicense",
    "CDLA-Permissive-2.0",
]
ALLOWED_EXCEPTIONS = {"LLVM-exception"}
# Refused with the reason "copyleft" (anything else not allowed is "not on the allow-list").
COPYLEFT = re.compile(r"^(A?GPL|LGPL|MPL|EPL|CDDL|EUPL|OSL|CPAL|SSPL|RPL|Sleepycat|CC-BY-SA|"
                      r"CC-BY-NC|QPL|OFL|CECILL|MS-RL|APSL|Artistic)", re.I)
# Texts for a crate that ships no licence file (its Cargo.toml names the licence, the published
# crate has no LICENSE*): the canonical text, with its authors as the copyright holders.
CANONICAL = {"Apache-2.0": ROOT / "LICENSE", "MIT": ROOT / "release" / "licenses" / "MIT.txt"}
TEXT_FILE = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE|UNLICENSE|COPYRIGHT)([-_.].*)?$", re.I)


class LicenceError(Exception):
    pass


def tokens(expr):
    """SPDX expression tokens; `/` (old crates' `MIT/Apache-2.0`) is OR."""
    out = []
    for t in re.findall(r"\(|\)|/|[^\s()/]+", expr):
        up = t.upper()
        if t == "/":
            out.append("OR")
        elif up in ("AND", "OR", "WITH"):
            out.append(up)
        else:
            out.append(t)
    return out


def parse(expr):
    """An SPDX licence expression as a tree: ("OR", [..]), ("AND", [..]), ("WITH", id, exc) or
    ("ID", id). AND binds tighter than OR; WITH tighter than both."""
    toks = tokens(expr)
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take(want=None):
        nonlocal pos
        if pos >= len(toks):
            raise LicenceError(f"`{expr}`: unexpected end of the expression")
        t = toks[pos]
        if want and t != want:
            raise LicenceError(f"`{expr}`: expected {want}, found `{t}`")
        pos += 1
        return t

    def atom():
        t = take()
        if t == "(":
            e = disjunction()
            take(")")
            return e
        if t in ("AND", "OR", "WITH", ")"):
            raise LicenceError(f"`{expr}`: unexpected `{t}`")
        if peek() == "WITH":
            take()
            return ("WITH", t, take())
        return ("ID", t)

    def conjunction():
        terms = [atom()]
        while peek() == "AND":
            take()
            terms.append(atom())
        return terms[0] if len(terms) == 1 else ("AND", terms)

    def disjunction():
        terms = [conjunction()]
        while peek() == "OR":
            take()
            terms.append(conjunction())
        return terms[0] if len(terms) == 1 else ("OR", terms)

    if not toks:
        raise LicenceError("empty licence expression")
    tree = disjunction()
    if pos != len(toks):
        raise LicenceError(f"`{expr}`: unexpected `{toks[pos]}`")
    return tree


def _rank(ident):
    return ALLOWED.index(ident) if ident in ALLOWED else len(ALLOWED)


def evaluate(expr):
    """The licences `expr` is taken under (a sorted list), or LicenceError saying why no choice
    is allowed: every term of an AND must be allowed, one alternative of an OR suffices."""
    problems = []

    def ev(node):
        kind = node[0]
        if kind == "ID":
            ident = node[1].removesuffix("+")
            if ident in ALLOWED:
                return [ident]
            problems.append(f"{node[1]} ({'copyleft' if COPYLEFT.match(ident) else 'not on the allow-list'})")
            return None
        if kind == "WITH":
            lic = ev(("ID", node[1]))
            if lic is None:
                return None
            if node[2] not in ALLOWED_EXCEPTIONS:
                problems.append(f"{node[1]} WITH {node[2]} (exception not on the allow-list)")
                return None
            return [f"{lic[0]} WITH {node[2]}"]
        if kind == "AND":
            parts = [ev(t) for t in node[1]]
            if any(p is None for p in parts):
                return None
            return sorted({x for p in parts for x in p}, key=lambda x: (_rank(x.split()[0]), x))
        choices = [c for c in (ev(t) for t in node[1]) if c is not None]
        if not choices:
            return None
        return min(choices, key=lambda c: ([_rank(x.split()[0]) for x in c], len(c)))

    chosen = ev(parse(expr))
    if chosen is None:
        raise LicenceError(f"`{expr}`: no allowed choice: " + "; ".join(dict.fromkeys(problems)))
    return chosen


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout


def tree_edges(text):
    """(nodes, edges, features) from `cargo tree --prefix depth -f '{p}|{f}'`: a node is
    `name vX.Y.Z` (with ` (proc-macro)` and a source suffix dropped)."""
    nodes, edges, features = [], set(), {}
    stack = []
    for line in text.splitlines():
        m = re.match(r"^(\d+)(.*)$", line)
        if not m:
            continue
        depth, rest = int(m.group(1)), m.group(2)
        p, _, f = rest.partition("|")
        f = f.removesuffix(" (*)").strip()
        name, ver = p.split()[:2]
        key = (name, ver.lstrip("v"))
        if key not in features:
            nodes.append(key)
            features[key] = set()
        if f:
            features[key].add(f)
        del stack[depth:]
        if stack:
            edges.add((stack[-1], key))
        stack.append(key)
    return nodes, edges, features


def lock_checksums(text):
    out, cur = {}, {}
    for line in text.splitlines() + ["[[package]]"]:
        if line.strip() == "[[package]]":
            if "name" in cur and "checksum" in cur:
                out[(cur["name"], cur["version"])] = cur["checksum"]
            cur = {}
            continue
        m = re.match(r'^(name|version|checksum) = "(.*)"$', line.strip())
        if m:
            cur[m.group(1)] = m.group(2)
    return out


def licence_files(pkg):
    d = Path(pkg["manifest_path"]).parent
    files = sorted(p for p in d.iterdir() if p.is_file() and TEXT_FILE.match(p.name))
    if (d / "LICENSES").is_dir():
        files += sorted(p for p in (d / "LICENSES").iterdir() if p.is_file())
    if pkg.get("license_file"):
        lf = (d / pkg["license_file"]).resolve()
        if lf.is_file() and lf not in files:
            files.append(lf)
    return d, files


def purl(name, version):
    return f"pkg:cargo/{name}@{version}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--name", required=True, help="the binary's file name (the SBOM is NAME.cdx.json)")
    ap.add_argument("--commit", required=True)
    ap.add_argument("--metadata", type=Path, help="saved `cargo metadata` output")
    ap.add_argument("--tree", type=Path, help="saved `cargo tree -e normal,build` output")
    ap.add_argument("--linked", type=Path, help="saved `cargo tree -e normal` output")
    ap.add_argument("--lock", type=Path, default=ROOT / "Cargo.lock")
    a = ap.parse_args(argv)

    fmt = ["--prefix", "depth", "-f", "{p}|{f}", "--locked", "--target", a.target]
    meta = json.loads(a.metadata.read_text() if a.metadata else
                      run(["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", a.target]))
    tree = a.tree.read_text() if a.tree else run(["cargo", "tree", "-e", "normal,build", *fmt])
    linked_tree = a.linked.read_text() if a.linked else run(["cargo", "tree", "-e", "normal", *fmt])
    sums = lock_checksums(a.lock.read_text())

    pkgs = {(p["name"], p["version"]): p for p in meta["packages"]}
    nodes, edges, features = tree_edges(tree)
    root = nodes[0]
    # Linked into the binary: reachable through normal dependencies, not through a proc-macro.
    proc_macro = {k for k, p in pkgs.items() if any("proc-macro" in t["kind"] for t in p["targets"])}
    lnodes, ledges, _ = tree_edges(linked_tree)
    linked, todo = set(), [root]
    children = {}
    for s, d in ledges:
        children.setdefault(s, []).append(d)
    while todo:
        k = todo.pop()
        if k in linked or k in proc_macro:
            continue
        linked.add(k)
        todo += children.get(k, [])

    problems, components, sections, summary = [], [], [], []
    seen_texts = {}  # sha256 of a text -> where it was first printed
    for key in sorted(nodes[1:]):
        p = pkgs.get(key)
        if p is None:
            problems.append(f"{key[0]} {key[1]}: in cargo tree but not in cargo metadata")
            continue
        name, version = key
        expr = p.get("license")
        try:
            if not expr:
                raise LicenceError(f"no SPDX licence expression (license_file = {p.get('license_file')!r}): "
                                   "review its licence by hand")
            chosen = evaluate(expr)
        except LicenceError as e:
            problems.append(f"{name} {version}: {e}")
            continue
        d, files = licence_files(p)
        texts = [(f.relative_to(d) if f.is_relative_to(d) else f.name, f.read_text(errors="replace"))
                 for f in files]
        if not texts:
            plain = [c for c in chosen if " WITH " not in c]
            if len(plain) == len(chosen) and all(c in CANONICAL for c in chosen):
                authors = ", ".join(p.get("authors") or []) or f"the {name} authors"
                for c in chosen:
                    texts.append((f"{c} (canonical text: the published crate has no licence file; "
                                  f"copyright holders: {authors})", CANONICAL[c].read_text()))
            else:
                problems.append(f"{name} {version}: the published crate has no licence file and "
                                f"no canonical text is kept for {' AND '.join(chosen)} "
                                "(add one under release/licenses/)")
                continue
        source = p.get("source") or "local"
        summary.append(f"{name} {version}  {expr}  -> {' AND '.join(chosen)}")
        body = [f"{'=' * 78}\n{name} {version}\nlicence: {expr} (used under {' AND '.join(chosen)})\n"
                f"source: {source}\n"]
        for fname, text in texts:
            h = hashlib.sha256(text.strip().encode()).hexdigest()
            if h in seen_texts:
                body.append(f"{'-' * 78}\n{fname}: the same text as {seen_texts[h]}, above\n")
            else:
                seen_texts[h] = f"{name} {version} {fname}"
                body.append(f"{'-' * 78}\n{fname}:\n\n{text.rstrip()}\n")
        sections.append("\n".join(body))
        comp = {
            "type": "library",
            "bom-ref": purl(name, version),
            "name": name,
            "version": version,
            "scope": "required" if key in linked else "excluded",
            "licenses": [{"expression": expr}],
            "purl": purl(name, version),
        }
        if p.get("description"):
            comp["description"] = " ".join(p["description"].split())
        if key in sums:
            comp["hashes"] = [{"alg": "SHA-256", "content": sums[key]}]
        refs = []
        if p.get("repository"):
            refs.append({"type": "vcs", "url": p["repository"]})
        if source.startswith("registry+"):
            refs.append({"type": "distribution", "url": f"https://crates.io/api/v1/crates/{name}/{version}/download"})
        if refs:
            comp["externalReferences"] = refs
        props = [{"name": "cargo:features", "value": f} for f in sorted(features[key])]
        if key not in linked:
            props.append({"name": "cargo:build-only",
                          "value": "proc-macro" if key in proc_macro else "build-dependency"})
        if props:
            comp["properties"] = props
        components.append(comp)

    own = pkgs[root]
    if own.get("license") != "Apache-2.0" or not (ROOT / "LICENSE").is_file():
        problems.append("bootsecrets itself: Cargo.toml must say Apache-2.0 and LICENSE must exist")
    if problems:
        print("release: licence check failed:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1

    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    ts = datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    ident = f"{root[0]} {root[1]} {a.commit} {a.target}"
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'bootsecrets-sbom:' + ident)}",
        "version": 1,
        "metadata": {
            "timestamp": ts,
            "tools": {"components": [{"type": "application", "name": "release/deps.py",
                                      "description": "bootsecrets' release script (cargo tree and cargo metadata)"}]},
            "component": {
                "type": "application",
                "bom-ref": purl(*root),
                "name": root[0],
                "version": root[1],
                "licenses": [{"expression": own.get("license")}],
                "purl": purl(*root),
                "properties": [{"name": "git:commit", "value": a.commit},
                               {"name": "cargo:target", "value": a.target},
                               *({"name": "cargo:features", "value": f} for f in sorted(features[root]))],
            },
        },
        "components": components,
        "dependencies": [
            {"ref": purl(*k), "dependsOn": sorted(purl(*d) for s, d in edges if s == k)}
            for k in sorted(nodes)
        ],
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.name}.cdx.json").write_text(json.dumps(bom, indent=2, sort_keys=True) + "\n")
    header = (f"Third-party software in bootsecrets {root[1]} (commit {a.commit}, {a.target})\n\n"
              f"bootsecrets is licensed under Apache-2.0 (LICENSE). It is built from the crates below,\n"
              f"each used under the licence shown after the arrow; their licence and notice files\n"
              f"follow, as published in each crate. {len(summary)} crates.\n\n")
    (a.out / "THIRD-PARTY-LICENSES.txt").write_text(header + "\n".join(summary) + "\n\n" + "\n".join(sections))
    digest = hashlib.sha256((a.out / f"{a.name}.cdx.json").read_bytes()).hexdigest()[:16]
    print(f"release: {len(components)} dependencies, licences allowed; SBOM {a.name}.cdx.json ({digest}...)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
