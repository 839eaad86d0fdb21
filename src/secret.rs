//! The one type that holds secret material.
//!
//! Every value fetched from a backend, and every token or credential used to fetch one, lives in a
//! [`Secret`] (bytes) or [`SecretString`] (text) from the moment it leaves the SDK or HTTP response.
//! Both zero their heap buffer on drop and print only a placeholder through `Debug`; neither
//! implements `Display`, `Serialize` or `Clone`, so a value cannot reach a log line, an error or a
//! status file by accident.

use std::fmt;
use zeroize::Zeroizing;

/// Best effort: keeps the pages holding `len` bytes at `ptr` out of swap (`mlock`). Failures
/// (`RLIMIT_MEMLOCK` reached, no permission) are ignored: the process is non-dumpable and
/// short-lived either way, and nodes running Kubernetes usually have no swap. Pages stay locked
/// until the process exits: a page may hold several values, so unlocking one would unlock others.
fn lock_in_memory(ptr: *const u8, len: usize) {
    if len == 0 {
        return;
    }
    if let Some(p) = std::ptr::NonNull::new(ptr as *mut std::ffi::c_void) {
        // SAFETY: mlock only changes the paging of the mapping; the range is our live buffer.
        let _ = unsafe { nix::sys::mman::mlock(p, len) };
    }
}

/// Secret bytes: zeroed on drop, never printed.
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Takes ownership of `bytes` without copying them.
    pub fn new(bytes: Vec<u8>) -> Self {
        lock_in_memory(bytes.as_ptr(), bytes.capacity());
        Secret(Zeroizing::new(bytes))
    }

    /// Takes ownership of a zeroizing buffer without copying it.
    pub fn from_zeroizing(mut bytes: Zeroizing<Vec<u8>>) -> Self {
        Secret::new(std::mem::take(&mut *bytes))
    }

    /// Takes ownership of a string's buffer without copying it.
    pub fn from_string(s: String) -> Self {
        Secret::new(s.into_bytes())
    }

    /// The raw bytes. Callers must not copy them into a type that outlives the write.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The zeroizing buffer itself, without copying it.
    pub fn into_bytes(self) -> Zeroizing<Vec<u8>> {
        let Secret(mut b) = self;
        Zeroizing::new(std::mem::take(&mut *b))
    }

    /// The bytes as text, without copying them; `None` (the bytes zeroed) when not UTF-8.
    pub fn into_text(self) -> Option<Zeroizing<String>> {
        let Secret(mut b) = self;
        match String::from_utf8(std::mem::take(&mut *b)) {
            Ok(s) => Some(Zeroizing::new(s)),
            Err(e) => {
                drop(Zeroizing::new(e.into_bytes()));
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Lower-case hex SHA-256 of the bytes: what the status file records and the writer compares.
    /// As private as the value itself when the value has little entropy (see docs/security.md).
    pub fn sha256_hex(&self) -> String {
        use sha2::{Digest, Sha256};
        Sha256::digest(self.expose())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

/// Secret text (tokens, credentials): zeroed on drop, never printed.
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(s: String) -> Self {
        lock_in_memory(s.as_ptr(), s.capacity());
        SecretString(Zeroizing::new(s))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The text's buffer as zeroizing bytes, without copying it.
    pub fn into_bytes(self) -> Zeroizing<Vec<u8>> {
        let SecretString(mut s) = self;
        Zeroizing::new(std::mem::take(&mut *s).into_bytes())
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString([REDACTED])")
    }
}

impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretString::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locked_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmLck:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn values_are_locked_in_memory_where_the_kernel_allows() {
        let (soft, _) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK).unwrap();
        if !nix::unistd::geteuid().is_root() && soft < 8 << 20 {
            return; // best effort: nothing to prove under a small limit
        }
        let before = locked_kib();
        let big = Secret::new(vec![7u8; 4 << 20]);
        assert!(
            locked_kib() >= before + 4096,
            "VmLck {before} kB -> {} kB",
            locked_kib()
        );
        drop(big);
    }

    #[test]
    fn a_zeroizing_buffer_becomes_a_secret_without_a_copy() {
        let mut buf = Zeroizing::new(Vec::with_capacity(16));
        buf.extend_from_slice(b"canary-5e0a");
        let ptr = buf.as_ptr();
        let s = Secret::from_zeroizing(buf);
        assert_eq!(s.expose(), b"canary-5e0a");
        assert_eq!(s.expose().as_ptr(), ptr);
        assert!(Secret::from_zeroizing(Zeroizing::new(Vec::new())).is_empty());
    }

    #[test]
    fn a_secret_string_gives_up_its_buffer_without_a_copy() {
        let t = SecretString::new("token-77b2".to_string());
        let ptr = t.expose().as_ptr();
        let b = t.into_bytes();
        assert_eq!(&b[..], b"token-77b2");
        assert_eq!(b.as_ptr(), ptr);
    }

    #[test]
    fn debug_prints_a_placeholder() {
        let s = Secret::from_string("canary-9d1f".to_string());
        let t = SecretString::new("token-9d1f".to_string());
        assert_eq!(format!("{s:?}"), "Secret([REDACTED])");
        assert_eq!(format!("{t:?}"), "SecretString([REDACTED])");
        assert_eq!(
            format!("{:#?}", Some(&s)),
            "Some(\n    Secret([REDACTED]),\n)"
        );
        assert_eq!(s.expose(), b"canary-9d1f");
        assert_eq!(t.expose(), "token-9d1f");
    }
}
