//! `<output_root>/.status.json`: what is published and how the last run went. Never a value.
//!
//! Written atomically (temporary file, rename) after every run that got as far as opening the
//! output root, whatever its outcome. A failed run keeps the previous `secrets` list, since the
//! previous set is still what is published. The file is mode 0600: the SHA-256 of a low-entropy
//! value (a short password) can be brute-forced, so the digests are as private as the values.

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Format version of the file; bumped on incompatible changes.
pub const FORMAT: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Status {
    pub format: u32,
    pub run: RunStatus,
    /// The published set, one entry per file.
    pub secrets: serde_json::Value,
}

#[derive(Debug, Serialize)]
pub struct RunStatus {
    pub started: String,
    pub finished: String,
    pub duration_ms: u128,
    /// `published`, `unchanged`, `failed` or `deadline_exceeded`.
    pub outcome: &'static str,
    pub exit_code: u8,
    /// The failure, as printed on stderr (composed by bootsecrets; never a value).
    pub error: Option<String>,
    /// Paths whose content, mode or owner changed in this run.
    pub changed: Vec<String>,
    /// Paths the run removed from the set.
    pub removed: Vec<String>,
    /// The `on_change` commands this run ran, with how each ended.
    pub actions: Vec<ActionStatus>,
    /// Commands (argv) still owed: they failed, were killed, or had not run yet when this file
    /// was written. The next run runs them again if the manifest still names them.
    pub pending_actions: Vec<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct ActionStatus {
    pub command: String,
    /// `exit 0`, `exit N`, `killed by a signal`, `killed after 60 s` or `cannot start: ...`.
    pub result: String,
}

/// One published file.
#[derive(Debug, Serialize)]
pub struct SecretStatus {
    pub path: String,
    pub backend: String,
    pub backend_type: &'static str,
    #[serde(rename = "ref")]
    pub reference: String,
    /// The version the backend served (AWS VersionId, Vault KV v2 version, ...), when it says.
    pub version: Option<String>,
    pub sha256: String,
    pub size: usize,
    pub mode: String,
    pub owner: String,
    pub group: String,
    pub fetched_at: String,
    pub fetch_ms: u128,
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// RFC 3339 UTC timestamp with milliseconds, e.g. `2026-11-21T22:56:34.120Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The `pending_actions` of a previous status file.
pub fn previous_pending(old: Option<&[u8]>) -> Vec<Vec<String>> {
    old.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v.get("run")?.get("pending_actions").cloned())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

/// The `secrets` list of a previous status file, to carry over when a run publishes nothing.
pub fn previous_secrets(old: Option<&[u8]>) -> serde_json::Value {
    old.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v.get("secrets").cloned())
        .filter(|v| v.is_array())
        .unwrap_or_else(|| serde_json::Value::Array(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_digests() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            previous_secrets(Some(b"{\"secrets\":[1]}")),
            serde_json::json!([1])
        );
        assert_eq!(previous_secrets(Some(b"junk")), serde_json::json!([]));
    }
}
