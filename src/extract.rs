//! Turning a fetched value into file content: JSON key extraction and base64 decoding.
//!
//! Neither step may leak the value: serde_json's and base64's own error messages can quote input
//! (`invalid type: string "..."`, `Invalid byte 98, offset 3`), so only the error's category and
//! position are reported. Intermediate buffers that hold secret bytes are zeroizing.

use crate::secret::Secret;
use base64::Engine;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use zeroize::Zeroizing;

/// How the fetched value is turned into file content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Written as stored.
    None,
    /// Base64-decoded (standard alphabet; whitespace such as line breaks is ignored).
    Base64,
}

fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax | Category::Eof => "is not valid JSON",
        Category::Data => "is not a JSON object",
        Category::Io => "could not be read as JSON",
    };
    format!(
        "the secret {what} (at line {} column {})",
        e.line(),
        e.column()
    )
}

/// Extracts the top-level `key` of a JSON object. A string member yields its unescaped text; a
/// number, boolean, object or array yields its JSON text; `null` is an error.
pub fn json_key(value: &Secret, key: &str) -> Result<Secret, String> {
    let map: BTreeMap<String, &RawValue> =
        serde_json::from_slice(value.expose()).map_err(|e| json_error(&e))?;
    let raw = map.get(key).ok_or_else(|| {
        format!(
            "the secret's JSON object has no key `{key}` ({})",
            key_names(map.keys())
        )
    })?;
    let text = raw.get();
    if text == "null" {
        return Err(format!("the secret's JSON key `{key}` is null"));
    }
    if text.starts_with('"') {
        unescape_json_string(text)
            .map(Secret::from_zeroizing)
            .ok_or_else(|| format!("the secret's JSON key `{key}` holds an invalid string escape"))
    } else {
        Ok(Secret::new(text.as_bytes().to_vec()))
    }
}

/// The keys an object has, for a message: names, never values (at most 20, each at most 64
/// characters, control characters replaced).
fn key_names<'a>(keys: impl ExactSizeIterator<Item = &'a String>) -> String {
    let n = keys.len();
    if n == 0 {
        return "it has no keys".to_string();
    }
    let names: Vec<String> = keys
        .take(20)
        .map(|k| {
            let k: String = k
                .chars()
                .take(64)
                .map(|c| if c.is_control() || c == '`' { '?' } else { c })
                .collect();
            format!("`{k}`")
        })
        .collect();
    let more = if n > 20 {
        format!(" and {} more", n - 20)
    } else {
        String::new()
    };
    format!("keys present: {}{more}", names.join(", "))
}

fn hex4(b: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(b.get(..4)?).ok()?;
    u32::from_str_radix(s, 16).ok()
}

/// Decodes a JSON string literal (quotes included) into a fresh buffer. Written here rather than
/// through serde_json so that no non-zeroizing scratch copy of the value is ever made. The buffer
/// is zeroed on every path, including an invalid escape found midway, and never reallocated: an
/// unescaped string is never longer than its literal.
fn unescape_json_string(lit: &str) -> Option<Zeroizing<Vec<u8>>> {
    let b = lit.as_bytes();
    let inner = b.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    let mut out = Zeroizing::new(Vec::with_capacity(inner.len()));
    let mut i = 0;
    while i < inner.len() {
        let c = inner[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let esc = *inner.get(i + 1)?;
        i += 2;
        let simple = match esc {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'u' => None,
            _ => return None,
        };
        if let Some(s) = simple {
            out.push(s);
            continue;
        }
        let hi = hex4(&inner[i..])?;
        i += 4;
        let cp = if (0xD800..0xDC00).contains(&hi) {
            if inner.get(i..i + 2)? != b"\\u" {
                return None;
            }
            let lo = hex4(&inner[i + 2..])?;
            if !(0xDC00..0xE000).contains(&lo) {
                return None;
            }
            i += 6;
            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        } else if (0xDC00..0xE000).contains(&hi) {
            return None;
        } else {
            hi
        };
        let ch = char::from_u32(cp)?;
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    debug_assert!(out.capacity() == inner.len(), "reallocated");
    Some(out)
}

/// Decodes standard base64 (padding optional; ASCII whitespace such as PEM line breaks ignored).
/// Both buffers, the compacted text and the decoded bytes, are sized before they are filled (no
/// reallocation leaves a copy behind) and zeroed on every path, the error path included.
pub fn base64_decode(value: &Secret) -> Result<Secret, String> {
    let input = value.expose();
    let mut compact: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::with_capacity(input.len()));
    compact.extend(input.iter().copied().filter(|b| !b.is_ascii_whitespace()));
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let mut out = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(compact.len())]);
    let n = engine
        .decode_slice(&*compact, &mut out)
        .map_err(|_| "the secret is not valid base64 (standard alphabet)".to_string())?;
    out.truncate(n);
    Ok(Secret::from_zeroizing(out))
}

/// Applies the manifest's `json_key` and `encoding`, in that order.
pub fn transform(value: Secret, json: Option<&str>, encoding: Encoding) -> Result<Secret, String> {
    let value = match json {
        Some(k) => json_key(&value, k)?,
        None => value,
    };
    match encoding {
        Encoding::None => Ok(value),
        Encoding::Base64 => base64_decode(&value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Secret {
        Secret::from_string(v.to_string())
    }

    #[test]
    fn extracts_strings_with_escapes_and_other_json_as_text() {
        let v = s(
            r#"{"user":"admin","pw":"p\"a\\s\/s\n\u00e9\ud83d\ude00","n":42,"o":{"a":[1]},"z":null}"#,
        );
        assert_eq!(json_key(&v, "user").unwrap().expose(), b"admin");
        assert_eq!(
            json_key(&v, "pw").unwrap().expose(),
            "p\"a\\s/s\n\u{e9}\u{1F600}".as_bytes()
        );
        assert_eq!(json_key(&v, "n").unwrap().expose(), b"42");
        assert_eq!(json_key(&v, "o").unwrap().expose(), br#"{"a":[1]}"#);
        assert!(json_key(&v, "z").unwrap_err().contains("null"));
        assert!(
            json_key(&v, "missing")
                .unwrap_err()
                .contains("no key `missing`")
        );
    }

    #[test]
    fn errors_never_quote_the_value() {
        for bad in [
            r#""canary-1234""#,
            "canary-1234",
            r#"{"a": canary-1234}"#,
            "[\"canary-1234\"]",
        ] {
            let e = json_key(&s(bad), "a").unwrap_err();
            assert!(!e.contains("canary"), "{e}");
        }
        let e = base64_decode(&s("canary-1234!")).unwrap_err();
        assert!(!e.contains("canary") && !e.contains('!'), "{e}");
    }

    #[test]
    fn lone_surrogates_are_refused() {
        assert!(unescape_json_string(r#""\ud800""#).is_none());
        assert!(unescape_json_string(r#""\udc00x""#).is_none());
        assert!(unescape_json_string(r#""\ud800\u0041""#).is_none());
    }

    #[test]
    fn base64_ignores_whitespace_and_padding() {
        assert_eq!(base64_decode(&s("aGVs\nbG8=")).unwrap().expose(), b"hello");
        assert_eq!(base64_decode(&s("aGVsbG8")).unwrap().expose(), b"hello");
        let v = transform(s(r#"{"k":"AAEC/w=="}"#), Some("k"), Encoding::Base64).unwrap();
        assert_eq!(v.expose(), &[0, 1, 2, 255]);
    }

    /// The zeroizing decoder accepts and refuses exactly what base64's own `decode` does with the
    /// same settings, and its output needs no bigger buffer than the estimate it allocates.
    #[test]
    fn base64_matches_the_library_decoder_on_valid_and_invalid_input() {
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
        let reference = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        for n in 0..100usize {
            let raw: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            for text in [STANDARD.encode(&raw), STANDARD_NO_PAD.encode(&raw)] {
                assert_eq!(
                    base64_decode(&s(&text)).unwrap().expose(),
                    &raw[..],
                    "{text}"
                );
                let wrapped: String = text
                    .as_bytes()
                    .chunks(7)
                    .map(|c| std::str::from_utf8(c).unwrap().to_string() + "\r\n ")
                    .collect();
                assert_eq!(base64_decode(&s(&wrapped)).unwrap().expose(), &raw[..]);
            }
        }
        for bad in [
            "A",
            "AB=",
            "QR==",
            "QUI",
            "QUJ=",
            "aGVsbG8=x",
            "!!!!",
            "aGVs-bG8",
            "aGVs_bG8",
            "====",
            "aGVsbG8===",
            "=aGVsbG8",
            "AAAAA",
            "aGVsbG8=aGVs",
            "\u{e9}AAA",
        ] {
            let ours = base64_decode(&s(bad)).map(|v| v.expose().to_vec());
            let theirs = reference.decode(bad.as_bytes());
            assert_eq!(
                ours.is_ok(),
                theirs.is_ok(),
                "{bad:?}: {ours:?} / {theirs:?}"
            );
            if let (Ok(a), Ok(b)) = (ours, theirs) {
                assert_eq!(a, b, "{bad:?}");
            } else {
                let e = base64_decode(&s(bad)).unwrap_err();
                assert_eq!(e, "the secret is not valid base64 (standard alphabet)");
            }
        }
        assert!(base64_decode(&s("")).unwrap().is_empty());
        assert!(base64_decode(&s(" \n\t")).unwrap().is_empty());
    }

    /// The unescaped buffer is allocated once, at the literal's length, which bounds the output.
    #[test]
    fn unescaping_fills_a_buffer_sized_by_the_literal() {
        for lit in [
            r#""""#,
            r#""plain ascii, as long as the literal""#,
            r#""\n\t\"\\\/""#,
            r#""\u00e9\u20ac\ud83d\ude00""#,
            "\"caf\u{e9} \u{1F600}\"",
        ] {
            let out = unescape_json_string(lit).unwrap();
            assert_eq!(out.capacity(), lit.len() - 2, "{lit}");
            assert_eq!(
                &out[..],
                serde_json::from_str::<String>(lit).unwrap().as_bytes()
            );
        }
        for bad in [
            r#""abc"#,
            r#"abc""#,
            r#""a\""#,
            r#""\""#,
            r#""a\x""#,
            r#""a\u12""#,
            r#""a\u12zz""#,
            r#""a\ud800\n""#,
        ] {
            assert!(unescape_json_string(bad).is_none(), "{bad}");
        }
    }
}
