//! Files assembled from secrets: a template's text with placeholders, each replaced by a
//! secret's value (or one key of it), or by a value of the node, escaped for the file's format.
//!
//! Substitution only, no logic. A placeholder is `{{ SOURCE [| base64] }}`:
//! - `secret "PATH"`: the value of the `[[secret]]` whose `path` is PATH, as it is written;
//! - `secret "PATH" key "KEY"`: one top-level key of that secret's JSON object (every key taken
//!   from one secret comes from the one fetch of it, so from one version);
//! - `node "hostname"`: the node's host name;
//! - `"TEXT"`: TEXT as it is, never escaped (`{{ "{{" }}` writes a literal `{{`).
//!
//! `| base64` encodes the value (standard alphabet, padded) before it is escaped. In `yaml` and
//! `json` a value becomes a complete double-quoted string, in `env` a double-quoted value that
//! systemd's `EnvironmentFile=` and a POSIX shell read back unchanged; `verbatim` inserts the
//! bytes as they are. The rendered file is built in one zeroizing buffer of its final size: no
//! value is copied anywhere that outlives the render.

use crate::secret::Secret;
use base64::Engine;
use zeroize::Zeroizing;

/// How each value is escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
    Env,
    Verbatim,
}

impl Format {
    pub const NAMES: &'static str = "\"yaml\", \"json\", \"env\", \"verbatim\"";

    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "yaml" => Format::Yaml,
            "json" => Format::Json,
            "env" => Format::Env,
            "verbatim" => Format::Verbatim,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Yaml => "yaml",
            Format::Json => "json",
            Format::Env => "env",
            Format::Verbatim => "verbatim",
        }
    }
}

/// A value of the node a placeholder may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeValue {
    Hostname,
}

impl NodeValue {
    pub const NAMES: &'static str = "\"hostname\"";

    fn parse(s: &str) -> Option<NodeValue> {
        match s {
            "hostname" => Some(NodeValue::Hostname),
            _ => None,
        }
    }

    /// The value on this node.
    pub fn read(self) -> Result<String, String> {
        match self {
            NodeValue::Hostname => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim_end().to_string())
                .map_err(|e| format!("cannot read the host name (/proc/sys/kernel/hostname): {e}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Secret { path: String, key: Option<String> },
    Node(NodeValue),
    Literal(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub source: Source,
    pub base64: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// A placeholder, and whether it stands inside a double-quoted string of the text (then
    /// its value is escaped for the inside of that string, without quotes of its own).
    Value(Placeholder, bool),
}

/// A parsed template. Its text comes from the manifest, so it holds no value and may be
/// printed; only [`Template::render`]'s result holds values.
#[derive(Debug, Clone)]
pub struct Template {
    pub format: Format,
    parts: Vec<Part>,
}

/// The tokens of a placeholder's inside: words and double-quoted strings.
fn tokens(inside: &str) -> Result<Vec<(bool, String)>, String> {
    let mut out = Vec::new();
    let mut rest = inside.trim_start();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('"') {
            let end = r
                .find('"')
                .ok_or_else(|| "a string is not closed (a `\"` is missing)".to_string())?;
            out.push((true, r[..end].to_string()));
            rest = &r[end + 1..];
        } else if let Some(r) = rest.strip_prefix('|') {
            out.push((false, "|".to_string()));
            rest = r;
        } else {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"' || c == '|')
                .unwrap_or(rest.len());
            out.push((false, rest[..end].to_string()));
            rest = &rest[end..];
        }
        rest = rest.trim_start();
    }
    Ok(out)
}

/// Whether the text parsed so far leaves the current line inside a double-quoted string (an odd
/// number of unescaped `"` since the last line break; placeholders count as complete strings).
fn in_double_quotes(parts: &[Part]) -> bool {
    let mut quotes = 0;
    for part in parts.iter().rev() {
        let Part::Text(t) = part else { continue };
        let (line, done) = match t.rfind('\n') {
            Some(i) => (&t[i + 1..], true),
            None => (t.as_str(), false),
        };
        let b = line.as_bytes();
        quotes += (0..b.len())
            .filter(|&i| b[i] == b'"' && (i == 0 || b[i - 1] != b'\\'))
            .count();
        if done {
            break;
        }
    }
    quotes % 2 == 1
}

/// Where the `}}` closing the placeholder that `s` starts with is (quoted strings skipped).
fn closing(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let (mut i, mut quoted) = (2, false);
    while i + 1 < b.len() {
        match b[i] {
            b'"' => quoted = !quoted,
            b'}' if !quoted && b[i + 1] == b'}' => return Some(i),
            b'\n' if !quoted => return None,
            _ => {}
        }
        i += 1;
    }
    None
}

fn placeholder(inside: &str) -> Result<Placeholder, String> {
    let toks = tokens(inside)?;
    let word = |i: usize| toks.get(i).filter(|(q, _)| !q).map(|(_, w)| w.as_str());
    let string = |i: usize| toks.get(i).filter(|(q, _)| *q).map(|(_, s)| s.clone());
    let (source, used) = match word(0) {
        Some("secret") => {
            let path = string(1).ok_or("`secret` takes a quoted path: `secret \"PATH\"`")?;
            if word(2) == Some("key") {
                let key = string(3).ok_or("`key` takes a quoted name: `key \"NAME\"`")?;
                if key.is_empty() {
                    return Err("`key` must not be empty".into());
                }
                (
                    Source::Secret {
                        path,
                        key: Some(key),
                    },
                    4,
                )
            } else {
                (Source::Secret { path, key: None }, 2)
            }
        }
        Some("node") => {
            let name = string(1).ok_or("`node` takes a quoted name: `node \"hostname\"`")?;
            let v = NodeValue::parse(&name)
                .ok_or_else(|| format!("`node \"{name}\"` is not one of {}", NodeValue::NAMES))?;
            (Source::Node(v), 2)
        }
        Some(w) => {
            return Err(format!("`{w}` is not `secret`, `node` or a quoted string"));
        }
        None => match string(0) {
            Some(s) => (Source::Literal(s), 1),
            None => return Err("an empty placeholder".into()),
        },
    };
    let base64 = match (word(used), word(used + 1), toks.len() - used) {
        (_, _, 0) => false,
        (Some("|"), Some("base64"), 2) if !matches!(source, Source::Literal(_)) => true,
        _ => {
            return Err(
                "after the source, only `| base64` may follow (a literal is written as it is)"
                    .into(),
            );
        }
    };
    Ok(Placeholder { source, base64 })
}

impl Template {
    /// Parses `text`. Errors say where (the line) and what is wrong.
    pub fn parse(text: &str, format: Format) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        let line_of = |at: &str| text[..text.len() - at.len()].matches('\n').count() + 1;
        while let Some(open) = rest.find("{{") {
            let (before, after) = rest.split_at(open);
            let close = closing(after).ok_or_else(|| {
                format!("line {}: `{{{{` is not closed by `}}}}`", line_of(after))
            })?;
            let inside = &after[2..close];
            let p = placeholder(inside).map_err(|e| format!("line {}: {e}", line_of(after)))?;
            if !before.is_empty() {
                parts.push(Part::Text(before.to_string()));
            }
            let in_quotes = format != Format::Verbatim && in_double_quotes(&parts);
            if format != Format::Verbatim
                && !in_quotes
                && !matches!(p.source, Source::Literal(_))
                && before.ends_with('\'')
            {
                return Err(format!(
                    "line {}: `{{{{{inside}}}}}` is inside single quotes, which cannot hold every \
                     value (a `'` or a line break): write it bare, and it becomes a complete \
                     double-quoted string, or inside double quotes",
                    line_of(after)
                ));
            }
            parts.push(Part::Value(p, in_quotes));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { format, parts })
    }

    /// Every placeholder, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.parts.iter().filter_map(|p| match p {
            Part::Value(v, _) => Some(v),
            Part::Text(_) => None,
        })
    }

    /// The paths of the secrets it uses, each once, in order of first use.
    pub fn secret_paths(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in self.placeholders() {
            if let Source::Secret { path, .. } = &p.source
                && !out.contains(&path.as_str())
            {
                out.push(path);
            }
        }
        out
    }

    /// The file's content: every placeholder replaced. `secret(path)` gives a secret's value as
    /// fetched this run. Errors name the placeholder, never a value.
    pub fn render<'s>(
        &self,
        secret: &dyn Fn(&str) -> Option<&'s Secret>,
    ) -> Result<Secret, String> {
        let mut pieces: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        for part in &self.parts {
            let piece = match part {
                Part::Text(t) => Zeroizing::new(t.as_bytes().to_vec()),
                Part::Value(p, in_quotes) => self.value(p, *in_quotes, secret)?,
            };
            pieces.push(piece);
        }
        let mut out = Zeroizing::new(Vec::with_capacity(pieces.iter().map(|p| p.len()).sum()));
        for p in &pieces {
            out.extend_from_slice(p);
        }
        Ok(Secret::from_zeroizing(out))
    }

    fn value<'s>(
        &self,
        p: &Placeholder,
        in_quotes: bool,
        secret: &dyn Fn(&str) -> Option<&'s Secret>,
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        let (raw, what): (Zeroizing<Vec<u8>>, String) = match &p.source {
            Source::Literal(s) => return Ok(Zeroizing::new(s.as_bytes().to_vec())),
            Source::Node(n) => (
                Zeroizing::new(n.read()?.into_bytes()),
                "node \"hostname\"".to_string(),
            ),
            Source::Secret { path, key } => {
                let value = secret(path)
                    .ok_or_else(|| format!("secret `{path}` was not fetched in this run"))?;
                match key {
                    None => (
                        Zeroizing::new(value.expose().to_vec()),
                        format!("secret `{path}`"),
                    ),
                    Some(k) => {
                        let v = crate::extract::json_key(value, k).map_err(|e| {
                            format!(
                                "secret `{path}` key `{k}`: {}",
                                e.replace("the secret's", "its")
                            )
                        })?;
                        (v.into_bytes(), format!("secret `{path}` key `{k}`"))
                    }
                }
            }
        };
        let raw = if p.base64 {
            let engine = base64::engine::general_purpose::STANDARD;
            let mut out =
                Zeroizing::new(vec![0u8; base64::encoded_len(raw.len(), true).unwrap_or(0)]);
            let n = engine
                .encode_slice(&raw[..], &mut out[..])
                .map_err(|_| format!("{what}: too large to encode"))?;
            out.truncate(n);
            out
        } else {
            raw
        };
        escape(self.format, &raw, !in_quotes).map_err(|e| format!("{what}: {e}"))
    }
}

/// `value` escaped for `format` (with the double quotes around it when `quote`), in a buffer
/// allocated once at its final bound.
fn escape(format: Format, value: &[u8], quote: bool) -> Result<Zeroizing<Vec<u8>>, String> {
    match format {
        Format::Verbatim => Ok(Zeroizing::new(value.to_vec())),
        Format::Yaml | Format::Json => {
            let text = std::str::from_utf8(value).map_err(|_| {
                format!(
                    "not UTF-8 text, which a {} string cannot hold: add `| base64`",
                    if format == Format::Yaml {
                        "YAML"
                    } else {
                        "JSON"
                    }
                )
            })?;
            // A JSON string literal, which is also a YAML double-quoted scalar (with YAML's own
            // line breaks, U+0085, U+2028 and U+2029, escaped too).
            let mut out = Zeroizing::new(Vec::with_capacity(value.len() * 6 + 2));
            if quote {
                out.push(b'"');
            }
            for c in text.chars() {
                match c {
                    '"' => out.extend_from_slice(b"\\\""),
                    '\\' => out.extend_from_slice(b"\\\\"),
                    '\n' => out.extend_from_slice(b"\\n"),
                    '\r' => out.extend_from_slice(b"\\r"),
                    '\t' => out.extend_from_slice(b"\\t"),
                    c if (c as u32) < 0x20
                        || c == '\u{7f}'
                        || c == '\u{85}'
                        || c == '\u{2028}'
                        || c == '\u{2029}' =>
                    {
                        let mut hex = [0u8; 6];
                        let code = c as u32;
                        hex[0] = b'\\';
                        hex[1] = b'u';
                        for (i, shift) in [12, 8, 4, 0].into_iter().enumerate() {
                            hex[2 + i] = b"0123456789abcdef"[((code >> shift) & 0xf) as usize];
                        }
                        out.extend_from_slice(&hex);
                    }
                    c => {
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
            if quote {
                out.push(b'"');
            }
            Ok(out)
        }
        Format::Env => {
            let text = std::str::from_utf8(value).map_err(|_| {
                "not UTF-8 text, which an environment file cannot hold: add `| base64`".to_string()
            })?;
            if text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t')
            {
                return Err(
                    "holds control characters, which systemd refuses in an environment \
                     variable: add `| base64`"
                        .into(),
                );
            }
            let mut out = Zeroizing::new(Vec::with_capacity(value.len() * 2 + 2));
            if quote {
                out.push(b'"');
            }
            for &b in value {
                if matches!(b, b'"' | b'\\' | b'$' | b'`') {
                    out.push(b'\\');
                }
                out.push(b);
            }
            if quote {
                out.push(b'"');
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(text: &str, format: Format, values: &[(&str, &[u8])]) -> Result<String, String> {
        let secrets: Vec<(String, Secret)> = values
            .iter()
            .map(|(p, v)| (p.to_string(), Secret::new(v.to_vec())))
            .collect();
        let t = Template::parse(text, format)?;
        let lookup =
            |p: &str| -> Option<&Secret> { secrets.iter().find(|(q, _)| q == p).map(|(_, s)| s) };
        let out = t.render(&lookup)?;
        Ok(String::from_utf8(out.expose().to_vec()).unwrap())
    }

    #[test]
    fn values_become_quoted_strings_in_yaml_and_json() {
        let got = render(
            "token: {{ secret \"t\" }}\nca: {{secret \"j\" key \"ca\"}}\n",
            Format::Yaml,
            &[
                ("t", b"abc.def"),
                ("j", br#"{"ca":"-----BEGIN\nX\"\\\u2028"}"#),
            ],
        )
        .unwrap();
        assert_eq!(
            got,
            "token: \"abc.def\"\nca: \"-----BEGIN\\nX\\\"\\\\\\u2028\"\n"
        );
        let got = render(
            "{\"auth\": {{ secret \"r\" key \"auth\" }}, \"n\": {{ secret \"r\" key \"n\" }}}",
            Format::Json,
            &[("r", br#"{"auth":"dTpw","n":3}"#)],
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["auth"], "dTpw");
        // A number key is written as its JSON text, then quoted: a string in the output.
        assert_eq!(v["n"], "3");
    }

    #[test]
    fn inside_double_quotes_a_value_is_escaped_without_quotes_of_its_own() {
        let got = render(
            "server: \"https://{{ secret \"j\" key \"host\" }}:6443\" # \"x\"\nb: {{ secret \"t\" }}\n",
            Format::Yaml,
            &[("j", br#"{"host":"10.0.0.1"}"#), ("t", b"a\"b")],
        )
        .unwrap();
        assert_eq!(
            got,
            "server: \"https://10.0.0.1:6443\" # \"x\"\nb: \"a\\\"b\"\n"
        );
        // An escaped quote does not open or close a string; a bare placeholder after a closed
        // string on the same line is quoted.
        let got = render(
            "{\"a\": \"x\\\"{{ secret \"t\" }}\", \"b\": {{ secret \"t\" }}}",
            Format::Json,
            &[("t", b"v\"")],
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["a"], "x\"v\"");
        assert_eq!(v["b"], "v\"");
        let got = render("U=\"u-{{ secret \"t\" }}\"", Format::Env, &[("t", b"$x")]).unwrap();
        assert_eq!(got, "U=\"u-\\$x\"");
    }

    #[test]
    fn base64_then_escape() {
        let got = render(
            "certificate-authority-data: {{ secret \"ca\" | base64 }}",
            Format::Yaml,
            &[("ca", b"PEM\n")],
        )
        .unwrap();
        assert_eq!(got, "certificate-authority-data: \"UEVNCg==\"");
    }

    #[test]
    fn env_values_read_back_unchanged_by_a_shell() {
        let tricky: &[u8] = b"a b\"c\\d$HOME`id`\ne";
        let got = render("X={{ secret \"s\" }}\n", Format::Env, &[("s", tricky)]).unwrap();
        assert_eq!(got, "X=\"a b\\\"c\\\\d\\$HOME\\`id\\`\ne\"\n");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{got}printf %s \"$X\""))
            .output()
            .unwrap();
        assert_eq!(out.stdout, tricky);
        assert!(
            render("X={{ secret \"s\" }}", Format::Env, &[("s", b"a\x01")])
                .unwrap_err()
                .contains("control characters")
        );
    }

    #[test]
    fn verbatim_and_literals() {
        let got = render(
            "{{ \"{{\" }} x {{ secret \"s\" }}",
            Format::Verbatim,
            &[("s", b"\"raw\"")],
        )
        .unwrap();
        assert_eq!(got, "{{ x \"raw\"");
    }

    #[test]
    fn errors_name_the_placeholder_never_the_value() {
        let e = render(
            "{{ secret \"j\" key \"nope\" }}",
            Format::Yaml,
            &[("j", br#"{"user":"u","password":"hunter2"}"#)],
        )
        .unwrap_err();
        assert!(e.contains("secret `j` key `nope`"), "{e}");
        assert!(e.contains("`password`, `user`"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = render("{{ secret \"b\" }}", Format::Json, &[("b", b"\xff\xfe")]).unwrap_err();
        assert!(e.contains("not UTF-8") && e.contains("| base64"), "{e}");
        let e = render("{{ secret \"absent\" }}", Format::Json, &[]).unwrap_err();
        assert!(e.contains("secret `absent` was not fetched"), "{e}");
    }

    #[test]
    fn what_the_parser_refuses() {
        for (text, want) in [
            ("a: '{{ secret \"t\" }}'", "inside single quotes"),
            ("x\n{{ secret \"t\"", "line 2: `{{` is not closed"),
            ("{{ secret t }}", "quoted path"),
            ("{{ secrets \"t\" }}", "`secrets` is not"),
            ("{{ secret \"t\" key }}", "quoted name"),
            ("{{ secret \"t\" | gzip }}", "only `| base64`"),
            ("{{ node \"ip\" }}", "is not one of \"hostname\""),
            ("{{ }}", "empty placeholder"),
            ("{{ \"{{\" | base64 }}", "only `| base64`"),
            ("{{ \"unterminated }}", "not closed"),
        ] {
            let e = Template::parse(text, Format::Yaml).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        // JSON's nested objects close with `}}`: text, not a placeholder.
        assert!(Template::parse("{\"a\": {\"b\": 1}}", Format::Json).is_ok());
        // In verbatim, quotes around a placeholder are the author's to choose.
        assert!(Template::parse("a=\"{{ secret \"t\" }}\"", Format::Verbatim).is_ok());
        let t = Template::parse(
            "{{ secret \"a\" }}{{ secret \"b\" key \"k\" }}{{ secret \"a\" key \"x\" }}",
            Format::Yaml,
        )
        .unwrap();
        assert_eq!(t.secret_paths(), ["a", "b"]);
    }
}
