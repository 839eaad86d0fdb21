//! `<output_root>/.status.json`: what is published and how the last run went. Never a value.
//!
//! Written atomically (temporary file, rename) after every run that got as far as opening the
//! output root, whatever its outcome, and once more just before a new set is published (outcome
//! `publishing`), so the records of the coming set and the `on_change` actions it will owe are on
//! disk before the flip. A failed run keeps the previous `secrets` list, since the previous set is
//! still what is published. The file is mode 0600: the SHA-256 of a low-entropy value (a short
//! password) can be brute-forced, so the digests are as private as the values.
//!
//! The next run reads it back for three things: the records of the published files (how the
//! writer tells an unchanged set without reading a file), the actions still owed, and the
//! manifest the root belongs to.

use crate::writer::{FileRecord, KnownSet};
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Format version of the file; bumped on incompatible changes. Format 1 had no `manifest`,
/// `data`, `uid`, `gid`, `inode` or `ctime`: a set recorded in it counts as changed once.
pub const FORMAT: u32 = 2;

#[derive(Debug, Serialize)]
pub struct Status {
    pub format: u32,
    /// The real path of the manifest whose secrets this root holds. A run of another manifest
    /// against the same root is refused.
    pub manifest: Option<String>,
    /// The version directory (`..data`'s target) the `secrets` list describes.
    pub data: Option<String>,
    pub run: RunStatus,
    /// The published set, one entry per file.
    pub secrets: SecretList,
}

/// The `secrets` list: written from the run's own records when it publishes (not through a
/// `serde_json::Value`, which costs a map per entry: 2.2 MB of the heap's peak for 1000 secrets), or the previous
/// file's list carried over when it publishes nothing.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum SecretList {
    Published(Vec<SecretStatus>),
    Carried(serde_json::Value),
}

#[derive(Debug, Serialize)]
pub struct RunStatus {
    pub started: String,
    pub finished: String,
    pub duration_ms: u128,
    /// `published`, `unchanged`, `failed` or `deadline_exceeded`; `publishing` while a new set
    /// is about to be published (seen only after a crash at that moment).
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
    /// Secrets left out because their `unless_exists` path exists.
    pub skipped: Vec<SkippedStatus>,
    /// Everything that could not be fetched, optional or not, each with its cause.
    pub failures: Vec<FailureStatus>,
    /// Optional secrets whose fetch failed transiently (`class` `deadline` in `failures`) and
    /// whose published file stays as it was: their entries in `secrets` say `"kept": true`.
    pub kept: Vec<String>,
    /// Vault tokens placed on the node (`method = "token"`) that this run used: what is left of
    /// each after its renewal.
    pub tokens: Vec<TokenStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenStatus {
    pub backend: String,
    pub token_file: String,
    /// `null` when the token's policies do not let it look itself up (see `note`).
    pub renewable: Option<bool>,
    /// Whether this run renewed it.
    pub renewed: bool,
    /// Seconds left when the run used it; `null` for a token that never expires or whose life
    /// is unknown.
    pub ttl_s: Option<u64>,
    pub expires: Option<String>,
    /// A periodic token's period, in seconds.
    pub period_s: Option<u64>,
    /// Why the life is unknown, or the warning that it is near its end.
    pub note: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SkippedStatus {
    pub path: String,
    pub unless_exists: String,
}

#[derive(Debug, Serialize)]
pub struct FailureStatus {
    /// The secrets it concerns (all of a backend's when its identity failed).
    pub secrets: Vec<String>,
    /// All of them `optional`: published without them, the run did not fail for it.
    pub optional: bool,
    /// `permanent` or `deadline`.
    pub class: &'static str,
    /// The message printed on stderr (composed by bootsecrets; never a value).
    pub error: String,
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
    pub uid: u32,
    pub gid: u32,
    /// The published file's inode number and change time (`SECONDS.NANOSECONDS`) as bootsecrets
    /// left it: the next run compares them with `fstat` to know the file is untouched.
    pub inode: u64,
    pub ctime: String,
    pub fetched_at: String,
    pub fetch_ms: u128,
    /// The file was not fetched in this run: its previous value stays published (an optional
    /// secret whose backend failed transiently). `version` and `fetched_at` are those of the run
    /// that fetched it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
}

impl SecretStatus {
    /// The record part of an entry, as the writer takes it back.
    pub fn ctime_of(r: &FileRecord) -> String {
        format!("{}.{:09}", r.ctime.0, r.ctime.1)
    }
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

/// What a run takes from the previous status file. Anything missing or malformed reads as
/// unknown: no records (the set counts as changed), no pending action, no owning manifest.
#[derive(Debug, Default)]
pub struct Previous {
    pub manifest: Option<String>,
    /// The `data` field: the version the `secrets` list describes.
    pub data: Option<String>,
    /// The `secrets` list, carried over when a run publishes nothing.
    pub secrets: serde_json::Value,
    pub pending: Vec<Vec<String>>,
    /// The records of the published files, when every entry has one.
    pub known: Option<KnownSet>,
}

fn record_of(e: &serde_json::Value) -> Option<(String, FileRecord)> {
    let text = |k: &str| e.get(k)?.as_str();
    let num = |k: &str| e.get(k)?.as_u64();
    let (secs, nanos) = text("ctime")?.split_once('.')?;
    let record = FileRecord {
        sha256: text("sha256")?.to_string(),
        size: num("size")?,
        mode: u32::from_str_radix(text("mode")?, 8).ok()?,
        uid: u32::try_from(num("uid")?).ok()?,
        gid: u32::try_from(num("gid")?).ok()?,
        inode: num("inode")?,
        ctime: (secs.parse().ok()?, nanos.parse().ok()?),
    };
    Some((text("path")?.to_string(), record))
}

impl Previous {
    /// The previous `secrets` entry of `path`, if the file has one.
    pub fn entry(&self, path: &str) -> Option<&serde_json::Value> {
        self.secrets
            .as_array()?
            .iter()
            .find(|e| e.get("path").and_then(|p| p.as_str()) == Some(path))
    }
}

/// Reads a previous status file.
pub fn previous(old: Option<&[u8]>) -> Previous {
    let Some(v) = old.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok()) else {
        return Previous {
            secrets: serde_json::Value::Array(Vec::new()),
            ..Previous::default()
        };
    };
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let secrets = v
        .get("secrets")
        .cloned()
        .filter(|s| s.is_array())
        .unwrap_or_else(|| serde_json::Value::Array(Vec::new()));
    let known = match (text("data"), secrets.as_array()) {
        (Some(version), Some(list)) => list
            .iter()
            .map(record_of)
            .collect::<Option<_>>()
            .map(|files| KnownSet { version, files }),
        _ => None,
    };
    Previous {
        manifest: text("manifest"),
        data: text("data"),
        pending: v
            .get("run")
            .and_then(|r| r.get("pending_actions").cloned())
            .and_then(|p| serde_json::from_value(p).ok())
            .unwrap_or_default(),
        secrets,
        known,
    }
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
            crate::secret::Secret::new(b"abc".to_vec()).sha256_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            previous(Some(b"{\"secrets\":[1]}")).secrets,
            serde_json::json!([1])
        );
        assert_eq!(previous(Some(b"junk")).secrets, serde_json::json!([]));
    }

    #[test]
    fn records_round_trip_and_a_partial_list_gives_none() {
        let r = FileRecord {
            sha256: "ab".into(),
            size: 3,
            mode: 0o440,
            uid: 65534,
            gid: 65534,
            inode: 77,
            ctime: (1_700_000_000, 5),
        };
        let entry = |path: &str| {
            serde_json::json!({"path": path, "sha256": r.sha256, "size": r.size, "mode": "0440",
                "uid": r.uid, "gid": r.gid, "inode": r.inode,
                "ctime": SecretStatus::ctime_of(&r)})
        };
        let doc = serde_json::json!({"format": 2, "manifest": "/etc/m.toml", "data": "..v-1",
            "run": {"pending_actions": [["/bin/true"]]}, "secrets": [entry("a"), entry("b/c")]});
        let p = previous(Some(doc.to_string().as_bytes()));
        assert_eq!(p.manifest.as_deref(), Some("/etc/m.toml"));
        assert_eq!(p.pending, vec![vec!["/bin/true".to_string()]]);
        let k = p.known.unwrap();
        assert_eq!(k.version, "..v-1");
        assert_eq!(k.files["b/c"], r);
        // Format 1 entries (no inode): no records at all.
        let old = serde_json::json!({"format": 1, "secrets": [{"path": "a", "sha256": "ab"}]});
        assert!(previous(Some(old.to_string().as_bytes())).known.is_none());
    }
}
