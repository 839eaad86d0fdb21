//! `bootsecrets render`: the Butane snippet and the matching Ignition config that install
//! bootsecrets on a node, generated from one definition.
//!
//! The unit files under `units/` are compiled in and are the only copy of their text; the Ignition
//! side is built with the `ignition-config` crate (spec 3.3.0, what Butane's flatcar 1.0.0 and
//! fcos 1.4.0 emit and what every current node and Debian's Ignition 2.14 accept).

use crate::manifest::Manifest;
use crate::plan::{CREDSTORE_ROOT, DEFAULT_OUTPUT_ROOT};
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use ignition_config::v3_3 as ign;
use std::fmt::Write;

pub use crate::units::{
    KUBELET_DROPIN, KUBELET_DROPIN_NAME, REFRESH_TIMER, REFRESH_TIMER_NAME, REFRESH_UNIT,
    REFRESH_UNIT_NAME, UNIT, UNIT_NAME,
};
pub const BINARY_PATH: &str = "/opt/bin/bootsecrets";
pub const MANIFEST_PATH: &str = "/etc/bootsecrets/manifest.toml";
/// The drop-in that lets the units write to an output root other than the shipped ones.
pub const OUTPUT_ROOT_DROPIN_NAME: &str = "10-output-root.conf";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// Flatcar Container Linux (Butane `variant: flatcar`, `version: 1.0.0`).
    Flatcar,
    /// Fedora CoreOS (Butane `variant: fcos`, `version: 1.4.0`).
    Fcos,
}

impl Variant {
    /// The Butane variant and version that emit `spec`.
    fn butane(self, spec: Spec) -> (&'static str, &'static str) {
        match (self, spec) {
            (Variant::Flatcar, Spec::V3_3) => ("flatcar", "1.0.0"),
            (Variant::Flatcar, Spec::V3_4) => ("flatcar", "1.1.0"),
            (Variant::Fcos, Spec::V3_3) => ("fcos", "1.4.0"),
            (Variant::Fcos, Spec::V3_4) => ("fcos", "1.5.0"),
        }
    }
}

/// The Ignition spec a rendering targets: 3.3.0 (every current Flatcar and Fedora CoreOS, and
/// Flatcar LTS), or 3.4.0 when the binary's URL needs it (an `arn:` S3 URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    V3_3,
    V3_4,
}

impl Spec {
    pub fn version(self) -> &'static str {
        match self {
            Spec::V3_3 => "3.3.0",
            Spec::V3_4 => "3.4.0",
        }
    }
}

/// Checks a `--binary-url` for a scheme Ignition fetches (spec 3.3.0: `http`, `https`, `tftp`,
/// `s3`, `gs`, `data`; 3.4.0 adds `arn`), and returns the spec it needs. `s3://`, `arn:` and
/// `gs://` are fetched with the instance's own identity (the instance profile, the service
/// account); an Azure Blob `https://ACCOUNT.blob.core.windows.net/...` URL with its managed
/// identity. The sha512 is verified whatever the scheme.
pub fn binary_url_spec(u: &str) -> Result<Spec, String> {
    if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("--binary-url must not contain whitespace".into());
    }
    let after = |prefix: &str| u.strip_prefix(prefix);
    let bucket_and_key = |rest: &str| {
        rest.split_once('/')
            .is_some_and(|(b, k)| !b.is_empty() && !k.is_empty() && !k.ends_with('/'))
    };
    if let Some(rest) = after("s3://").or_else(|| after("gs://")) {
        return if bucket_and_key(rest) {
            Ok(Spec::V3_3)
        } else {
            Err(format!(
                "--binary-url `{u}` must name a bucket and an object: SCHEME://BUCKET/KEY"
            ))
        };
    }
    if let Some(rest) = after("arn:") {
        // arn:PARTITION:s3:::BUCKET/KEY, or an access point's
        // arn:PARTITION:s3:REGION:ACCOUNT:accesspoint/NAME/object/KEY.
        let f: Vec<&str> = rest.splitn(5, ':').collect();
        let ok = f.len() == 5
            && f[0].starts_with("aws")
            && f[1] == "s3"
            && ((f[2].is_empty() && f[3].is_empty() && bucket_and_key(f[4]))
                || (!f[2].is_empty()
                    && f[3].len() == 12
                    && f[3].bytes().all(|b| b.is_ascii_digit())
                    && f[4].starts_with("accesspoint/")
                    && f[4].contains("/object/")));
        return if ok {
            Ok(Spec::V3_4)
        } else {
            Err(format!(
                "--binary-url `{u}` is not an S3 object ARN (arn:aws:s3:::BUCKET/KEY or \
                 arn:aws:s3:REGION:ACCOUNT:accesspoint/NAME/object/KEY)"
            ))
        };
    }
    if let Some(rest) = after("data:") {
        return if rest.contains(',') {
            Ok(Spec::V3_3)
        } else {
            Err(format!("--binary-url `{u}` is not a data: URL"))
        };
    }
    match url::Url::parse(u) {
        Ok(p) if matches!(p.scheme(), "http" | "https" | "tftp") && p.host_str().is_some() => {
            Ok(Spec::V3_3)
        }
        _ => Err(format!(
            "--binary-url `{u}` is not a URL Ignition fetches: use https://, http://, tftp://, \
             s3://BUCKET/KEY, gs://BUCKET/OBJECT, arn:aws:s3:::BUCKET/KEY or data:"
        )),
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
        self.checked().map(drop)
    }

    /// Validates the inputs; returns where the manifest's secrets go.
    fn checked(&self) -> Result<OutputRoot> {
        let h = &self.binary_sha512;
        if h.len() != 128 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("--binary-sha512 must be 128 hex digits (the output of sha512sum)");
        }
        binary_url_spec(&self.binary_url).map_err(|e| anyhow!(e))?;
        let manifest = crate::manifest::parse(&self.manifest)
            .map_err(|e| anyhow!("{}", e.to_string().trim_end()))
            .context("the manifest to embed is not valid")?;
        OutputRoot::of(&manifest).context(
            "the manifest to embed is not valid: the units cannot be given write access to its \
             output root",
        )
    }

    /// The Ignition spec this rendering targets.
    pub fn spec(&self) -> Spec {
        binary_url_spec(&self.binary_url).unwrap_or(Spec::V3_3)
    }

    fn hash(&self) -> String {
        format!("sha512-{}", self.binary_sha512.to_ascii_lowercase())
    }
}

/// Where the manifest's secrets go, as the units must know it: `ProtectSystem=strict` leaves them
/// only `/run/bootsecrets` and `/run/credstore` to write to, anything else needs a drop-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputRoot {
    /// `/run/bootsecrets` or `/run/credstore`: the shipped units create and may write both.
    Shipped,
    /// Another directory under `/run` (the path relative to `/run`), which systemd creates for
    /// bootsecrets.service on the tmpfs `/run` (`RuntimeDirectory=`).
    Run(String),
    /// Anywhere else: a tmpfs mounted before the units start.
    Elsewhere(String),
}

impl OutputRoot {
    /// `settings.output_root`, or the layout's default, resolved as `run` resolves it (a trailing
    /// `/` dropped). Refuses what `check` refuses about the path, a path under `/var/run`, and
    /// characters a unit file would not take literally.
    pub fn of(m: &Manifest) -> Result<OutputRoot> {
        let s = &m.settings;
        let default = match s.layout.as_deref() {
            None | Some("files") => DEFAULT_OUTPUT_ROOT,
            Some("credstore") => CREDSTORE_ROOT,
            Some(o) => bail!("settings.layout `{o}` is not one of \"files\", \"credstore\""),
        };
        let given = s.output_root.as_deref().unwrap_or(default);
        // What `check` and `run` refuse (relative, `/`, traversal, a shared system directory).
        let path = crate::plan::validate_root(given)
            .map_err(|e| anyhow!("settings.{e}"))?
            .display()
            .to_string();
        if let Some(under) = path.strip_prefix("/var/run/") {
            bail!(
                "settings.output_root `{given}` is under /var/run, a symlink to /run: bootsecrets \
                 refuses a symlink on the way to its root; write `/run/{under}` instead"
            );
        }
        if let Some(c) = path
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || "/._-+@".contains(c)))
        {
            bail!(
                "settings.output_root `{given}` holds {c:?}, which the units' RuntimeDirectory= \
                 and ReadWritePaths= would not take literally; use only letters, digits, `.`, \
                 `_`, `-`, `+` and `@` in it"
            );
        }
        Ok(if path == DEFAULT_OUTPUT_ROOT || path == CREDSTORE_ROOT {
            OutputRoot::Shipped
        } else if let Some(under_run) = path.strip_prefix("/run/") {
            OutputRoot::Run(under_run.to_string())
        } else {
            OutputRoot::Elsewhere(path)
        })
    }

    /// The drop-in ([`OUTPUT_ROOT_DROPIN_NAME`]) that lets `unit` (bootsecrets.service or
    /// bootsecrets-refresh.service) write to this root; `None` for the shipped roots.
    pub fn dropin(&self, unit: &str) -> Option<String> {
        let head =
            "# Generated by `bootsecrets render`: write access to the manifest's output_root,";
        let boot = unit == UNIT_NAME;
        Some(match self {
            OutputRoot::Shipped => return None,
            OutputRoot::Run(rel) if boot => format!(
                "{head}\n\
                 # /run/{rel}, which is not one of the shipped /run/bootsecrets and /run/credstore.\n\
                 # systemd creates it on the tmpfs /run like them (RuntimeDirectoryMode=0700) and\n\
                 # keeps it when the unit stops (RuntimeDirectoryPreserve=yes); bootsecrets sets its\n\
                 # final mode and owner.\n\
                 [Service]\n\
                 RuntimeDirectory={rel}\n"
            ),
            OutputRoot::Run(rel) => format!(
                "{head}\n\
                 # /run/{rel}, created and kept by {UNIT_NAME}; \"-\": fine if it is missing.\n\
                 [Service]\n\
                 ReadWritePaths=-/run/{rel}\n"
            ),
            OutputRoot::Elsewhere(path) => format!(
                "{head}\n\
                 # {path}, which is outside /run. It must be a tmpfs (or a directory on one) that\n\
                 # exists and is mounted before this unit starts: this unit may write nowhere else\n\
                 # (ProtectSystem=strict), and bootsecrets refuses a root that is not on tmpfs.\n\
                 [Unit]\n\
                 RequiresMountsFor={path}\n\
                 \n\
                 [Service]\n\
                 ReadWritePaths={path}\n"
            ),
        })
    }
}

/// One systemd unit of a rendering: what both [`butane`] and [`ignition`] write.
struct UnitDef {
    name: &'static str,
    enabled: bool,
    contents: Option<&'static str>,
    /// (file name, contents) of its drop-ins.
    dropins: Vec<(&'static str, String)>,
}

/// The units a rendering installs, in order.
fn units(i: &Install, root: &OutputRoot) -> Vec<UnitDef> {
    let root_dropin = |unit: &str| {
        root.dropin(unit)
            .map(|text| (OUTPUT_ROOT_DROPIN_NAME, text))
            .into_iter()
            .collect::<Vec<_>>()
    };
    let mut units = vec![UnitDef {
        name: UNIT_NAME,
        enabled: true,
        contents: Some(UNIT),
        dropins: root_dropin(UNIT_NAME),
    }];
    if i.refresh {
        units.push(UnitDef {
            name: REFRESH_UNIT_NAME,
            enabled: false,
            contents: Some(REFRESH_UNIT),
            dropins: root_dropin(REFRESH_UNIT_NAME),
        });
        units.push(UnitDef {
            name: REFRESH_TIMER_NAME,
            enabled: true,
            contents: Some(REFRESH_TIMER),
            dropins: Vec::new(),
        });
    }
    if i.kubelet_dropin {
        units.push(UnitDef {
            name: "kubelet.service",
            enabled: false,
            contents: None,
            dropins: vec![(KUBELET_DROPIN_NAME, KUBELET_DROPIN.to_string())],
        });
    }
    units
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
    let root = i.checked()?;
    let (variant, version) = i.variant.butane(i.spec());
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
    o.push_str("systemd:\n  units:\n");
    for u in units(i, &root) {
        let _ = writeln!(o, "    - name: {}", u.name);
        if u.enabled {
            o.push_str("      enabled: true\n");
        }
        if let Some(text) = u.contents {
            o.push_str("      contents:");
            scalar(&mut o, 8, text);
        }
        if !u.dropins.is_empty() {
            o.push_str("      dropins:\n");
            for (name, text) in &u.dropins {
                let _ = write!(o, "        - name: {name}\n          contents:");
                scalar(&mut o, 12, text);
            }
        }
    }
    Ok(o)
}

fn data_url(text: &str) -> String {
    format!(
        "data:;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
    )
}

/// The Ignition config (spec 3.3.0, or 3.4.0 for an `arn:` binary URL) equivalent to
/// [`butane`].
pub fn ignition(i: &Install) -> Result<String> {
    let root = i.checked()?;
    // The 3.3.0 types serve 3.4.0 as well: every field written here means the same in both.
    let mut config = ign::Config::new(ign::Ignition {
        version: Some(i.spec().version().into()),
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

    let units = units(i, &root)
        .into_iter()
        .map(|u| {
            let mut unit = ign::Unit::new(u.name.into());
            unit.enabled = u.enabled.then_some(true);
            unit.contents = u.contents.map(str::to_string);
            if !u.dropins.is_empty() {
                let dropins = u.dropins.into_iter().map(|(name, text)| {
                    let mut dropin = ign::Dropin::new(name.into());
                    dropin.contents = Some(text);
                    dropin
                });
                unit.dropins = Some(dropins.collect());
            }
            unit
        })
        .collect();
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
        for root in [
            OutputRoot::Run("k8s/secrets".into()),
            OutputRoot::Elsewhere("/srv/secrets".into()),
        ] {
            for unit in [UNIT_NAME, REFRESH_UNIT_NAME] {
                assert!(literal_block_safe(&root.dropin(unit).unwrap()));
            }
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

    fn root_of(settings: &str) -> Result<OutputRoot> {
        OutputRoot::of(&crate::manifest::parse(settings).unwrap())
    }

    #[test]
    fn output_roots_resolve_as_run_resolves_them() {
        for shipped in [
            "",
            "[settings]\nlayout = \"files\"\n",
            "[settings]\nlayout = \"credstore\"\n",
            "[settings]\noutput_root = \"/run/bootsecrets/\"\n",
            "[settings]\noutput_root = \"/run/credstore\"\n",
        ] {
            assert_eq!(root_of(shipped).unwrap(), OutputRoot::Shipped, "{shipped}");
        }
        assert_eq!(
            root_of("[settings]\nlayout = \"credstore\"\noutput_root = \"/run/k8s/creds/\"\n")
                .unwrap(),
            OutputRoot::Run("k8s/creds".into())
        );
        assert_eq!(
            root_of("[settings]\noutput_root = \"/srv/secrets\"\n").unwrap(),
            OutputRoot::Elsewhere("/srv/secrets".into())
        );
    }

    #[test]
    fn output_roots_a_unit_cannot_take_are_refused_with_the_cause() {
        for (root, says) in [
            ("run/x", "must be an absolute path"),
            ("/", "must not be `/`"),
            ("/run", "a directory the system shares"),
            ("/run/user/", "a directory the system shares"),
            ("/run/systemd", "a directory the system shares"),
            ("/etc", "a directory the system shares"),
            ("/run//x", "empty component"),
            ("/run/x/../y", "`..` component"),
            ("/var/run/x", "write `/run/x` instead"),
            ("/run/a b", "would not take literally"),
            ("/run/%n", "would not take literally"),
            ("/run/a\\\\b", "would not take literally"),
            ("/run/x:y", "would not take literally"),
            ("/run/caf\u{e9}", "would not take literally"),
        ] {
            let err = root_of(&format!("[settings]\noutput_root = \"{root}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{root}: {err}");
        }
        let err = root_of("[settings]\nlayout = \"flat\"\n").unwrap_err();
        assert!(err.to_string().contains("settings.layout `flat`"), "{err}");
    }

    #[test]
    fn the_dropins_give_exactly_the_root() {
        assert_eq!(OutputRoot::Shipped.dropin(UNIT_NAME), None);
        assert_eq!(OutputRoot::Shipped.dropin(REFRESH_UNIT_NAME), None);
        let directives = |text: String| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .map(str::to_string)
                .collect()
        };
        let run = OutputRoot::Run("k8s/secrets".into());
        assert_eq!(
            directives(run.dropin(UNIT_NAME).unwrap()),
            ["[Service]", "RuntimeDirectory=k8s/secrets"]
        );
        assert_eq!(
            directives(run.dropin(REFRESH_UNIT_NAME).unwrap()),
            ["[Service]", "ReadWritePaths=-/run/k8s/secrets"]
        );
        let elsewhere = OutputRoot::Elsewhere("/srv/secrets".into());
        for unit in [UNIT_NAME, REFRESH_UNIT_NAME] {
            let text = elsewhere.dropin(unit).unwrap();
            assert!(text.contains("must be a tmpfs"), "{text}");
            assert_eq!(
                directives(text),
                [
                    "[Unit]",
                    "RequiresMountsFor=/srv/secrets",
                    "[Service]",
                    "ReadWritePaths=/srv/secrets"
                ]
            );
        }
    }

    #[test]
    fn binary_urls_ignition_fetches_and_the_spec_they_need() {
        for (u, spec) in [
            ("https://artifacts.example.com/bootsecrets", Spec::V3_3),
            ("http://10.0.2.100/bootsecrets", Spec::V3_3),
            ("tftp://10.0.0.1/bootsecrets", Spec::V3_3),
            ("s3://my-bucket/bootsecrets/v1/bootsecrets", Spec::V3_3),
            ("gs://my-bucket/bootsecrets", Spec::V3_3),
            (
                "https://acct.blob.core.windows.net/bin/bootsecrets",
                Spec::V3_3,
            ),
            ("data:;base64,AAAA", Spec::V3_3),
            ("arn:aws:s3:::my-bucket/bootsecrets", Spec::V3_4),
            ("arn:aws-us-gov:s3:::b/k", Spec::V3_4),
            (
                "arn:aws:s3:us-west-2:123456789012:accesspoint/ap/object/bootsecrets",
                Spec::V3_4,
            ),
        ] {
            assert_eq!(binary_url_spec(u), Ok(spec), "{u}");
        }
        for bad in [
            "s3://bucket-only",
            "s3://bucket/",
            "gs:///key",
            "ftp://x/y",
            "https://",
            "arn:aws:iam::123456789012:role/x",
            "arn:aws:s3:::bucket",
            "file:///opt/bootsecrets",
            "https://x/a b",
            "data:nocomma",
        ] {
            assert!(binary_url_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_arn_rendering_is_a_valid_3_4_config() {
        let i = Install {
            variant: Variant::Flatcar,
            binary_url: "arn:aws:s3:::my-bucket/bootsecrets".into(),
            binary_sha512: "0".repeat(128),
            manifest: "[backend.a]\ntype = \"aws\"\n[[secret]]\npath = \"x\"\nref = \"x\"\n".into(),
            kubelet_dropin: true,
            refresh: true,
        };
        let json = ignition(&i).unwrap();
        // Parsed by the 3.4.0 types, with no key they do not know.
        let (cfg, warnings) = ignition_config::Config::parse_str(&json).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(matches!(cfg, ignition_config::Config::V3_4(_)), "{cfg:?}");
        assert!(
            butane(&i)
                .unwrap()
                .contains("variant: flatcar\nversion: 1.1.0\n")
        );
    }
}
