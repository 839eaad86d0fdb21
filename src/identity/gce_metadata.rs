//! GCP instance identity through the GCE metadata server: the service account's OAuth access
//! token, its signed identity token (a JWT for a given audience), and the project id.
//!
//! Every function is ONE attempt that returns a classified [`FetchError`]; callers wrap it in
//! [`crate::retry::retry`], so the run's deadline governs (google-cloud-auth's metadata credential
//! has no per-request timeout and honours proxy variables: docs/design.md has the measurements).
//! Every request carries `Metadata-Flavor: Google`, and every answer must carry it too, which a
//! proxy or captive portal answering in its place does not. Requests never go through a proxy.

use crate::error::FetchError;
use crate::identity::imdsd;
use crate::secret::SecretString;
use serde::Deserialize;
use std::fmt;
use std::time::{Duration, SystemTime};

pub const DEFAULT_ENDPOINT: &str = "http://metadata.google.internal";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

const ROOT: &str = "/computeMetadata/v1";

/// Where and how to reach the metadata server, and which service account to speak for.
#[derive(Debug, Clone)]
pub struct GceMetadataSettings {
    /// Base URL, `http://metadata.google.internal` on GCE.
    pub endpoint: String,
    /// Per-request timeout (connect at most 2 s).
    pub timeout: Duration,
    /// `default`, or the email of a service account attached to the instance.
    pub service_account: String,
}

impl Default for GceMetadataSettings {
    fn default() -> Self {
        GceMetadataSettings {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            timeout: DEFAULT_TIMEOUT,
            service_account: DEFAULT_SERVICE_ACCOUNT.to_string(),
        }
    }
}

/// An OAuth access token of the instance's service account. Zeroed on drop, never printed.
pub struct AccessToken {
    pub token: SecretString,
    /// Now plus `expires_in`.
    pub expires_at: Option<SystemTime>,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &self.token)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    token_type: Option<String>,
}

/// True for a service account name the metadata path can carry: `default` or an email.
pub fn valid_service_account(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 254
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@.-_".contains(&b))
}

impl GceMetadataSettings {
    fn what(&self, thing: &str) -> String {
        format!("GCE metadata server at {} ({thing})", self.endpoint)
    }

    async fn get(
        &self,
        path: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, FetchError> {
        let answer = crate::http::metadata_get_unless_locked(
            self.timeout,
            &format!("{}{ROOT}{path}", self.endpoint),
            query,
            ("Metadata-Flavor", "Google"),
            what,
        )
        .await?;
        let Some(answer) = answer else {
            // The route is locked: systemd-imdsd's data URL for GCE is `.../computeMetadata/v1`.
            if !imdsd::serves(&self.endpoint) {
                return Err(imdsd::locked_elsewhere(&self.endpoint, what));
            }
            imdsd::note_asking(&self.endpoint);
            let mut key = path.to_string();
            if !query.is_empty() {
                key.push('?');
                key.push_str(
                    &url::form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(query)
                        .finish(),
                );
            }
            return imdsd::get(&imdsd::socket(), &key, self.timeout, &self.endpoint, what)
                .await
                .map(|s| s.into_bytes());
        };
        let flavor_ok = answer
            .headers
            .get("metadata-flavor")
            .is_some_and(|v| v.as_bytes() == b"Google");
        if answer.status == 200 && !flavor_ok {
            return Err(FetchError::permanent(format!(
                "{what}: the answer lacks `Metadata-Flavor: Google`; this is not a GCE metadata \
                 server (a proxy or another service answered)"
            )));
        }
        if answer.status == 200 {
            return Ok(answer.body);
        }
        let mut e = classify_status(answer.status, what);
        e.retry_after = answer.retry_after;
        Err(e)
    }

    fn sa_path(&self, leaf: &str) -> String {
        format!("/instance/service-accounts/{}/{leaf}", self.service_account)
    }

    /// One attempt at the service account's OAuth access token.
    pub async fn access_token(&self) -> Result<AccessToken, FetchError> {
        let what = self.what(&format!(
            "access token of service account `{}`",
            self.service_account
        ));
        let body = self.get(&self.sa_path("token"), &[], &what).await?;
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            FetchError::permanent(format!("{what}: the answer is not the expected token JSON"))
        })?;
        if t.access_token.expose().is_empty()
            || t.token_type
                .as_deref()
                .is_some_and(|ty| !ty.eq_ignore_ascii_case("bearer"))
        {
            return Err(FetchError::permanent(format!(
                "{what}: the answer holds no bearer access token"
            )));
        }
        log::debug!("{what}: token obtained");
        Ok(AccessToken {
            token: t.access_token,
            expires_at: t
                .expires_in
                .and_then(|s| SystemTime::now().checked_add(Duration::from_secs(s))),
        })
    }

    /// One attempt at a Google-signed identity token (JWT) for `audience`; with `format_full`, it
    /// carries the `google.compute_engine` claims (project, zone, instance id and name).
    pub async fn identity_token(
        &self,
        audience: &str,
        format_full: bool,
    ) -> Result<SecretString, FetchError> {
        let what = self.what(&format!(
            "identity token of service account `{}`",
            self.service_account
        ));
        let mut query = vec![("audience", audience)];
        if format_full {
            query.push(("format", "full"));
        }
        let body = self.get(&self.sa_path("identity"), &query, &what).await?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| FetchError::permanent(format!("{what}: the answer is not text")))?
            .trim();
        if text.split('.').count() != 3 {
            return Err(FetchError::permanent(format!(
                "{what}: the answer is not a JWT"
            )));
        }
        Ok(SecretString::new(text.to_string()))
    }

    /// One attempt at the service account's email (for messages: which account was denied).
    pub async fn email(&self) -> Result<String, FetchError> {
        let what = self.what(&format!(
            "email of service account `{}`",
            self.service_account
        ));
        let body = self.get(&self.sa_path("email"), &[], &what).await?;
        let email = std::str::from_utf8(&body).unwrap_or("").trim();
        if !valid_service_account(email) || !email.contains('@') {
            return Err(FetchError::permanent(format!(
                "{what}: the answer is not an email"
            )));
        }
        Ok(email.to_string())
    }

    /// One attempt at the service account's OAuth scopes (one per line).
    pub async fn scopes(&self) -> Result<Vec<String>, FetchError> {
        let what = self.what(&format!(
            "scopes of service account `{}`",
            self.service_account
        ));
        let body = self.get(&self.sa_path("scopes"), &[], &what).await?;
        Ok(std::str::from_utf8(&body)
            .unwrap_or("")
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("https://www.googleapis.com/auth/"))
            .map(str::to_string)
            .collect())
    }

    /// One attempt at the project id.
    pub async fn project_id(&self) -> Result<String, FetchError> {
        let what = self.what("project id");
        let body = self.get("/project/project-id", &[], &what).await?;
        let id = std::str::from_utf8(&body).unwrap_or("").trim();
        if !valid_project(id) {
            return Err(FetchError::permanent(format!(
                "{what}: the answer is not a project id"
            )));
        }
        Ok(id.to_string())
    }
}

/// A project id (6-30 of `a-z0-9-`; older ones may hold `.` and `:`) or a project number.
pub fn valid_project(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 63
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b))
}

/// Classifies a non-200 metadata answer by its status.
pub fn classify_status(status: u16, what: &str) -> FetchError {
    match status {
        429 | 500..=599 => FetchError::transient(format!("{what}: HTTP {status}")),
        404 => FetchError::permanent(format!(
            "{what}: not found (HTTP 404; is the service account attached to the instance?)"
        )),
        403 => FetchError::permanent(format!(
            "{what}: refused (HTTP 403; a proxy in the way, or the request was not recognised as \
             a metadata request)"
        )),
        _ => FetchError::permanent(format!("{what}: unexpected answer (HTTP {status})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        for s in [429, 500, 503] {
            assert!(classify_status(s, "x").is_transient(), "{s}");
        }
        for s in [400, 403, 404] {
            assert!(!classify_status(s, "x").is_transient(), "{s}");
        }
    }

    #[test]
    fn names() {
        assert!(valid_service_account("default"));
        assert!(valid_service_account(
            "node@my-project.iam.gserviceaccount.com"
        ));
        assert!(!valid_service_account("a/../b"));
        assert!(!valid_service_account(""));
        assert!(valid_project("my-project-123"));
        assert!(valid_project("123456789012"));
        assert!(!valid_project("My Project"));
    }
}
