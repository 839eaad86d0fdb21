//! `bootsecrets --version`: the version, the commit this checkout is at, the backends compiled
//! in and the target, as build.rs found them.

use std::path::Path;
use std::process::Command;

fn version_output(flag: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bootsecrets"))
        .arg(flag)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn version_names_the_commit_the_backends_and_the_target() {
    let text = version_output("--version");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(
        lines[0],
        format!("bootsecrets {}", env!("CARGO_PKG_VERSION"))
    );
    let commit = lines[1].strip_prefix("commit: ").expect(&text);
    match std::env::var("BOOTSECRETS_GIT_COMMIT") {
        Ok(c) if !c.is_empty() => assert_eq!(commit, c),
        _ => {
            let top =
                git(&["rev-parse", "--show-toplevel"]).expect("this test runs in a git checkout");
            assert_eq!(
                Path::new(&top).canonicalize().unwrap(),
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .canonicalize()
                    .unwrap()
            );
            let head = git(&["rev-parse", "HEAD"]).unwrap();
            let (hash, dirty) = match commit.strip_suffix("-dirty") {
                Some(h) => (h, true),
                None => (commit, false),
            };
            assert_eq!(hash, head, "{text}");
            // A clean checkout says so; a modified one says `-dirty` (what is tracked only).
            let modified = !git(&["status", "--porcelain", "--untracked-files=no"])
                .unwrap()
                .is_empty();
            if !modified {
                assert!(!dirty, "{text}");
            }
        }
    }
    let enabled: Vec<&str> = [
        ("aws", cfg!(feature = "aws")),
        ("vault", cfg!(feature = "vault")),
        ("azure", cfg!(feature = "azure")),
        ("gcp", cfg!(feature = "gcp")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    let backends = if enabled.is_empty() {
        "none".to_string()
    } else {
        enabled.join(" ")
    };
    assert_eq!(lines[2], format!("backends: {backends}"), "{text}");
    let target = lines[3].strip_prefix("target: ").expect(&text);
    assert!(
        target.starts_with(std::env::consts::ARCH) && target.contains(std::env::consts::OS),
        "{text}"
    );
    // -V says the same.
    assert_eq!(version_output("-V"), text);
}
