//! What `bootsecrets --version` says about the build: the commit it was built from and the
//! backends (cargo features) compiled in.
//!
//! The commit is `BOOTSECRETS_GIT_COMMIT` when set (release/build.sh sets it; a build from a
//! source tarball, which has no `.git`, sets it by hand), else `git rev-parse HEAD` of this
//! checkout, with `-dirty` when tracked files differ from it, else `unknown`. Nothing here depends
//! on the time or the build's directory, so the release stays reproducible.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const BACKENDS: [&str; 4] = ["aws", "vault", "azure", "gcp"];

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The commit of the checkout in `dir`, when `dir` is that checkout's top (not a directory that
/// merely sits inside some other repository, as an unpacked tarball might).
fn commit_of(dir: &Path) -> Option<String> {
    let top = PathBuf::from(git(dir, &["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    // Rebuilt when HEAD moves, a branch is committed to, or a tracked file changes.
    for p in ["HEAD", "index", "packed-refs"] {
        if let Some(path) = git(dir, &["rev-parse", "--git-path", p]) {
            println!("cargo:rerun-if-changed={}", dir.join(path).display());
        }
    }
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"])
        && let Some(path) = git(dir, &["rev-parse", "--git-path", &branch])
    {
        println!("cargo:rerun-if-changed={}", dir.join(path).display());
    }
    let head = git(dir, &["rev-parse", "--verify", "HEAD"])?;
    let dirty =
        git(dir, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    for p in ["build.rs", "Cargo.toml", "Cargo.lock", "src", "units"] {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-env-changed=BOOTSECRETS_GIT_COMMIT");
    let commit = match env::var("BOOTSECRETS_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => commit_of(&dir).unwrap_or_else(|| "unknown".into()),
    };
    let backends: Vec<&str> = BACKENDS
        .into_iter()
        .filter(|b| env::var_os(format!("CARGO_FEATURE_{}", b.to_uppercase())).is_some())
        .collect();
    let backends = if backends.is_empty() {
        "none".to_string()
    } else {
        backends.join(" ")
    };
    println!("cargo:rustc-env=BOOTSECRETS_COMMIT={commit}");
    println!("cargo:rustc-env=BOOTSECRETS_BACKENDS={backends}");
    println!(
        "cargo:rustc-env=BOOTSECRETS_TARGET={}",
        env::var("TARGET").unwrap()
    );
}
