//! GCP Secret Manager, authenticated with the instance's service account token from the GCE
//! metadata server.
//!
//! The token (and the project id, unless the manifest sets it) comes from
//! [`crate::identity::gce_metadata`] inside bootsecrets' own deadline-bound retry loop (not from
//! google-cloud-auth's metadata credential: docs/design.md, "Azure and GCP identity", has the
//! measured reasons). AccessSecretVersion goes through the official
//! `google-cloud-secretmanager-v1` client with its retry policy off and a per-attempt timeout.

use super::is_loopback_url;
use crate::error::{FetchError, describe_io, find_io_error};
use crate::identity::gce_metadata::{self, GceMetadataSettings, valid_project};
use crate::manifest::{GcpEntry, SecretEntry};
use crate::retry::{Deadline, RetryError, retry};
use crate::secret::Secret;
use crate::settings::EnvLookup;
use google_cloud_auth::credentials::{
    CacheableResource, Credentials, CredentialsProvider, EntityTag,
};
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_secretmanager_v1::client::SecretManagerService;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zeroize::Zeroizing;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const GLOBAL_ENDPOINT: &str = "https://secretmanager.googleapis.com";
/// Stands for the project in a secret's label before the metadata server has named it (`check`).
const METADATA_PROJECT: &str = "(the metadata server's project)";

/// The project a backend reads short refs from: the manifest's, or the one the metadata server
/// named when the backend connected. Shared by the backend's settings and its secrets, so that a
/// secret's label names the project actually used.
type BackendProject = Arc<Mutex<Option<String>>>;

/// Validated settings of one `type = "gcp"` backend.
#[derive(Debug, Clone)]
pub struct GcpConfig {
    /// None: read from the metadata server at run time.
    pub project: Option<String>,
    /// `project`, or once connected, the project the metadata server named.
    project_used: BackendProject,
    /// Some: regional secrets, served by the regional endpoint.
    pub location: Option<String>,
    pub endpoint: String,
    pub endpoint_source: &'static str,
    pub metadata: GceMetadataSettings,
    pub timeout: Duration,
}

/// What to fetch for one secret. `project` None: the backend's project.
#[derive(Debug, Clone)]
pub struct GcpSecretRef {
    pub project: Option<String>,
    pub location: Option<String>,
    pub secret: String,
    pub version: String,
    /// The backend's project, for the label of a ref without its own.
    backend_project: BackendProject,
}

impl GcpSecretRef {
    /// The full version name for AccessSecretVersion.
    fn name(&self, project: &str) -> String {
        let p = self.project.as_deref().unwrap_or(project);
        match &self.location {
            Some(l) => format!(
                "projects/{p}/locations/{l}/secrets/{}/versions/{}",
                self.secret, self.version
            ),
            None => format!(
                "projects/{p}/secrets/{}/versions/{}",
                self.secret, self.version
            ),
        }
    }
}

/// A secret id: 1-255 letters, digits, `-` and `_`.
fn valid_secret_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `latest`, a version number, or an alias (a letter, then letters, digits, `-`, `_`; at most 63).
fn valid_version(s: &str) -> bool {
    if s == "latest" {
        return true;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return !s.is_empty() && !s.starts_with('0') && s.len() <= 19;
    }
    s.len() <= 63
        && s.as_bytes()[0].is_ascii_alphabetic()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_location(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_http_url(u: &str) -> bool {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/') && !u.chars().any(char::is_whitespace))
}

pub fn plan(e: &GcpEntry, _env: EnvLookup<'_>) -> Result<GcpConfig, Vec<String>> {
    let mut errors = Vec::new();
    if let Some(p) = &e.project
        && !valid_project(p)
    {
        errors.push(format!("project `{p}` is not a project id or number"));
    }
    if let Some(l) = &e.location
        && !valid_location(l)
    {
        errors.push(format!(
            "location `{l}` is not a location such as \"europe-west1\""
        ));
    }
    let (endpoint, endpoint_source) = match (&e.endpoint, &e.location) {
        (Some(u), _) => {
            if !valid_http_url(u) {
                errors.push(format!("endpoint `{u}` is not an http:// or https:// URL"));
            } else if u.starts_with("http://") && !is_loopback_url(u) && e.allow_http != Some(true)
            {
                errors.push(format!(
                    "endpoint `{u}` is plain http: the access token and the secret values would \
                     cross the network unencrypted; use https (plain http is accepted for \
                     loopback addresses, or with allow_http = true)"
                ));
            }
            (u.trim_end_matches('/').to_string(), "endpoint")
        }
        (None, Some(l)) => (
            format!("https://secretmanager.{l}.rep.googleapis.com"),
            "regional endpoint of location",
        ),
        (None, None) => (GLOBAL_ENDPOINT.to_string(), "global endpoint"),
    };
    let metadata_endpoint = e
        .metadata_endpoint
        .clone()
        .unwrap_or_else(|| gce_metadata::DEFAULT_ENDPOINT.to_string());
    if !valid_http_url(&metadata_endpoint) {
        errors.push(format!(
            "metadata_endpoint `{metadata_endpoint}` is not an http:// or https:// URL"
        ));
    }
    let service_account = e
        .service_account
        .clone()
        .unwrap_or_else(|| gce_metadata::DEFAULT_SERVICE_ACCOUNT.to_string());
    if !gce_metadata::valid_service_account(&service_account) {
        errors.push(format!(
            "service_account `{service_account}` is not `default` or a service account email"
        ));
    }
    let timeout = super::timeout_setting(e.timeout_seconds, DEFAULT_TIMEOUT, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(GcpConfig {
        project: e.project.clone(),
        project_used: Arc::new(Mutex::new(e.project.clone())),
        location: e.location.clone(),
        endpoint,
        endpoint_source,
        metadata: GceMetadataSettings {
            endpoint: metadata_endpoint.trim_end_matches('/').to_string(),
            timeout: timeout.min(Duration::from_secs(5)),
            service_account,
        },
        timeout,
    })
}

/// `ref` is a secret id (`db-password`: in the backend's project and location) or a full name,
/// `projects/P/secrets/S[/versions/V]` or `projects/P/locations/L/secrets/S[/versions/V]`. A
/// version in the name and the `version` key are exclusive; the default is `latest`.
pub fn plan_secret(cfg: &GcpConfig, e: &SecretEntry) -> Result<GcpSecretRef, Vec<String>> {
    let mut errors = super::foreign_keys(e, "gcp", &["version"]);
    let r = e.reference.as_str();
    let parts: Vec<&str> = r.split('/').collect();
    // (project, location, secret, version), each as written in `ref`.
    type Parts<'a> = (Option<&'a str>, Option<&'a str>, &'a str, Option<&'a str>);
    let parsed: Option<Parts<'_>> = match parts.as_slice() {
        [s] => Some((None, None, s, None)),
        ["projects", p, "secrets", s] => Some((Some(p), None, s, None)),
        ["projects", p, "secrets", s, "versions", v] => Some((Some(p), None, s, Some(v))),
        ["projects", p, "locations", l, "secrets", s] => Some((Some(p), Some(l), s, None)),
        ["projects", p, "locations", l, "secrets", s, "versions", v] => {
            Some((Some(p), Some(l), s, Some(v)))
        }
        _ => None,
    };
    let Some((project, location, secret, name_version)) = parsed else {
        errors.push(format!(
            "`ref` `{r}` is not a secret id or a name of the form projects/P/secrets/S[/versions/V] \
             or projects/P/locations/L/secrets/S[/versions/V]"
        ));
        return Err(errors);
    };
    if let Some(p) = project
        && !valid_project(p)
    {
        errors.push(format!("`ref` `{r}`: `{p}` is not a project id or number"));
    }
    if !valid_secret_id(secret) {
        errors.push(format!(
            "`ref` `{r}`: `{secret}` is not a secret id (1-255 letters, digits, - and _)"
        ));
    }
    match (location, cfg.location.as_deref()) {
        (Some(l), Some(c)) if l != c => errors.push(format!(
            "`ref` `{r}` is in location {l}, but this backend reaches location {c}: use a backend \
             with location = \"{l}\""
        )),
        (Some(l), None) => errors.push(format!(
            "`ref` `{r}` is a regional secret: its backend needs location = \"{l}\" (regional \
             secrets are served by the regional endpoint)"
        )),
        (None, Some(c)) if project.is_some() => errors.push(format!(
            "`ref` `{r}` is a global secret, but this backend reaches location {c}: use a backend \
             without location"
        )),
        _ => {}
    }
    let version = match (name_version, e.version.as_deref()) {
        (Some(_), Some(_)) => {
            errors.push(format!(
                "`ref` `{r}` names a version, and `version` is set too: use one"
            ));
            "latest"
        }
        (Some(v), None) | (None, Some(v)) => v,
        (None, None) => "latest",
    };
    if !valid_version(version) {
        errors.push(format!(
            "version `{version}` is not `latest`, a version number or an alias"
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(GcpSecretRef {
        project: project.map(str::to_string),
        location: cfg.location.clone(),
        secret: secret.to_string(),
        version: version.to_string(),
        backend_project: cfg.project_used.clone(),
    })
}

impl GcpConfig {
    pub fn describe(&self) -> String {
        format!(
            "gcp Secret Manager, project {}, {} {}, token of service account `{}` from the GCE \
             metadata server at {}, request timeout {} s",
            self.project
                .as_deref()
                .unwrap_or("from the metadata server"),
            self.endpoint_source,
            self.endpoint,
            self.metadata.service_account,
            self.metadata.endpoint,
            self.timeout.as_secs()
        )
    }
}

impl GcpSecretRef {
    /// The full version name, in the project it is read from: the ref's own, else the backend's
    /// (configured, or named by the metadata server once the backend has connected).
    pub fn describe(&self) -> String {
        let backend = self.backend_project.lock().unwrap().clone();
        self.name(backend.as_deref().unwrap_or(METADATA_PROJECT))
    }
}

/// The access token obtained at connect time, as google-cloud-auth credentials.
struct MetadataToken {
    header: http::HeaderValue,
    tag: EntityTag,
}

impl fmt::Debug for MetadataToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MetadataToken([REDACTED])")
    }
}

impl CredentialsProvider for MetadataToken {
    async fn headers(
        &self,
        extensions: http::Extensions,
    ) -> Result<CacheableResource<http::HeaderMap>, google_cloud_auth::errors::CredentialsError>
    {
        if extensions.get::<EntityTag>() == Some(&self.tag) {
            return Ok(CacheableResource::NotModified);
        }
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, self.header.clone());
        Ok(CacheableResource::New {
            entity_tag: self.tag.clone(),
            data: headers,
        })
    }

    async fn universe_domain(&self) -> Option<String> {
        Some("googleapis.com".to_string())
    }
}

/// A connected Secret Manager client holding the service account's token.
pub struct GcpBackend {
    client: SecretManagerService,
    project: String,
    /// For messages: the service account's email, or its name on the metadata server.
    account: String,
    metadata: GceMetadataSettings,
}

impl GcpBackend {
    /// Obtains the access token (and the project id if needed) from the metadata server,
    /// retrying within `deadline`.
    pub async fn connect(
        name: &str,
        cfg: &GcpConfig,
        deadline: &Deadline,
    ) -> Result<Self, RetryError> {
        let token = retry(
            &format!("backend `{name}`: service account token"),
            deadline,
            |_| cfg.metadata.access_token(),
        )
        .await?;
        let project = match &cfg.project {
            Some(p) => p.clone(),
            None => {
                let p = retry(&format!("backend `{name}`: project id"), deadline, |_| {
                    cfg.metadata.project_id()
                })
                .await?;
                *cfg.project_used.lock().unwrap() = Some(p.clone());
                p
            }
        };
        // Sized up front (a growing `format!` would free partial copies of the token unzeroed),
        // and shared by the header rather than copied into it: zeroed with the last clone.
        let mut bearer = Zeroizing::new(Vec::with_capacity(7 + token.token.expose().len()));
        bearer.extend_from_slice(b"Bearer ");
        bearer.extend_from_slice(token.token.expose().as_bytes());
        drop(token);
        let header = crate::http::shared_header(bearer).ok_or_else(|| {
            RetryError::Permanent(FetchError::permanent(
                "the metadata server's access token is not a valid header value",
            ))
        })?;
        let credentials = Credentials::from(MetadataToken {
            header,
            tag: EntityTag::new(),
        });
        let client = SecretManagerService::builder()
            .with_endpoint(&cfg.endpoint)
            .with_credentials(credentials)
            // Retries are ours (deadline-bound, transient-only): the SDK makes one attempt.
            .with_retry_policy(NeverRetry)
            .with_attempt_timeout(cfg.timeout)
            .build()
            .await
            .map_err(|e| {
                RetryError::Permanent(crate::http::client_setup_error(
                    &format!("the Secret Manager client for {}", cfg.endpoint),
                    None,
                    &e,
                ))
            })?;
        // Best effort, for messages only: the metadata server just answered.
        let account = match cfg.metadata.email().await {
            Ok(email) => email,
            Err(_) => format!("`{}` on the metadata server", cfg.metadata.service_account),
        };
        Ok(GcpBackend {
            client,
            project,
            account,
            metadata: cfg.metadata.clone(),
        })
    }

    pub fn identity(&self) -> String {
        format!("service account {}, project {}", self.account, self.project)
    }

    /// What `doctor` can tell beyond the identity: access scopes that cannot reach Secret
    /// Manager (the instance's scopes bound what its service account's token may do).
    pub async fn diagnose(&self) -> Vec<String> {
        const ENOUGH: [&str; 2] = [
            "https://www.googleapis.com/auth/cloud-platform",
            "https://www.googleapis.com/auth/secretmanager",
        ];
        match self.metadata.scopes().await {
            Ok(s) if s.iter().any(|x| ENOUGH.contains(&x.as_str())) => Vec::new(),
            Ok(s) => vec![format!(
                "the instance's access scopes ({}) include neither cloud-platform nor \
                 secretmanager: Secret Manager refuses its token; set the instance's scopes to \
                 cloud-platform (and grant access with IAM roles)",
                if s.is_empty() {
                    "none".to_string()
                } else {
                    s.join(", ")
                }
            )],
            Err(e) => vec![format!("cannot read the access scopes: {}", e.message)],
        }
    }

    /// GetSecretVersion (the version's metadata, never its payload): the version exists and is
    /// enabled. Needs `secretmanager.versions.get` (Secret Manager Viewer), which
    /// `roles/secretmanager.secretAccessor` alone does not grant.
    pub async fn probe(&self, r: &GcpSecretRef) -> Result<super::Probe, FetchError> {
        use google_cloud_secretmanager_v1::model::secret_version::State;
        let name = r.name(&self.project);
        let v = match self
            .client
            .get_secret_version()
            .set_name(&name)
            .send()
            .await
        {
            Ok(v) => v,
            Err(e) => {
                let code = e.status().map(|s| s.code);
                if code == Some(Code::PermissionDenied) {
                    return Ok(super::Probe::NotAllowed(format!(
                        "{} may not read the version's metadata (secretmanager.versions.get), \
                         which doctor uses to check it without reading it (a run needs only \
                         secretmanager.versions.access)",
                        self.account
                    )));
                }
                let mut f = classify(&e);
                if code == Some(Code::NotFound) {
                    f.message += &format!(" in project {}: check `ref`", self.project);
                }
                return Err(f);
            }
        };
        match v.state {
            State::Enabled => Ok(super::Probe::Found(format!(
                "version {} is enabled (project {})",
                v.name.rsplit('/').next().unwrap_or("?"),
                self.project
            ))),
            State::Disabled => Err(FetchError::permanent("the version is disabled")),
            State::Destroyed => Err(FetchError::permanent("the version is destroyed")),
            _ => Err(FetchError::permanent("the version's state is unknown")),
        }
    }

    /// One AccessSecretVersion attempt. The payload's CRC32C is verified when the service sends
    /// one; a mismatch is permanent and the value is dropped (zeroed).
    pub async fn fetch(&self, r: &GcpSecretRef) -> Result<(Secret, Option<String>), FetchError> {
        let out = self
            .client
            .access_secret_version()
            .set_name(r.name(&self.project))
            .send()
            .await
            .map_err(|e| {
                let mut f = classify(&e);
                let (project, account) = (&self.project, &self.account);
                match e.status().map(|s| s.code) {
                    Some(Code::PermissionDenied) => {
                        f.message += &format!(
                            ": grant {account} roles/secretmanager.secretAccessor on it (project \
                             {project})"
                        )
                    }
                    Some(Code::NotFound) => {
                        f.message += &format!(
                            " in project {project}: check `ref` (and `location` for a regional \
                             secret)"
                        )
                    }
                    _ => {}
                }
                f
            })?;
        let version = out
            .name
            .rsplit_once("/versions/")
            .map(|(_, v)| v.to_string())
            .filter(|v| valid_version(v));
        let Some(payload) = out.payload else {
            return Err(FetchError::permanent(
                "the answer holds no payload (AccessSecretVersion)",
            ));
        };
        let expected = payload.data_crc32c;
        let value = Secret::new(Vec::<u8>::from(payload.data));
        if let Some(want) = expected {
            let got = crc32c(value.expose());
            if i64::from(got) != want {
                return Err(FetchError::permanent(
                    "the payload's CRC32C checksum does not match (data corrupted in transit); \
                     nothing was written",
                ));
            }
        }
        Ok((value, version))
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bitwise: payloads are small.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn classify(err: &google_cloud_gax::error::Error) -> FetchError {
    let http = err.http_status_code();
    let http_part = http.map(|s| format!(", HTTP {s}")).unwrap_or_default();
    if let Some(status) = err.status() {
        let code = status.code;
        let (transient, what) = match code {
            Code::NotFound => (false, "not found"),
            Code::PermissionDenied => (false, "permission denied"),
            Code::FailedPrecondition => (false, "the secret version is disabled or destroyed"),
            Code::Unauthenticated => (false, "the access token was rejected"),
            Code::InvalidArgument | Code::OutOfRange => {
                (false, "invalid request (check ref and version)")
            }
            Code::Unavailable
            | Code::ResourceExhausted
            | Code::Internal
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Unknown => (true, "Secret Manager service error"),
            _ if http.is_some_and(|s| s == 429 || s >= 500) => {
                (true, "Secret Manager service error")
            }
            _ => (false, "request rejected"),
        };
        let message = format!("{what} ({}{http_part})", code.name());
        let mut e = if transient {
            FetchError::transient(message)
        } else {
            FetchError::permanent(message)
        };
        e.retry_after = retry_after(err);
        e.throttled = code == Code::ResourceExhausted || http == Some(429);
        return e;
    }
    if let Some(s) = http {
        let mut e = if s == 429 || s >= 500 {
            FetchError::transient(format!("Secret Manager service error (HTTP {s})"))
        } else {
            FetchError::permanent(format!("request rejected (HTTP {s})"))
        };
        e.retry_after = retry_after(err);
        e.throttled = s == 429;
        return e;
    }
    if err.is_timeout() {
        return FetchError::transient("request timed out");
    }
    if let Some(e) = crate::error::classify_tls(err, Some("Secret Manager"), "") {
        return e;
    }
    if err.is_connect() || err.is_io() || err.is_transport() {
        let detail = find_io_error(err)
            .map(describe_io)
            .unwrap_or("connection failed or lost");
        return FetchError::transient(format!("cannot reach Secret Manager: {detail}"));
    }
    if err.is_binding() {
        return FetchError::permanent("the secret name does not fit the API (check ref)");
    }
    if err.is_deserialization() {
        return FetchError::permanent("the answer is not the expected AccessSecretVersion JSON");
    }
    if err.is_authentication() {
        return FetchError::permanent("the access token could not be attached");
    }
    FetchError::transient("unexpected error talking to Secret Manager")
}

fn retry_after(err: &google_cloud_gax::error::Error) -> Option<Duration> {
    err.http_headers()?
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_gax::error::rpc::Status;

    #[test]
    fn crc32c_matches_the_standard_check_values() {
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    fn service(code: Code, http: u16) -> FetchError {
        let status = Status::default()
            .set_code(code)
            .set_message("Secret [projects/1/secrets/canary-in-message] not found");
        let err = google_cloud_gax::error::Error::service_full(
            status,
            Some(http),
            Some(http::HeaderMap::new()),
            None,
        );
        classify(&err)
    }

    #[test]
    fn errors_are_classified_by_status_code() {
        let e = service(Code::NotFound, 404);
        assert!(!e.is_transient());
        assert_eq!(e.message, "not found (NOT_FOUND, HTTP 404)");
        assert!(!e.message.contains("canary"), "never quotes the message");
        assert!(!service(Code::PermissionDenied, 403).is_transient());
        let e = service(Code::FailedPrecondition, 400);
        assert!(!e.is_transient() && e.message.contains("disabled"));
        assert!(service(Code::Unavailable, 503).is_transient());
        assert!(service(Code::ResourceExhausted, 429).is_transient());
        assert!(service(Code::Internal, 500).is_transient());
        assert!(!service(Code::InvalidArgument, 400).is_transient());
        assert!(!service(Code::Unauthenticated, 401).is_transient());

        let e = google_cloud_gax::error::Error::http(502, http::HeaderMap::new(), "<html>".into());
        assert!(classify(&e).is_transient());
        let e = google_cloud_gax::error::Error::http(418, http::HeaderMap::new(), "".into());
        assert!(!classify(&e).is_transient());
    }

    fn cfg(location: Option<&str>) -> GcpConfig {
        plan(
            &GcpEntry {
                project: Some("proj-1".into()),
                location: location.map(str::to_string),
                ..Default::default()
            },
            &|_| None,
        )
        .unwrap()
    }

    fn secret(r: &str, version: Option<&str>) -> SecretEntry {
        let v = version
            .map(|v| format!("version = \"{v}\"\n"))
            .unwrap_or_default();
        let m = crate::manifest::parse(&format!("[[secret]]\npath = \"p\"\nref = \"{r}\"\n{v}"))
            .unwrap();
        m.secret.into_iter().next().unwrap()
    }

    #[test]
    fn refs_short_and_full() {
        let g = cfg(None);
        let ok = |r: &str, v: Option<&str>| plan_secret(&g, &secret(r, v)).unwrap().name("proj-1");
        assert_eq!(ok("db", None), "projects/proj-1/secrets/db/versions/latest");
        assert_eq!(ok("db", Some("3")), "projects/proj-1/secrets/db/versions/3");
        assert_eq!(
            ok("db", Some("blue")),
            "projects/proj-1/secrets/db/versions/blue"
        );
        assert_eq!(
            ok("projects/other/secrets/db", None),
            "projects/other/secrets/db/versions/latest"
        );
        assert_eq!(
            ok("projects/123/secrets/db/versions/7", None),
            "projects/123/secrets/db/versions/7"
        );

        let err = |g: &GcpConfig, r: &str, v: Option<&str>| {
            plan_secret(g, &secret(r, v)).unwrap_err().join("\n")
        };
        assert!(err(&g, "projects/p/secrets/db/versions/2", Some("3")).contains("use one"));
        assert!(err(&g, "db", Some("0")).contains("not `latest`"));
        assert!(err(&g, "db", Some("-x")).contains("not `latest`"));
        assert!(err(&g, "projects/p/db", None).contains("not a secret id or a name"));
        assert!(err(&g, "db.x", None).contains("not a secret id"));
        assert!(
            err(&g, "projects/p/locations/europe-west1/secrets/db", None)
                .contains("needs location")
        );

        let r = cfg(Some("europe-west1"));
        assert_eq!(
            r.endpoint,
            "https://secretmanager.europe-west1.rep.googleapis.com"
        );
        let name = plan_secret(&r, &secret("db", None)).unwrap().name("proj-1");
        assert_eq!(
            name,
            "projects/proj-1/locations/europe-west1/secrets/db/versions/latest"
        );
        let name = plan_secret(
            &r,
            &secret("projects/p/locations/europe-west1/secrets/db", Some("2")),
        )
        .unwrap()
        .name("x");
        assert_eq!(
            name,
            "projects/p/locations/europe-west1/secrets/db/versions/2"
        );
        assert!(
            err(&r, "projects/p/locations/us-east1/secrets/db", None).contains("use a backend")
        );
        assert!(err(&r, "projects/p/secrets/db", None).contains("global secret"));
    }

    /// A short ref is labelled with the backend's project: the configured one, or the one the
    /// metadata server named (recorded at connect time); a ref's own project wins.
    #[test]
    fn labels_name_the_project_a_secret_is_read_from() {
        let g = cfg(None);
        let d = |g: &GcpConfig, r: &str| plan_secret(g, &secret(r, None)).unwrap().describe();
        assert_eq!(d(&g, "db"), "projects/proj-1/secrets/db/versions/latest");
        assert_eq!(
            d(&g, "projects/other/secrets/db"),
            "projects/other/secrets/db/versions/latest"
        );

        let m = plan(&GcpEntry::default(), &|_| None).unwrap();
        let short = plan_secret(&m, &secret("db", Some("3"))).unwrap();
        let full = plan_secret(&m, &secret("projects/other/secrets/db", None)).unwrap();
        assert_eq!(
            short.describe(),
            "projects/(the metadata server's project)/secrets/db/versions/3"
        );
        // What connect records once the metadata server has named the project.
        *m.project_used.lock().unwrap() = Some("from-metadata".into());
        assert_eq!(
            short.describe(),
            "projects/from-metadata/secrets/db/versions/3"
        );
        assert_eq!(full.describe(), "projects/other/secrets/db/versions/latest");
    }

    #[test]
    fn settings_are_validated() {
        let c = plan(&GcpEntry::default(), &|_| None).unwrap();
        assert_eq!(c.endpoint, GLOBAL_ENDPOINT);
        assert_eq!(c.metadata.endpoint, "http://metadata.google.internal");
        assert_eq!(c.metadata.service_account, "default");
        assert!(c.project.is_none());
        let err = |e: GcpEntry| plan(&e, &|_| None).unwrap_err().join("\n");
        assert!(
            err(GcpEntry {
                project: Some("Bad Project".into()),
                ..Default::default()
            })
            .contains("project")
        );
        assert!(
            err(GcpEntry {
                location: Some("Europe".into()),
                ..Default::default()
            })
            .contains("location")
        );
        assert!(
            err(GcpEntry {
                endpoint: Some("http://10.0.0.1:8080".into()),
                ..Default::default()
            })
            .contains("plain http")
        );
        assert!(
            plan(
                &GcpEntry {
                    endpoint: Some("http://10.0.0.1:8080".into()),
                    allow_http: Some(true),
                    ..Default::default()
                },
                &|_| None
            )
            .is_ok()
        );
        assert!(
            plan(
                &GcpEntry {
                    endpoint: Some("http://127.0.0.1:8080".into()),
                    ..Default::default()
                },
                &|_| None
            )
            .is_ok()
        );
        assert!(
            err(GcpEntry {
                service_account: Some("a/b".into()),
                ..Default::default()
            })
            .contains("service_account")
        );
        assert!(
            err(GcpEntry {
                metadata_endpoint: Some("metadata".into()),
                ..Default::default()
            })
            .contains("metadata_endpoint")
        );
        assert!(
            err(GcpEntry {
                timeout_seconds: Some(301),
                ..Default::default()
            })
            .contains("between 1 and 300")
        );
    }
}
