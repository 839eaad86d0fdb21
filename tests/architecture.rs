//! The module graph has no import circles: a module that a lower layer depends on never reaches
//! back up (for example the backends never import `plan`, which dispatches into them). Read from
//! the source: every `crate::MODULE` a top-level module names is an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module of a file under src/ (`src/writer/root.rs` -> `writer`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The code before any `#[cfg(test)]` (tests may use whatever they like), without comment lines
/// (a doc link is not a dependency).
fn production(text: &str) -> String {
    text.split("#[cfg(test)]")
        .next()
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let m = module_of(&src, f);
        if m == "main" || m == "lib" {
            continue;
        }
        let text = production(&std::fs::read_to_string(f).unwrap());
        let deps = g.entry(m.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != m {
                deps.insert(name);
            }
        }
        // `use crate::{a, b::c}` groups.
        for (i, _) in text.match_indices("use crate::{") {
            let rest = &text[i + "use crate::{".len()..];
            let group = &rest[..rest.find("};").unwrap_or(rest.len())];
            for item in group.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != m && name != "self" {
                    deps.insert(name);
                }
            }
        }
    }
    g
}

fn cycle_from(
    g: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    stack: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = stack.iter().position(|s| s == node) {
        let mut c = stack[i..].to_vec();
        c.push(node.to_string());
        return Some(c);
    }
    if done.contains(node) {
        return None;
    }
    stack.push(node.to_string());
    for d in g.get(node).into_iter().flatten() {
        if let Some(c) = cycle_from(g, d, stack, done) {
            return Some(c);
        }
    }
    stack.pop();
    done.insert(node.to_string());
    None
}

#[test]
fn the_module_graph_has_no_circles() {
    let g = graph();
    assert!(g.contains_key("writer") && g["backend"].contains("settings"));
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(c) = cycle_from(&g, m, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", c.join(" -> "));
        }
    }
}

/// Inside a folder module, the sibling files import no circle either (`super::a` from `b.rs` and
/// `super::b` from `a.rs`): `mod.rs` declares its children and is left out.
#[test]
fn sibling_modules_have_no_circles() {
    fn folders(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.push(p.clone());
                folders(&p, out);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut dirs = Vec::new();
    folders(&src, &mut dirs);
    let mut checked = 0;
    for dir in dirs {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let siblings: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let p = e.unwrap().path();
                let stem = p.file_stem()?.to_string_lossy().into_owned();
                (p.extension().is_some_and(|x| x == "rs") && stem != "mod").then_some(stem)
            })
            .collect();
        for m in &siblings {
            let text = production(&std::fs::read_to_string(dir.join(format!("{m}.rs"))).unwrap());
            let deps = g.entry(m.clone()).or_default();
            for other in &siblings {
                if other != m
                    && (text.contains(&format!("super::{other}::"))
                        || text.contains(&format!("super::{other}}}"))
                        || text.contains(&format!("super::{{{other}")))
                {
                    deps.insert(other.clone());
                }
            }
        }
        let mut done = BTreeSet::new();
        for m in g.keys() {
            if let Some(c) = cycle_from(&g, m, &mut Vec::new(), &mut done) {
                panic!("import circle in {}: {}", dir.display(), c.join(" -> "));
            }
        }
        checked += 1;
    }
    assert!(checked >= 4, "the folder modules were not found");
}
