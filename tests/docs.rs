//! Docs cannot drift: every CLI flag is in docs/cli.md and every manifest key is in
//! docs/manifest.md. Key lists are derived from the real serde types (by asking them about an
//! unknown key), so adding a key without documenting it fails here.

use clap::CommandFactory;
use std::path::Path;

fn read(p: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap()
}

/// The names serde lists in "unknown field `x`, expected one of `a`, `b`" (or "unknown variant").
fn expected_names(toml_text: &str) -> Vec<String> {
    let err = bootsecrets::manifest::parse(toml_text)
        .expect_err("the probe must be rejected")
        .to_string();
    let tail = err
        .split_once("expected ")
        .unwrap_or_else(|| panic!("no list in: {err}"))
        .1;
    let names: Vec<String> = tail
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    assert!(!names.is_empty(), "no names in: {err}");
    names
}

/// The part of `doc` under the `## ` or `### ` heading that contains `marker`.
fn section<'a>(doc: &'a str, marker: &str) -> &'a str {
    let start = doc
        .match_indices("\n#")
        .map(|(i, _)| i + 1)
        .find(|&i| doc[i..].lines().next().unwrap().contains(marker))
        .unwrap_or_else(|| panic!("no heading with {marker}"));
    let level = doc[start..].chars().take_while(|c| *c == '#').count();
    let rest = &doc[start + 1..];
    let end = rest
        .match_indices("\n#")
        .map(|(i, _)| i + 1)
        .find(|&i| rest[i..].chars().take_while(|c| *c == '#').count() <= level)
        .unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn every_manifest_key_is_documented_in_its_section() {
    let doc = read("docs/manifest.md");
    let mut probes = vec![
        (
            "## `[settings]`".to_string(),
            "[settings]\n__probe__ = 1\n".to_string(),
        ),
        (
            "## `[[secret]]`".to_string(),
            "[[secret]]\n__probe__ = 1\n".to_string(),
        ),
        (
            "## `[[template]]`".to_string(),
            "[[template]]\n__probe__ = 1\n".to_string(),
        ),
    ];
    // Every backend type's keys, under its own `### type = "KIND"` heading.
    for kind in expected_names("[backend.x]\ntype = \"__probe__\"\n") {
        probes.push((
            format!("### `type = \"{kind}\"`"),
            format!("[backend.x]\ntype = \"{kind}\"\n__probe__ = 1\n"),
        ));
    }
    // Every Vault login method's keys, under its `#### method = "KIND"` heading.
    let auth = "[backend.x]\ntype = \"vault\"\n[backend.x.auth]\nmethod";
    for kind in expected_names(&format!("{auth} = \"__probe__\"\n")) {
        probes.push((
            format!("#### `method = \"{kind}\"`"),
            format!("{auth} = \"{kind}\"\n__probe__ = 1\n"),
        ));
    }
    let mut missing = Vec::new();
    let mut gone = Vec::new();
    for (heading, probe) in &probes {
        let part = section(&doc, heading);
        let names = expected_names(probe);
        for key in &names {
            if !part.contains(&format!("| `{key}` |")) {
                missing.push(format!("{key} (under {heading})"));
            }
        }
        // The other way round: a row for a key the manifest no longer takes. A backend type's
        // own table ends where its login methods' sections begin.
        let own = part.split("\n#### ").next().unwrap_or(part);
        for line in own.lines() {
            if let Some(key) = line.strip_prefix("| `").and_then(|r| r.split('`').next())
                && line.starts_with(&format!("| `{key}` |"))
                && !names.iter().any(|n| n == key)
            {
                gone.push(format!("{key} (under {heading})"));
            }
        }
    }
    assert!(
        gone.is_empty(),
        "documented in docs/manifest.md but not a key: {gone:?}"
    );
    // Top-level tables and backend types.
    for key in expected_names("__probe__ = 1\n") {
        let marker = match key.as_str() {
            "backend" => "[backend.NAME]".to_string(),
            "secret" => "[[secret]]".to_string(),
            "template" => "[[template]]".to_string(),
            k => format!("[{k}]"),
        };
        if !doc.contains(&format!("## `{marker}`")) {
            missing.push(format!("table {marker}"));
        }
    }
    for kind in expected_names("[backend.x]\ntype = \"__probe__\"\n") {
        if !doc.contains(&format!("### `type = \"{kind}\"`")) {
            missing.push(format!("backend type {kind}"));
        }
    }
    assert!(
        missing.is_empty(),
        "undocumented in docs/manifest.md: {missing:?}"
    );
}

#[test]
fn every_cli_flag_and_command_is_documented() {
    let doc = read("docs/cli.md");
    let cmd = bootsecrets::cli::Cli::command();
    let mut missing = Vec::new();
    let check_args = |c: &clap::Command, missing: &mut Vec<String>| {
        for a in c.get_arguments() {
            if let Some(l) = a.get_long()
                && !doc.contains(&format!("`--{l}"))
            {
                missing.push(format!("--{l}"));
            }
            if let Some(s) = a.get_short()
                && !doc.contains(&format!("`-{s}`"))
            {
                missing.push(format!("-{s}"));
            }
            if let Some(e) = a.get_env()
                && !doc.contains(&format!("`{}`", e.to_string_lossy()))
            {
                missing.push(format!("${}", e.to_string_lossy()));
            }
        }
    };
    check_args(&cmd, &mut missing);
    for sub in cmd.get_subcommands() {
        if !doc.contains(&format!("### `bootsecrets {}`", sub.get_name())) {
            missing.push(format!("command {}", sub.get_name()));
        }
        check_args(sub, &mut missing);
    }
    if !doc.contains(&format!("`{}`", bootsecrets::cli::VERBOSE_ENV)) {
        missing.push(bootsecrets::cli::VERBOSE_ENV.to_string());
    }
    assert!(
        missing.is_empty(),
        "undocumented in docs/cli.md: {missing:?}"
    );
    // The other way round: a documented flag or command that no longer exists.
    let mut flags: Vec<String> = Vec::new();
    for c in std::iter::once(&cmd).chain(cmd.get_subcommands()) {
        flags.extend(
            c.get_arguments()
                .filter_map(|a| a.get_long())
                .map(str::to_string),
        );
    }
    let mut gone = Vec::new();
    for line in doc.lines() {
        if let Some(flag) = line.strip_prefix("| `--").map(|r| {
            r.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .next()
                .unwrap_or("")
        }) && !flags.iter().any(|f| f == flag)
        {
            gone.push(format!("--{flag}"));
        }
        if let Some(name) = line
            .strip_prefix("### `bootsecrets ")
            .and_then(|r| r.split('`').next())
            && !cmd.get_subcommands().any(|s| s.get_name() == name)
        {
            gone.push(format!("command {name}"));
        }
    }
    assert!(
        gone.is_empty(),
        "documented in docs/cli.md but gone: {gone:?}"
    );
}

#[test]
fn documented_examples_parse() {
    let doc = read("docs/manifest.md");
    let mut n = 0;
    for block in doc.split("```toml\n").skip(1) {
        let text = block.split("```").next().unwrap();
        bootsecrets::manifest::parse(text)
            .unwrap_or_else(|e| panic!("docs/manifest.md example does not parse: {e}\n{text}"));
        n += 1;
    }
    assert!(n >= 1);
}

#[test]
fn exit_codes_are_documented() {
    let doc = read("docs/cli.md");
    for code in 0..=3 {
        assert!(doc.contains(&format!("| {code} |")), "exit code {code}");
    }
}

/// The fenced block of `lang` that follows `marker` in `doc`.
fn block_after<'a>(doc: &'a str, marker: &str, lang: &str) -> &'a str {
    let at = doc.find(marker).unwrap_or_else(|| panic!("no {marker:?}"));
    let open = format!("```{lang}\n");
    let start = doc[at..].find(&open).unwrap() + at + open.len();
    let end = doc[start..].find("```").unwrap() + start;
    &doc[start..end]
}

#[test]
fn the_check_sample_is_what_check_prints_for_the_complete_example() {
    let doc = read("docs/manifest.md");
    let example = block_after(&doc, "## A complete example", "toml");
    let sample = block_after(&doc, "Run `bootsecrets check` to see the plan:", "text");
    // Offline, as `check --offline` validates: the example's users and groups live on a node.
    bootsecrets::settings::set_offline();
    let plan = bootsecrets::plan::Plan::build(
        &bootsecrets::manifest::parse(example).expect("the complete example parses"),
        &|_| None,
    )
    .expect("the complete example is valid");
    let printed = plan.describe();
    let printed: Vec<&str> = printed.lines().collect();
    for line in sample.lines() {
        if line.trim() == "..." || line.starts_with("manifest ") {
            continue;
        }
        assert!(
            printed.contains(&line),
            "the sample's line {line:?} is not what check prints:\n{printed:#?}"
        );
    }
    for line in printed.iter().filter(|l| !l.starts_with("  ")) {
        assert!(
            sample.lines().any(|s| s == *line),
            "check prints {line:?}, missing from the sample"
        );
    }
}

/// Files the project ships to its users, which speak of the product only.
fn shipped_docs() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![
        root.join("README.md"),
        root.join("butane-snippets/README.md"),
    ];
    fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, files);
            } else if p
                .extension()
                .is_some_and(|x| ["md", "toml", "tf", "yaml", "bu"].iter().any(|k| x == *k))
            {
                files.push(p);
            }
        }
    }
    for dir in ["docs", "examples"] {
        walk(&root.join(dir), &mut files);
    }
    files
}

#[test]
fn the_docs_speak_of_the_product_only() {
    let forbidden = [
        ("issue ", "how the project was made (an issue)"),
        ("the issue", "how the project was made (an issue)"),
        ("/work/", "a path on the machine that built it"),
        ("/tmp/fresh", "a path on the machine that built it"),
        ("crates.md", "a file that is not in the repository"),
        ("the seed", "how the project was made"),
    ];
    let mut found = Vec::new();
    for f in shipped_docs() {
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let lower = line.to_ascii_lowercase();
            for (pat, why) in forbidden {
                if lower.contains(pat) {
                    found.push(format!("{}:{}: {why}: {line}", f.display(), n + 1));
                }
            }
        }
        // A key documented twice in one table reads as a contradiction.
        let mut seen = std::collections::BTreeSet::new();
        for line in text.lines() {
            if line.trim().is_empty() || !line.starts_with('|') {
                seen.clear();
                continue;
            }
            if let Some(key) = line.strip_prefix("| `").and_then(|r| r.split('`').next())
                && !seen.insert(key.to_string())
            {
                found.push(format!(
                    "{}: `{key}` has two rows in one table",
                    f.display()
                ));
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn every_file_the_docs_name_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let prefixes = [
        "examples/",
        "butane-snippets/",
        "docs/",
        "tests/",
        "units/",
        "src/",
        "bench/",
    ];
    let mut missing = Vec::new();
    for f in shipped_docs() {
        let text = std::fs::read_to_string(&f).unwrap();
        // Markdown links to files, relative to the document.
        for (i, _) in text.match_indices("](") {
            let target: String = text[i + 2..].chars().take_while(|c| *c != ')').collect();
            let target = target.split('#').next().unwrap_or("");
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            if !f.parent().unwrap().join(target).exists() {
                missing.push(format!("{}: link to {target}", f.display()));
            }
        }
        // Paths of the repository in backticks.
        for part in text.split('`').skip(1).step_by(2) {
            if prefixes.iter().any(|p| part.starts_with(p))
                && !part.contains(['*', ' ', '<', '{'])
                && !root.join(part.split(':').next().unwrap()).exists()
            {
                missing.push(format!("{}: `{part}`", f.display()));
            }
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

/// Every manifest the docs and examples show is clean under `bootsecrets check --offline`: valid,
/// and without a warning (a reader copies them). A block with a backend and secrets is checked
/// as it stands; a guide's secrets block is checked with that guide's backend block before it,
/// as its reader assembles the quick start. Fragments elsewhere (a list of secrets to add to
/// one's own manifest) are not manifests.
#[test]
fn every_documented_manifest_checks_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempdir();
    let mut checked = Vec::new();
    for file in shipped_docs() {
        let rel = file.strip_prefix(root).unwrap().display().to_string();
        let text = std::fs::read_to_string(&file).unwrap();
        let manifests: Vec<String> = if rel.ends_with(".toml") {
            if !text.contains("[[secret]]") {
                continue;
            }
            vec![text]
        } else if rel.ends_with(".md") {
            let blocks: Vec<&str> = text
                .split("```toml\n")
                .skip(1)
                .map(|b| b.split("```").next().unwrap())
                .collect();
            let backend = blocks
                .iter()
                .find(|b| b.contains("[backend.") && b.contains("type ="));
            blocks
                .iter()
                .filter(|b| b.contains("[[secret]]"))
                .filter_map(|b| {
                    if b.contains("[backend.") {
                        Some(b.to_string())
                    } else if rel.starts_with("docs/guide/") {
                        backend.map(|be| format!("{be}\n{b}"))
                    } else {
                        None
                    }
                })
                .collect()
        } else {
            continue;
        };
        for (i, m) in manifests.iter().enumerate() {
            let path = dir.join(format!("{}-{i}.toml", rel.replace('/', "_")));
            std::fs::write(&path, m).unwrap();
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_bootsecrets"))
                .args(["check", "--offline", "--manifest"])
                .arg(&path)
                .output()
                .unwrap();
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && !said.lines().any(|l| l.contains("warning:")),
                "{rel}: manifest #{i} is not clean under `check --offline`:\n{said}\n--- the manifest\n{m}"
            );
            checked.push(format!("{rel}#{i}"));
        }
    }
    for must in [
        "docs/guide/aws.md#0",
        "docs/guide/azure.md#0",
        "docs/guide/gcp.md#0",
        "docs/guide/vault.md#0",
        "docs/manifest.md#0",
        "examples/manifest.toml#0",
    ] {
        assert!(
            checked.iter().any(|c| c == must),
            "{must} was not checked: {checked:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("bootsecrets-docs-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The exit-code table of docs/cli.md against the code's classes: each class's code has its row,
/// and the row names the class (1 permanent, 2 invalid, 3 the deadline).
#[test]
fn the_exit_code_table_matches_the_error_classes() {
    use bootsecrets::error::RunError;
    let doc = read("docs/cli.md");
    let row = |code: u8| -> String {
        doc.lines()
            .find(|l| l.starts_with(&format!("| {code} |")))
            .unwrap_or_else(|| panic!("no row for exit code {code} in docs/cli.md"))
            .to_string()
    };
    for (e, says) in [
        (RunError::Failed(anyhow::anyhow!("x")), "a permanent error"),
        (RunError::Invalid(anyhow::anyhow!("x")), "invalid manifest"),
        (
            RunError::DeadlineExceeded(anyhow::anyhow!("x")),
            "the deadline (`deadline_seconds`) passed while errors were still transient",
        ),
    ] {
        let r = row(e.exit_code());
        assert!(
            r.contains(says),
            "exit {}: {r:?} does not say {says:?}",
            e.exit_code()
        );
    }
    // Only required secrets decide the code.
    assert!(row(1).contains("an `optional` secret's failures never decide the code"));
    assert!(row(0).contains("`doctor`: nothing failed"));
}

/// The comments of units/bootsecrets.service against the directives they describe: where a
/// comment states a value, the directive has it.
#[test]
fn the_unit_comments_say_what_the_directives_do() {
    let unit = read("units/bootsecrets.service");
    let value = |key: &str| -> String {
        let v: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .collect();
        assert!(!v.is_empty(), "units/bootsecrets.service has no {key}=");
        v.join(" ")
    };
    let says = |text: &str| {
        assert!(
            unit.contains(text),
            "the unit's comments no longer say {text:?}"
        )
    };
    let deadline = bootsecrets::plan::DEFAULT_DEADLINE.as_secs();
    // The timeout above the binary's default deadline, as the comment says.
    says(&format!(
        "Above the binary's own deadline ({deadline} s by default)"
    ));
    says(&format!(
        "(settings.deadline_seconds, default\n# {deadline} s)"
    ));
    let timeout: u64 = value("TimeoutStartSec").parse().unwrap();
    assert!(timeout > deadline);
    // Self-healing: which exits restart, and the delays.
    says("exit 1 (denied, not found, a bad value) and 2 (an\n# invalid manifest) never do");
    assert_eq!(value("RestartPreventExitStatus"), "1 2");
    assert_eq!(value("Restart"), "on-failure");
    says("the delay grows from 15 s to 5 min over 6 steps");
    assert_eq!(value("RestartSec"), "15s");
    assert_eq!(value("RestartMaxDelaySec"), "5min");
    assert_eq!(value("RestartSteps"), "6");
    assert_eq!(value("RestartMode"), "direct");
    // One capability.
    says("Only CAP_CHOWN");
    assert_eq!(value("CapabilityBoundingSet"), "CAP_CHOWN");
    assert_eq!(value("AmbientCapabilities"), "");
    // The output directories: made by mkdir with mode 0700, writable, not RuntimeDirectory=.
    says("makes them on the first start (mode 0700)");
    assert_eq!(
        value("ExecStartPre"),
        "+/usr/bin/mkdir -p -m 0700 /run/bootsecrets /run/credstore"
    );
    assert_eq!(value("ReadWritePaths"), "-/run/bootsecrets -/run/credstore");
    assert!(!unit.contains("\nRuntimeDirectory="));
    // A private /dev, /tmp and /var/tmp; no core dumps; files private until their mode is set.
    says("A private /dev with only the pseudo-devices");
    assert_eq!(value("PrivateDevices"), "yes");
    assert_eq!(value("PrivateTmp"), "yes");
    says("No core dumps");
    assert_eq!(value("LimitCORE"), "0");
    says("private until it sets their final mode");
    assert_eq!(value("UMask"), "0077");
    // The journal: the native protocol first, stderr the fallback.
    says("journal's native socket");
    assert_eq!(value("StandardError"), "journal");
}
