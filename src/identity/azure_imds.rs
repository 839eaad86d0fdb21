//! Azure instance identity through the Azure Instance Metadata Service (IMDS): managed-identity
//! access tokens and the VM's compute metadata.
//!
//! Every function is ONE attempt that returns a classified [`FetchError`]; callers wrap it in
//! [`crate::retry::retry`], so the run's deadline governs. (The SDK's own managed-identity
//! credential retries for up to 72 s on its own, cannot be pointed at another endpoint, and honours
//! proxy variables: docs/design.md has the measurements.) Requests never go through a proxy.
//! Response bodies are read into zeroizing buffers and never quoted in a message.

use crate::error::FetchError;
use crate::http::sanitize_code;
use crate::secret::SecretString;
use serde::Deserialize;
use std::fmt;
use std::time::{Duration, SystemTime};

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Managed-identity token API version (the one the Azure docs use for VMs and scale sets).
pub const TOKEN_API_VERSION: &str = "2018-02-01";
/// Instance metadata API version for [`AzureImdsSettings::compute`].
pub const COMPUTE_API_VERSION: &str = "2021-02-01";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

const TOKEN_PATH: &str = "/metadata/identity/oauth2/token";
const COMPUTE_PATH: &str = "/metadata/instance/compute";

/// Which user-assigned managed identity to use; none means the system-assigned identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserAssignedId {
    ClientId(String),
    ObjectId(String),
    /// The identity's full Azure resource id (`/subscriptions/.../userAssignedIdentities/NAME`).
    ResourceId(String),
}

impl UserAssignedId {
    fn query(&self) -> (&'static str, &str) {
        match self {
            UserAssignedId::ClientId(v) => ("client_id", v),
            UserAssignedId::ObjectId(v) => ("object_id", v),
            UserAssignedId::ResourceId(v) => ("msi_res_id", v),
        }
    }

    pub fn describe(&self) -> String {
        let (k, v) = self.query();
        format!("user-assigned identity {k} {v}")
    }
}

/// The user-assigned identity the manifest's `client_id`, `object_id` or `resource_id` selects
/// (at most one may be set), validated; None selects the system-assigned identity.
pub fn user_assigned(
    client_id: Option<&str>,
    object_id: Option<&str>,
    resource_id: Option<&str>,
) -> Result<Option<UserAssignedId>, Vec<String>> {
    let mut errors = Vec::new();
    let ids: Vec<UserAssignedId> = [
        client_id.map(|v| UserAssignedId::ClientId(v.to_string())),
        object_id.map(|v| UserAssignedId::ObjectId(v.to_string())),
        resource_id.map(|v| UserAssignedId::ResourceId(v.to_string())),
    ]
    .into_iter()
    .flatten()
    .collect();
    if ids.len() > 1 {
        errors.push(
            "client_id, object_id and resource_id each select a user-assigned identity: set at \
             most one"
                .to_string(),
        );
    }
    for id in &ids {
        let ok = match id {
            UserAssignedId::ClientId(v) | UserAssignedId::ObjectId(v) => is_guid(v),
            UserAssignedId::ResourceId(v) => {
                v.starts_with("/subscriptions/")
                    && v.to_ascii_lowercase()
                        .contains("/providers/microsoft.managedidentity/userassignedidentities/")
                    && !v.chars().any(|c| c.is_whitespace() || c == '?' || c == '&')
            }
        };
        if !ok {
            errors.push(match id {
                UserAssignedId::ClientId(v) => format!("client_id `{v}` is not a GUID"),
                UserAssignedId::ObjectId(v) => format!("object_id `{v}` is not a GUID"),
                UserAssignedId::ResourceId(v) => format!(
                    "resource_id `{v}` is not a user-assigned identity's resource id \
                     (/subscriptions/.../providers/Microsoft.ManagedIdentity/userAssignedIdentities/NAME)"
                ),
            });
        }
    }
    if errors.is_empty() {
        Ok(ids.into_iter().next())
    } else {
        Err(errors)
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hex digits.
pub fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Where and how to reach Azure IMDS, and which identity to ask for.
#[derive(Debug, Clone)]
pub struct AzureImdsSettings {
    /// Base URL, `http://169.254.169.254` on Azure.
    pub endpoint: String,
    /// Per-request timeout (connect at most 2 s).
    pub timeout: Duration,
    /// None: the system-assigned identity.
    pub identity: Option<UserAssignedId>,
}

impl Default for AzureImdsSettings {
    fn default() -> Self {
        AzureImdsSettings {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            timeout: DEFAULT_TIMEOUT,
            identity: None,
        }
    }
}

/// A managed-identity access token. The token is zeroed on drop and never printed.
pub struct AccessToken {
    pub token: SecretString,
    /// From `expires_on`, when IMDS gives it.
    pub expires_on: Option<SystemTime>,
    /// The identity's client id, from the answer's `client_id` when it is a GUID: what an
    /// operator grants access to, named in messages (not secret).
    pub client_id: Option<String>,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &self.token)
            .field("expires_on", &self.expires_on)
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// The VM facts Vault's azure login (and diagnostics) need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeMetadata {
    pub subscription_id: String,
    pub resource_group_name: String,
    /// The VM's name.
    pub name: String,
    /// The scale set's name, when the VM belongs to one.
    pub vm_scale_set_name: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    #[serde(default)]
    expires_on: Option<serde_json::Value>,
    #[serde(default)]
    client_id: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ComputeResponse {
    subscription_id: String,
    resource_group_name: String,
    name: String,
    #[serde(default)]
    vm_scale_set_name: Option<String>,
}

impl AzureImdsSettings {
    fn what(&self, thing: &str) -> String {
        format!("Azure IMDS at {} ({thing})", self.endpoint)
    }

    async fn get(
        &self,
        path: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, FetchError> {
        let answer = crate::http::metadata_get(
            self.timeout,
            &format!("{}{path}", self.endpoint),
            query,
            ("Metadata", "true"),
            what,
        )
        .await?;
        if answer.status == 200 {
            return Ok(answer.body);
        }
        let mut e = classify_status(answer.status, &answer.body, what);
        e.retry_after = answer.retry_after;
        Err(e)
    }

    /// One attempt at a managed-identity token for `resource` (e.g. `https://vault.azure.net`).
    pub async fn token(&self, resource: &str) -> Result<AccessToken, FetchError> {
        let what = self.what(&format!("managed-identity token for {resource}"));
        let mut query = vec![("api-version", TOKEN_API_VERSION), ("resource", resource)];
        if let Some(id) = &self.identity {
            query.push(id.query());
        }
        let body = self.get(TOKEN_PATH, &query, &what).await?;
        let token = parse_token(&body, &what)?;
        log::debug!("{what}: token obtained");
        Ok(token)
    }

    /// One attempt at the VM's compute metadata.
    pub async fn compute(&self) -> Result<ComputeMetadata, FetchError> {
        let what = self.what("compute metadata");
        let body = self
            .get(COMPUTE_PATH, &[("api-version", COMPUTE_API_VERSION)], &what)
            .await?;
        let c: ComputeResponse = serde_json::from_slice(&body).map_err(|_| {
            FetchError::permanent(format!(
                "{what}: the answer lacks subscriptionId, resourceGroupName or name"
            ))
        })?;
        Ok(ComputeMetadata {
            subscription_id: c.subscription_id,
            resource_group_name: c.resource_group_name,
            name: c.name,
            vm_scale_set_name: c.vm_scale_set_name.filter(|s| !s.is_empty()),
        })
    }
}

/// A 200 answer's token JSON. Its text never reaches a message: only a `client_id` that is a
/// GUID is kept, to name the identity.
fn parse_token(body: &[u8], what: &str) -> Result<AccessToken, FetchError> {
    let t: TokenResponse = serde_json::from_slice(body).map_err(|_| {
        FetchError::permanent(format!("{what}: the answer is not the expected token JSON"))
    })?;
    if t.access_token.expose().is_empty() {
        return Err(FetchError::permanent(format!(
            "{what}: the answer holds an empty access token"
        )));
    }
    // `expires_on` is seconds since the epoch, as a string (sometimes as a number).
    let expires_on = t
        .expires_on
        .and_then(|v| match v {
            serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
            serde_json::Value::Number(n) => n.as_u64(),
            _ => None,
        })
        .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)));
    Ok(AccessToken {
        token: t.access_token,
        expires_on,
        client_id: t.client_id.filter(|c| is_guid(c)),
    })
}

/// Classifies a non-200 IMDS answer from its status and, for 400, its OAuth error fields (read,
/// never quoted: only the sanitized `error` code appears in the message).
pub fn classify_status(status: u16, body: &[u8], what: &str) -> FetchError {
    let err: Option<ErrorResponse> = serde_json::from_slice(body).ok();
    let code = err
        .as_ref()
        .and_then(|e| e.error.as_deref())
        .and_then(sanitize_code);
    let description = err
        .as_ref()
        .and_then(|e| e.error_description.as_deref())
        .unwrap_or("")
        .to_ascii_lowercase();
    let code_part = code.map(|c| format!("{c}, ")).unwrap_or_default();
    match status {
        // A new VM, or an identity assigned moments ago, answers 400 "Identity not found" until
        // the assignment reaches the host: it clears by waiting.
        400 if description.contains("identity not found") => FetchError::transient(format!(
            "{what}: the managed identity is not assigned to this VM (yet) ({code_part}HTTP 400)"
        )),
        400 if description.contains("multiple user assigned identities") => {
            FetchError::permanent(format!(
                "{what}: several user-assigned identities are attached; choose one with client_id, \
                 object_id or resource_id ({code_part}HTTP 400)"
            ))
        }
        400 => FetchError::permanent(format!("{what}: request refused ({code_part}HTTP 400)")),
        // 404 and 410 while IMDS itself is being updated; 429 throttling; 5xx.
        404 | 410 | 429 | 500..=599 => FetchError::transient(format!(
            "{what}: HTTP {status}{}",
            if status == 429 { " (throttled)" } else { "" }
        )),
        403 => FetchError::permanent(format!(
            "{what}: access refused (HTTP 403; a proxy in the way, or IMDS disabled)"
        )),
        _ => FetchError::permanent(format!(
            "{what}: unexpected answer ({code_part}HTTP {status})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_not_found_is_transient_other_400s_are_not() {
        let e = classify_status(
            400,
            br#"{"error":"invalid_request","error_description":"Identity not found"}"#,
            "x",
        );
        assert!(e.is_transient(), "{}", e.message);
        assert!(
            e.message.contains("invalid_request, HTTP 400"),
            "{}",
            e.message
        );

        let e = classify_status(
            400,
            br#"{"error":"invalid_request","error_description":"Required metadata header not specified"}"#,
            "x",
        );
        assert!(!e.is_transient());
        assert!(
            !e.message.contains("metadata header"),
            "never quotes the body"
        );

        let e = classify_status(
            400,
            br#"{"error":"invalid_request","error_description":"Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"}"#,
            "x",
        );
        assert!(!e.is_transient());
        assert!(e.message.contains("client_id"));
    }

    #[test]
    fn throttling_and_server_errors_are_transient() {
        for s in [404, 410, 429, 500, 503] {
            assert!(classify_status(s, b"<html>", "x").is_transient(), "{s}");
        }
        for s in [401, 403, 405] {
            assert!(!classify_status(s, b"", "x").is_transient(), "{s}");
        }
    }

    #[test]
    fn a_token_answer_keeps_a_guid_client_id_and_nothing_else_of_its_text() {
        let t = parse_token(
            br#"{"access_token":"eyJ-canary","client_id":"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0","expires_on":"1700000000"}"#,
            "x",
        )
        .unwrap();
        assert_eq!(
            t.client_id.as_deref(),
            Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
        );
        assert_eq!(
            t.expires_on,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        let t = parse_token(
            br#"{"access_token":"eyJ-canary","client_id":"<script>not-a-guid","expires_on":1700000000}"#,
            "x",
        )
        .unwrap();
        assert_eq!(t.client_id, None, "only a GUID is quoted");
        assert!(t.expires_on.is_some(), "a number is accepted too");
        let e = parse_token(br#"{"access_token":""}"#, "x").unwrap_err();
        assert!(e.message.contains("empty access token"), "{}", e.message);
        let e = parse_token(br#"{"token":"eyJ-canary"}"#, "x").unwrap_err();
        assert!(!e.message.contains("canary"), "never quotes the body");
    }

    #[test]
    fn debug_never_prints_the_token() {
        let t = AccessToken {
            token: SecretString::new("eyJ-token-canary".into()),
            expires_on: None,
            client_id: None,
        };
        assert!(!format!("{t:?}").contains("canary"));
    }
}
