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
    for (heading, probe) in &probes {
        let part = section(&doc, heading);
        for key in expected_names(probe) {
            if !part.contains(&format!("| `{key}` |")) {
                missing.push(format!("{key} (under {heading})"));
            }
        }
    }
    // Top-level tables and backend types.
    for key in expected_names("__probe__ = 1\n") {
        let marker = match key.as_str() {
            "backend" => "[backend.NAME]".to_string(),
            "secret" => "[[secret]]".to_string(),
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
