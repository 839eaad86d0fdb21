//! `bootsecrets render`: the Butane snippet and the matching Ignition config that install
//! bootsecrets on a node, generated from one definition.
//!
//! The unit files under `units/` are compiled in and are the only copy of their text; the Ignition
//! side is built with the `ignition-config` crate (spec 3.3.0, what Butane's flatcar 1.0.0 and
//! fcos 1.4.0 emit and what every current node and Debian's Ignition 2.14 accept).

use anyhow::{Context, Result, bail};
use base64::Engine;
use ignition_config::v3_3 as ign;
use std::fmt::Write;

pub use crate::units::{
    KUBELET_DROPIN, KUBELET_DROPIN_NAME, REFRESH_TIMER, REFRESH_TIMER_NAME, REFRESH_UNIT,
    REFRESH_UNIT_NAME, UNIT, UNIT_NAME,
};
pub const BINARY_PATH: &str = "/opt/bin/bootsecrets";
pub const MANIFEST_PATH: &str = "/etc/bootsecrets/manifest.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// Flatcar Container Linux (Butane `variant: flatcar`, `version: 1.0.0`).
    Flatcar,
    /// Fedora CoreOS (Butane `variant: fcos`, `version: 1.4.0`).
    Fcos,
}

impl Variant {
    fn butane(self) -> (&'static str, &'static str) {
        match self {
            Variant::Flatcar => ("flatcar", "1.0.0"),
            Variant::Fcos => ("fcos", "1.4.0"),
        }
    }
}

/// Everything a rendering needs.
#[derive(Debug, Clone)]
pub struct Install {
    pub variant: Variant,
    pub binary_url: String,
    /// Hex sha512 of the binary at `binary_url`.
    pub binary_sha512: String,
    /// The manifest text written to /etc/bootsecrets/manifest.toml (references only).
    pub manifest: String,
    /// Also install the kubelet drop-in (for a kubelet.service owned by someone else).
    pub kubelet_dropin: bool,
    /// Also install bootsecrets-refresh.service and enable its timer.
    pub refresh: bool,
}

impl Install {
    pub fn validate(&self) -> Result<()> {
        let h = &self.binary_sha512;
        if h.len() != 128 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("--binary-sha512 must be 128 hex digits (the output of sha512sum)");
        }
        if !(self.binary_url.starts_with("https://") || self.binary_url.starts_with("http://"))
            || self.binary_url.chars().any(char::is_whitespace)
        {
            bail!("--binary-url must be an http:// or https:// URL");
        }
        crate::manifest::parse(&self.manifest)
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
            .context("the manifest to embed is not valid")?;
        Ok(())
    }

    fn hash(&self) -> String {
        format!("sha512-{}", self.binary_sha512.to_ascii_lowercase())
    }
}

/// Whether `text` survives a YAML literal block (`|`, clip chomping, indentation auto-detected)
/// unchanged in YAML 1.1 and 1.2 parsers (Butane's go-yaml, PyYAML): printable characters,
/// tab and `\n` only (no `\r`, no other control character, none of the YAML 1.1 line breaks
/// U+0085, U+2028, U+2029, no U+FEFF, U+FFFE, U+FFFF); no whitespace-only line; the first line
/// with content not indented (the block's indentation is detected from it); and exactly one final
/// `\n` (clip chomping adds one and drops the rest).
pub fn literal_block_safe(text: &str) -> bool {
    let Some(body) = text.strip_suffix('\n') else {
        return false;
    };
    if body.is_empty() || body.ends_with('\n') {
        return false;
    }
    let printable = |c: char| {
        c == '\t'
            || c == '\n'
            || (' '..='~').contains(&c)
            || (c >= '\u{A0}'
                && !matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{FEFF}' | '\u{FFFE}' | '\u{FFFF}'
                ))
    };
    if !text.chars().all(printable) {
        return false;
    }
    let blank = |l: &str| l.chars().all(|c| c == ' ' || c == '\t');
    if body.split('\n').any(|l| !l.is_empty() && blank(l)) {
        return false;
    }
    body.split('\n')
        .find(|l| !l.is_empty())
        .is_some_and(|l| !l.starts_with([' ', '\t']))
}

/// `text` as a YAML double-quoted scalar made of printable ASCII only: `"`, `\`, tab and line
/// feed as `\"`, `\\`, `\t`, `\n`, every other character outside printable ASCII as `\uXXXX`
/// or `\UXXXXXXXX`. After each `\n` with more text to come, the scalar continues on a new line
/// indented by `indent` spaces (an escaped line break, which adds nothing; a space that would
/// start such a line is written `\u0020`, as YAML drops a continuation line's leading blanks).
pub fn double_quoted(text: &str, indent: usize) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    let mut line_start = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            ' ' if line_start => out.push_str("\\u0020"),
            ' '..='~' => out.push(c),
            c if u32::from(c) <= 0xFFFF => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08X}", u32::from(c));
            }
        }
        line_start = c == '\n' && indent > 0 && chars.peek().is_some();
        if line_start {
            out.push_str("\\\n");
            out.extend(std::iter::repeat_n(' ', indent));
        }
    }
    out.push('"');
    out
}

/// Writes ` VALUE` and a line break after a mapping key (`key:` is already written): `text` as a
/// literal block indented by `indent` spaces when [`literal_block_safe`], else as a
/// [`double_quoted`] scalar. Either way a YAML parser reads back exactly `text`.
fn scalar(out: &mut String, indent: usize, text: &str) {
    if literal_block_safe(text) {
        out.push_str(" |\n");
        let pad = " ".repeat(indent);
        for line in text.split_terminator('\n') {
            if !line.is_empty() {
                out.push_str(&pad);
                out.push_str(line);
            }
            out.push('\n');
        }
    } else {
        out.push(' ');
        out.push_str(&double_quoted(text, indent));
        out.push('\n');
    }
}

/// The Butane snippet.
pub fn butane(i: &Install) -> Result<String> {
    i.validate()?;
    let (variant, version) = i.variant.butane();
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Generated by `bootsecrets render butane`: installs bootsecrets, its manifest and its unit.\n\
         # The manifest names secrets, it never holds one: like all of this config it is readable\n\
         # from instance metadata.\n\
         variant: {variant}\nversion: {version}\nstorage:\n  files:"
    );
    let _ = writeln!(
        o,
        "    - path: {BINARY_PATH}\n      mode: 0755\n      contents:\n        source: {}\n        verification:\n          hash: {}",
        double_quoted(&i.binary_url, 0),
        i.hash()
    );
    let _ = write!(
        o,
        "    - path: {MANIFEST_PATH}\n      mode: 0644\n      contents:\n        inline:"
    );
    scalar(&mut o, 10, &i.manifest);
    let _ = write!(
        o,
        "systemd:\n  units:\n    - name: {UNIT_NAME}\n      enabled: true\n      contents:"
    );
    scalar(&mut o, 8, UNIT);
    if i.refresh {
        let _ = write!(o, "    - name: {REFRESH_UNIT_NAME}\n      contents:");
        scalar(&mut o, 8, REFRESH_UNIT);
        let _ = write!(
            o,
            "    - name: {REFRESH_TIMER_NAME}\n      enabled: true\n      contents:"
        );
        scalar(&mut o, 8, REFRESH_TIMER);
    }
    if i.kubelet_dropin {
        let _ = write!(
            o,
            "    - name: kubelet.service\n      dropins:\n        - name: {KUBELET_DROPIN_NAME}\n          contents:"
        );
        scalar(&mut o, 12, KUBELET_DROPIN);
    }
    Ok(o)
}

fn data_url(text: &str) -> String {
    format!(
        "data:;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
    )
}

/// The Ignition config (spec 3.3.0) equivalent to [`butane`].
pub fn ignition(i: &Install) -> Result<String> {
    i.validate()?;
    let mut config = ign::Config::new(ign::Ignition {
        version: Some("3.3.0".into()),
        ..Default::default()
    });

    let mut binary = ign::File::new(BINARY_PATH.into());
    binary.mode = Some(0o755);
    binary.contents = Some(ign::Resource {
        source: Some(i.binary_url.clone()),
        verification: Some(ign::Verification {
            hash: Some(i.hash()),
        }),
        ..Default::default()
    });
    let mut manifest = ign::File::new(MANIFEST_PATH.into());
    manifest.mode = Some(0o644);
    manifest.contents = Some(ign::Resource {
        source: Some(data_url(&i.manifest)),
        ..Default::default()
    });
    config.storage = Some(ign::Storage {
        files: Some(vec![binary, manifest]),
        ..Default::default()
    });

    let mut unit = ign::Unit::new(UNIT_NAME.into());
    unit.enabled = Some(true);
    unit.contents = Some(UNIT.to_string());
    let mut units = vec![unit];
    if i.refresh {
        let mut service = ign::Unit::new(REFRESH_UNIT_NAME.into());
        service.contents = Some(REFRESH_UNIT.to_string());
        let mut timer = ign::Unit::new(REFRESH_TIMER_NAME.into());
        timer.enabled = Some(true);
        timer.contents = Some(REFRESH_TIMER.to_string());
        units.push(service);
        units.push(timer);
    }
    if i.kubelet_dropin {
        let mut kubelet = ign::Unit::new("kubelet.service".into());
        let mut dropin = ign::Dropin::new(KUBELET_DROPIN_NAME.into());
        dropin.contents = Some(KUBELET_DROPIN.to_string());
        kubelet.dropins = Some(vec![dropin]);
        units.push(kubelet);
    }
    config.systemd = Some(ign::Systemd { units: Some(units) });
    // The crate serialises unset options as `null`; Butane omits them, and so do we.
    let mut value =
        serde_json::to_value(&config).context("cannot serialise the Ignition config")?;
    drop_nulls(&mut value);
    let mut s =
        serde_json::to_string_pretty(&value).context("cannot serialise the Ignition config")?;
    s.push('\n');
    Ok(s)
}

fn drop_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads back a scalar written by [`double_quoted`], as a YAML parser does for the subset
    /// it writes: the escapes, and escaped line breaks whose next line's leading blanks are
    /// dropped.
    fn unquote(yaml: &str) -> String {
        let inner = yaml.strip_prefix('"').unwrap().strip_suffix('"').unwrap();
        let mut out = String::new();
        let mut it = inner.chars();
        while let Some(c) = it.next() {
            if c != '\\' {
                assert!(c != '"' && c != '\n', "unescaped {c:?} in {yaml:?}");
                out.push(c);
                continue;
            }
            let hex = |it: &mut std::str::Chars<'_>, n| {
                let h: String = it.take(n).collect();
                char::from_u32(u32::from_str_radix(&h, 16).unwrap()).unwrap()
            };
            match it.next().unwrap() {
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                't' => out.push('\t'),
                'n' => out.push('\n'),
                'u' => out.push(hex(&mut it, 4)),
                'U' => out.push(hex(&mut it, 8)),
                '\n' => {
                    let rest = it.as_str().trim_start_matches([' ', '\t']);
                    it = rest.chars();
                }
                e => panic!("unexpected escape \\{e} in {yaml:?}"),
            }
        }
        out
    }

    #[test]
    fn literal_blocks_only_for_text_they_carry_unchanged() {
        for safe in [
            "a\n",
            "[settings]\n\nx = 1\n",
            "\n\nfirst content after empty lines\n",
            "a\n  indented later\n\tand tabbed\n",
            "tab\tinside and trailing blanks \t\n",
            "# café, 日本, \u{1F511}, \u{A0}\n",
        ] {
            assert!(literal_block_safe(safe), "{safe:?}");
        }
        for unsafe_ in [
            "",
            "\n",
            "\n\n",
            "no final newline",
            "two final newlines\n\n",
            " indented first line\n",
            "\tindented first line\n",
            "\n  indented first content\n",
            "crlf\r\n",
            "lone\rcr\n",
            "nel\u{85}\n",
            "line\u{2028}separator\n",
            "paragraph\u{2029}separator\n",
            "\u{FEFF}bom\n",
            "not a character\u{FFFE}\n",
            "not a character\u{FFFF}\n",
            "del\u{7F}\n",
            "nul\0\n",
            "escape\u{1B}[0m\n",
            "c1\u{9B}\n",
            "a\n  \nb\n",
            "a\n\t\nb\n",
            "a\n \t \n",
        ] {
            assert!(!literal_block_safe(unsafe_), "{unsafe_:?}");
        }
    }

    #[test]
    fn the_shipped_units_stay_literal_blocks() {
        for unit in [UNIT, REFRESH_UNIT, REFRESH_TIMER, KUBELET_DROPIN] {
            assert!(literal_block_safe(unit));
        }
    }

    #[test]
    fn double_quoted_escapes_everything_outside_printable_ascii() {
        assert_eq!(double_quoted("plain", 4), r#""plain""#);
        assert_eq!(double_quoted(r#"q"b\"#, 0), r#""q\"b\\""#);
        assert_eq!(
            double_quoted("\t\r\0\u{7F}", 0),
            r#""\t\u000D\u0000\u007F""#
        );
        assert_eq!(
            double_quoted("\u{85}\u{A0}é\u{2028}\u{2029}\u{FEFF}\u{FFFF}", 0),
            r#""\u0085\u00A0\u00E9\u2028\u2029\uFEFF\uFFFF""#
        );
        assert_eq!(double_quoted("\u{1F511}", 0), r#""\U0001F511""#);
        // No line breaks at indent 0; at indent n, one after each `\n` that has text after it.
        assert_eq!(double_quoted("a\nb\n", 0), r#""a\nb\n""#);
        assert_eq!(
            double_quoted("a\n b\n\n", 2),
            "\"a\\n\\\n  \\u0020b\\n\\\n  \\n\""
        );
        assert_eq!(double_quoted("", 2), r#""""#);
    }

    #[test]
    fn scalars_are_written_as_blocks_or_quoted() {
        let mut o = String::from("k:");
        scalar(&mut o, 2, "a\n\n b\n");
        assert_eq!(o, "k: |\n  a\n\n   b\n");
        let mut o = String::from("k:");
        scalar(&mut o, 2, " a\r\n");
        assert_eq!(o, "k: \" a\\u000D\\n\"\n");
    }

    proptest! {
        #[test]
        fn double_quoted_round_trips_as_printable_ascii(text in any::<String>(), indent in 0usize..12) {
            let q = double_quoted(&text, indent);
            prop_assert!(q.chars().all(|c| c == '\n' || (' '..='~').contains(&c)), "{}", q);
            prop_assert_eq!(unquote(&q), text);
        }

        #[test]
        fn double_quoted_round_trips_line_oriented_text(
            lines in proptest::collection::vec("[ \t\r\u{85}\u{2028}\u{2029}a#\"\\\\:-]{0,6}", 0..6),
            indent in 0usize..12,
        ) {
            let text = lines.join("\n");
            prop_assert_eq!(unquote(&double_quoted(&text, indent)), text);
        }
    }
}
