//! The one type that holds secret material.
//!
//! Every value fetched from a backend, and every token or credential used to fetch one, lives in a
//! [`Secret`] (bytes) or [`SecretString`] (text) from the moment it leaves the SDK or HTTP response.
//! Both zero their heap buffer on drop and print only a placeholder through `Debug`; neither
//! implements `Display`, `Serialize` or `Clone`, so a value cannot reach a log line, an error or a
//! status file by accident.

use std::fmt;
use zeroize::Zeroizing;

/// Secret bytes: zeroed on drop, never printed.
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Takes ownership of `bytes` without copying them.
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(Zeroizing::new(bytes))
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

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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
        SecretString(Zeroizing::new(s))
    }

    pub fn expose(&self) -> &str {
        &self.0
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
