//! Azure Key Vault, authenticated with the VM's managed identity from Azure IMDS.
//!
//! The token comes from [`crate::identity::azure_imds`] inside bootsecrets' own deadline-bound
//! retry loop (not from `azure_identity`'s credential: docs/design.md, "Azure and GCP identity",
//! has the measured reasons). The Key Vault calls go through the official
//! `azure_security_keyvault_secrets` client, with its retries off, a per-request timeout, our own
//! `reqwest` transport (rustls, no proxy, optional extra CA bundle and fixed vault address), and
//! its challenge-resource check left on.

use crate::error::TooLarge;
use crate::error::{FetchError, describe_io, find_io_error};
use crate::http::sanitize_code;
use crate::identity::azure_imds::{self, AzureImdsSettings};
use crate::manifest::{AzureEntry, SecretEntry};
use crate::retry::{Deadline, RetryError, retry};
use crate::secret::{Secret, SecretString};
use crate::settings::EnvLookup;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::http::{ClientOptions, RetryOptions, Transport, Url};
use azure_core::time::OffsetDateTime;
use azure_security_keyvault_secrets::models::SecretClientGetSecretOptions;
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Validated settings of one `type = "azure"` backend.
#[derive(Debug, Clone)]
pub struct AzureConfig {
    /// `https://HOST[:PORT]`, without a path.
    pub vault_url: String,
    pub vault_host: String,
    /// Connect to this address for the vault's host name (TLS still verifies the name).
    pub vault_address: Option<IpAddr>,
    /// Extra trusted CA certificates (PEM), added to the system's.
    pub ca_bundle: Option<PathBuf>,
    /// The token audience, e.g. `https://vault.azure.net`.
    pub resource: String,
    pub resource_source: &'static str,
    pub imds: AzureImdsSettings,
    pub timeout: Duration,
}

/// What to fetch for one secret.
#[derive(Debug, Clone)]
pub struct AzureSecretRef {
    pub name: String,
    /// None: the latest version.
    pub version: Option<String>,
}

/// True for a Key Vault secret name: 1-127 letters, digits and dashes.
fn valid_secret_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 127 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// True for a Key Vault secret version: 32 hex digits.
fn valid_version(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn valid_http_url(u: &str) -> bool {
    Url::parse(u).is_ok_and(|p| {
        matches!(p.scheme(), "http" | "https") && p.host_str().is_some_and(|h| !h.is_empty())
    })
}

/// The token audience Key Vault uses for a vault host: the host without its first label
/// (`myvault.vault.azure.net` -> `https://vault.azure.net`, `x.vault.azure.cn` ->
/// `https://vault.azure.cn`, `x.managedhsm.azure.net` -> `https://managedhsm.azure.net`).
fn default_resource(host: &str) -> Option<String> {
    let (_, rest) = host.split_once('.')?;
    (rest.contains('.') && rest.parse::<IpAddr>().is_err()).then(|| format!("https://{rest}"))
}

pub fn plan(e: &AzureEntry, _env: EnvLookup<'_>) -> Result<AzureConfig, Vec<String>> {
    let mut errors = Vec::new();
    let (vault_url, vault_host) = match e.vault_url.as_deref() {
        None => {
            errors.push(
                "vault_url is required (e.g. \"https://myvault.vault.azure.net\")".to_string(),
            );
            (String::new(), String::new())
        }
        Some(u) => match Url::parse(u) {
            Ok(p)
                if p.scheme() == "https"
                    && p.host_str().is_some_and(|h| !h.is_empty())
                    && (p.path() == "/" || p.path().is_empty())
                    && p.query().is_none()
                    && p.fragment().is_none()
                    && p.username().is_empty()
                    && p.password().is_none() =>
            {
                let host = p.host_str().unwrap_or_default().to_ascii_lowercase();
                let url = match p.port() {
                    Some(port) => format!("https://{host}:{port}"),
                    None => format!("https://{host}"),
                };
                (url, host)
            }
            _ => {
                errors.push(format!(
                    "vault_url `{u}` is not an https:// URL of a vault without a path (Key Vault \
                     refuses tokens over plain http), e.g. \"https://myvault.vault.azure.net\""
                ));
                (String::new(), String::new())
            }
        },
    };
    let vault_address = match e.vault_address.as_deref() {
        None => None,
        Some(a) => match a.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                errors.push(format!(
                    "vault_address `{a}` is not an IP address (the port comes from vault_url)"
                ));
                None
            }
        },
    };
    let ca_bundle = match e.ca_bundle.as_deref() {
        None => None,
        Some(p) if p.starts_with('/') => {
            // It decides whom to trust with the token and the values: same rules as the
            // manifest (owned by root, writable by nobody else), checked when a run needs this
            // backend (`AzureConfig::files`).
            if let Err(err) = crate::credfile::check_form("ca_bundle", p) {
                errors.push(err);
            }
            Some(PathBuf::from(p))
        }
        Some(p) => {
            errors.push(format!("ca_bundle `{p}` must be an absolute path"));
            None
        }
    };
    let (resource, resource_source) = match e.resource.as_deref() {
        Some(r) => {
            let ok = Url::parse(r).is_ok_and(|p| {
                p.scheme() == "https" && p.host_str().is_some() && p.query().is_none()
            });
            if !ok {
                errors.push(format!(
                    "resource `{r}` is not an https:// URL such as \"https://vault.azure.net\""
                ));
            }
            (r.trim_end_matches('/').to_string(), "resource")
        }
        None => match default_resource(&vault_host) {
            Some(r) => (r, "from vault_url"),
            None => {
                if !vault_host.is_empty() {
                    errors.push(format!(
                        "cannot derive the token resource from the vault host `{vault_host}`; \
                         set resource (e.g. \"https://vault.azure.net\")"
                    ));
                }
                (String::new(), "from vault_url")
            }
        },
    };
    let identity = azure_imds::user_assigned(
        e.client_id.as_deref(),
        e.object_id.as_deref(),
        e.resource_id.as_deref(),
    )
    .map_err(|errs| errors.extend(errs))
    .ok()
    .flatten();
    let imds_endpoint = e
        .imds_endpoint
        .clone()
        .unwrap_or_else(|| azure_imds::DEFAULT_ENDPOINT.to_string());
    if !valid_http_url(&imds_endpoint) {
        errors.push(format!(
            "imds_endpoint `{imds_endpoint}` is not an http:// or https:// URL"
        ));
    }
    let timeout = super::timeout_setting(e.timeout_seconds, DEFAULT_TIMEOUT, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(AzureConfig {
        vault_url,
        vault_host,
        vault_address,
        ca_bundle,
        resource,
        resource_source,
        imds: AzureImdsSettings {
            endpoint: imds_endpoint.trim_end_matches('/').to_string(),
            timeout: timeout.min(Duration::from_secs(5)),
            identity,
        },
        timeout,
    })
}

pub fn plan_secret(e: &SecretEntry) -> Result<AzureSecretRef, Vec<String>> {
    let mut errors = super::foreign_keys(e, "azure", &["version"]);
    if !valid_secret_name(&e.reference) {
        errors.push(format!(
            "`ref` `{}` is not a Key Vault secret name (1-127 letters, digits and dashes)",
            e.reference
        ));
    }
    if let Some(v) = &e.version
        && !valid_version(v)
    {
        errors.push(format!(
            "version `{v}` is not a Key Vault secret version (32 hexadecimal digits); omit it for \
             the latest"
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(AzureSecretRef {
        name: e.reference.clone(),
        version: e.version.as_ref().map(|v| v.to_ascii_lowercase()),
    })
}

/// The files a connection reads on the node: the CA bundle, if one is named.
pub fn node_files(e: &AzureEntry) -> Vec<crate::credfile::NodeFile> {
    e.ca_bundle
        .iter()
        .map(|p| crate::credfile::NodeFile::new("ca_bundle", p, crate::credfile::Kind::Trusted))
        .collect()
}

impl AzureConfig {
    pub fn describe(&self) -> String {
        let identity = match &self.imds.identity {
            None => "system-assigned identity".to_string(),
            Some(id) => id.describe(),
        };
        format!(
            "azure Key Vault {}{}{}, token for {} ({}), {identity} from Azure IMDS at {}, request \
             timeout {} s",
            self.vault_url,
            self.vault_address
                .map(|a| format!(" (connecting to {a})"))
                .unwrap_or_default(),
            self.ca_bundle
                .as_ref()
                .map(|p| format!(", extra CA bundle {}", p.display()))
                .unwrap_or_default(),
            self.resource,
            self.resource_source,
            self.imds.endpoint,
            self.timeout.as_secs()
        )
    }
}

impl AzureSecretRef {
    pub fn describe(&self) -> String {
        match &self.version {
            Some(v) => format!("{} [version {v}]", self.name),
            None => self.name.clone(),
        }
    }
}

/// The managed-identity token obtained at connect time, handed to the SDK for the one audience
/// it was issued for.
struct ImdsToken {
    resource: String,
    token: SecretString,
    expires_on: OffsetDateTime,
}

impl fmt::Debug for ImdsToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImdsToken")
            .field("resource", &self.resource)
            .field("token", &self.token)
            .finish()
    }
}

fn same_resource(scope: &str, resource: &str) -> bool {
    let norm = |s: &str| {
        s.strip_suffix("/.default")
            .unwrap_or(s)
            .trim_end_matches('/')
            .to_ascii_lowercase()
    };
    norm(scope) == norm(resource)
}

#[async_trait::async_trait]
impl TokenCredential for ImdsToken {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        if scopes.len() != 1 || !same_resource(scopes[0], &self.resource) {
            return Err(azure_core::Error::with_message(
                ErrorKind::Credential,
                "the vault's authentication challenge asks for a token for another resource",
            ));
        }
        // azure_core's `Secret` is a plain string: this copy is freed without zeroing (a known
        // limit, docs/design.md).
        Ok(AccessToken::new(
            self.token.expose().to_string(),
            self.expires_on,
        ))
    }
}

/// A connected Key Vault client holding the managed identity's token.
pub struct AzureBackend {
    client: SecretClient,
    resource: String,
    /// For messages: the vault, and which identity asked.
    vault_url: String,
    identity: String,
}

/// The identity a backend uses, as its messages name it, with the client id IMDS reported for
/// it when the manifest did not name it that way: what a role assignment is given to.
fn identity_shown(cfg: &AzureConfig, client_id: Option<&str>) -> String {
    use crate::identity::azure_imds::UserAssignedId as U;
    let client = client_id
        .map(|c| format!(" (client_id {c})"))
        .unwrap_or_default();
    match &cfg.imds.identity {
        None => format!("the VM's system-assigned managed identity{client}"),
        Some(U::ClientId(v)) => format!("the user-assigned identity with client_id {v}"),
        Some(U::ObjectId(v)) => format!("the user-assigned identity with object_id {v}{client}"),
        Some(U::ResourceId(v)) => format!("the user-assigned identity {v}{client}"),
    }
}

/// The HTTP status of a failed call, if the vault answered.
fn status_of(err: &azure_core::Error) -> Option<u16> {
    match err.kind() {
        ErrorKind::HttpResponse { status, .. } => Some(u16::from(*status)),
        _ => None,
    }
}

fn http_client(cfg: &AzureConfig) -> Result<reqwest::Client, FetchError> {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .https_only(true)
        .connect_timeout(cfg.timeout.min(Duration::from_secs(3)))
        .timeout(cfg.timeout);
    if let Some(path) = &cfg.ca_bundle {
        let pem =
            crate::credfile::read_trusted_bytes("ca_bundle", path, crate::credfile::MAX_CA_BUNDLE)
                .map_err(FetchError::permanent)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                FetchError::permanent(format!(
                    "ca_bundle {} holds no PEM certificate",
                    path.display()
                ))
            })?;
        b = b.tls_certs_merge(certs);
    }
    if let Some(ip) = cfg.vault_address {
        b = b.resolve(&cfg.vault_host, SocketAddr::new(ip, 0));
    }
    b.build().map_err(|e| {
        crate::http::client_setup_error("the HTTPS client for Key Vault", Some("ca_bundle"), &e)
    })
}

impl AzureBackend {
    /// Obtains the managed identity's token from Azure IMDS, retrying within `deadline`.
    pub async fn connect(
        name: &str,
        cfg: &AzureConfig,
        deadline: &Deadline,
        limits: &crate::settings::Limits,
    ) -> Result<Self, RetryError> {
        let http = http_client(cfg).map_err(RetryError::Permanent)?;
        let token = retry(
            &format!("backend `{name}`: managed-identity token"),
            deadline,
            |_| cfg.imds.token(&cfg.resource),
        )
        .await?;
        let expires_on = token
            .expires_on
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .and_then(|d| OffsetDateTime::from_unix_timestamp(d.as_secs() as i64).ok())
            .unwrap_or_else(|| OffsetDateTime::now_utc() + Duration::from_secs(3600));
        let identity = identity_shown(cfg, token.client_id.as_deref());
        let credential = Arc::new(ImdsToken {
            resource: cfg.resource.clone(),
            token: token.token,
            expires_on,
        });
        let options = SecretClientOptions {
            client_options: ClientOptions {
                // Retries are ours (deadline-bound, transient-only): the SDK makes one attempt.
                retry: RetryOptions::none(),
                transport: Some(Transport::new(Arc::new(LimitedTransport {
                    inner: http,
                    limit: limits.max_response,
                }))),
                ..Default::default()
            },
            ..Default::default()
        };
        let client =
            SecretClient::new(&cfg.vault_url, credential, Some(options)).map_err(|_| {
                RetryError::Permanent(FetchError::permanent(format!(
                    "cannot set up the Key Vault client for {}",
                    cfg.vault_url
                )))
            })?;
        Ok(AzureBackend {
            client,
            resource: cfg.resource.clone(),
            vault_url: cfg.vault_url.clone(),
            identity,
        })
    }

    pub fn identity(&self) -> String {
        format!(
            "{}, token for {}, vault {}",
            self.identity, self.resource, self.vault_url
        )
    }

    /// Lists the secret's versions (properties only, never a value): the version asked for, or
    /// some version, exists and is enabled. Needs the `readMetadata` data action ("Key Vault
    /// Secrets User" has it; an access policy needs `list`).
    pub async fn probe(&self, r: &AzureSecretRef) -> Result<super::Probe, FetchError> {
        use futures_util::StreamExt;
        let explain = |e: &azure_core::Error| {
            let mut f = classify(e, &self.resource);
            if status_of(e) == Some(404) {
                f.message += &format!(" in vault {}: check `ref`", self.vault_url);
            }
            f
        };
        let mut pager = self
            .client
            .list_secret_properties_versions(&r.name, None)
            .map_err(|e| explain(&e))?;
        let (mut total, mut enabled, mut wanted) = (0usize, 0usize, None);
        while let Some(item) = pager.next().await {
            let p = match item {
                Ok(p) => p,
                Err(e) if status_of(&e) == Some(403) => {
                    return Ok(super::Probe::NotAllowed(format!(
                        "{} may not list the secret's versions (readMetadata), which doctor uses \
                         to check it without reading it (a run needs only getSecret)",
                        self.identity
                    )));
                }
                Err(e) => return Err(explain(&e)),
            };
            total += 1;
            let on = p
                .attributes
                .as_ref()
                .and_then(|a| a.enabled)
                .unwrap_or(true);
            enabled += usize::from(on);
            let version = p.id.as_deref().and_then(|id| id.rsplit('/').next());
            if let Some(v) = &r.version
                && version == Some(v.as_str())
            {
                wanted = Some(on);
            }
            if total >= 10_000 {
                break;
            }
        }
        match (&r.version, wanted) {
            (Some(v), None) => Err(FetchError::permanent(format!(
                "version {v} does not exist in vault {}",
                self.vault_url
            ))),
            (Some(v), Some(false)) => {
                Err(FetchError::permanent(format!("version {v} is disabled")))
            }
            (None, _) if total == 0 => Err(FetchError::permanent(format!(
                "the secret has no version in vault {}",
                self.vault_url
            ))),
            (None, _) if enabled == 0 => Err(FetchError::permanent(
                "every version of the secret is disabled",
            )),
            _ => Ok(super::Probe::Found(format!(
                "exists in vault {} with {total} version(s), {enabled} enabled",
                self.vault_url
            ))),
        }
    }

    /// One get-secret attempt. The value moves into a [`Secret`] without a copy.
    pub async fn fetch(&self, r: &AzureSecretRef) -> Result<(Secret, Option<String>), FetchError> {
        let options = SecretClientGetSecretOptions {
            secret_version: r.version.clone(),
            ..Default::default()
        };
        let secret = self
            .client
            .get_secret(&r.name, Some(options))
            .await
            .map_err(|e| {
                let mut f = classify(&e, &self.resource);
                let (vault, who) = (&self.vault_url, &self.identity);
                match status_of(&e) {
                    Some(403) => f.message += &format!(" (vault {vault}, asked by {who})"),
                    Some(404) => {
                        f.message += &format!(" in vault {vault}: check `ref` (and `version`)")
                    }
                    Some(401) => f.message += &format!(" (vault {vault}, {who})"),
                    _ if f.is_transient() => f.message += &format!(" ({vault})"),
                    _ => {}
                }
                f
            })?
            .into_model()
            .map_err(|_| FetchError::permanent("the vault's answer is not a secret bundle"))?;
        let version = secret
            .id
            .as_deref()
            .and_then(|id| id.rsplit('/').next())
            .filter(|v| valid_version(v))
            .map(str::to_string);
        match secret.value {
            Some(v) => Ok((Secret::from_string(v), version)),
            None => Err(FetchError::permanent("the vault's answer holds no value")),
        }
    }
}

/// The Key Vault error code of a response: `error.innererror.code` when present (it says which
/// 403: ForbiddenByRbac, SecretDisabled, AccessDenied...), else `error.code`. Codes only.
fn error_codes(body: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Inner {
        code: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Err {
        code: Option<String>,
        innererror: Option<Inner>,
    }
    #[derive(serde::Deserialize)]
    struct Body {
        error: Err,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) => (
            b.error.code.as_deref().and_then(sanitize_code),
            b.error
                .innererror
                .and_then(|i| i.code)
                .as_deref()
                .and_then(sanitize_code),
        ),
        Err(_) => (None, None),
    }
}

/// The HTTPS transport handed to the Key Vault SDK, refusing a response larger than the limit:
/// at once when its `Content-Length` says so, otherwise as soon as more has come in.
#[derive(Debug)]
struct LimitedTransport {
    inner: reqwest::Client,
    limit: u64,
}

#[async_trait::async_trait]
impl azure_core::http::HttpClient for LimitedTransport {
    async fn execute_request(
        &self,
        request: &azure_core::http::Request,
    ) -> azure_core::Result<azure_core::http::AsyncRawResponse> {
        use futures_util::StreamExt;
        let too_large = |limit: u64| azure_core::Error::new(ErrorKind::Io, TooLarge(limit));
        let resp = self.inner.execute_request(request).await?;
        let declared = resp
            .headers()
            .get_optional_str(&azure_core::http::headers::CONTENT_LENGTH)
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limit) {
            return Err(too_large(self.limit));
        }
        let (status, headers, body) = resp.deconstruct();
        let limit = self.limit;
        let mut seen = 0u64;
        let limited = body.map(move |chunk| {
            let chunk = chunk?;
            seen += chunk.len() as u64;
            if seen > limit {
                return Err(too_large(limit));
            }
            Ok(chunk)
        });
        Ok(azure_core::http::AsyncRawResponse::new(
            status,
            headers,
            Box::pin(limited),
        ))
    }
}

fn classify(err: &azure_core::Error, resource: &str) -> FetchError {
    if let Some(limit) = crate::error::find_too_large(err) {
        return FetchError::permanent(TooLarge(limit).to_string());
    }
    match err.kind() {
        ErrorKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => {
            let status = u16::from(*status);
            let (code, inner) = raw_response
                .as_ref()
                .map(|r| error_codes(r.body()))
                .unwrap_or((None, None));
            let code = code.or_else(|| error_code.as_deref().and_then(sanitize_code));
            let retry_after = raw_response
                .as_ref()
                .and_then(|r| {
                    r.headers()
                        .get_optional_str(&azure_core::http::headers::RETRY_AFTER)
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
                .map(Duration::from_secs);
            let shown = inner
                .clone()
                .or_else(|| code.clone())
                .unwrap_or_else(|| "no error code".to_string());
            let (transient, what) = match (status, inner.as_deref(), code.as_deref()) {
                (429, ..) => (true, "throttled".to_string()),
                (500..=599, ..) => (true, "Key Vault service error".to_string()),
                (403, Some("ForbiddenByRbac"), _) => (
                    false,
                    "access denied by Azure RBAC: assign the identity the \"Key Vault Secrets \
                     User\" role on the vault or the secret"
                        .to_string(),
                ),
                (403, Some("SecretDisabled"), _) => (
                    false,
                    "the secret (or this version of it) is disabled".to_string(),
                ),
                (403, Some("AccessDenied" | "ForbiddenByPolicy"), _) => (
                    false,
                    "access denied by the vault's access policy: grant the identity get on \
                     secrets"
                        .to_string(),
                ),
                (403, Some("ForbiddenByFirewall" | "ForbiddenByConnection"), _) => (
                    false,
                    "the vault's network rules refuse this client (firewall or private endpoint)"
                        .to_string(),
                ),
                (403, ..) => (false, "access denied".to_string()),
                (404, ..) => (false, "not found".to_string()),
                (401, ..) => (
                    false,
                    format!(
                        "the vault rejected the managed identity's token for {resource} (wrong \
                         tenant or audience?)"
                    ),
                ),
                (400, ..) => (false, "invalid request (check ref and version)".to_string()),
                _ => (false, "request rejected".to_string()),
            };
            FetchError {
                class: if transient {
                    crate::error::Class::Transient
                } else {
                    crate::error::Class::Permanent
                },
                message: format!("{what} ({shown}, HTTP {status})"),
                retry_after,
                throttled: status == 429,
            }
        }
        ErrorKind::Connection | ErrorKind::Io => {
            if let Some(e) =
                crate::error::classify_tls(err, Some("Key Vault"), "; a private CA needs ca_bundle")
            {
                e
            } else {
                let detail = find_io_error(err)
                    .map(describe_io)
                    .or_else(|| {
                        find_reqwest(err)
                            .filter(|r| r.is_timeout())
                            .map(|_| "timed out")
                    })
                    .unwrap_or("connection failed or lost");
                FetchError::transient(format!("cannot reach Key Vault: {detail}"))
            }
        }
        ErrorKind::Credential => FetchError::permanent(format!(
            "the vault's authentication challenge asks for a token for another resource than \
             {resource}: set `resource` to the vault's audience"
        )),
        ErrorKind::DataConversion => FetchError::permanent(
            "the vault's answer or authentication challenge could not be read",
        ),
        // The SDK's challenge-resource check (the vault host must lie in the challenge's
        // resource domain) reports as Other: a vault URL that does not belong to its audience.
        _ => FetchError::permanent(format!(
            "the request to Key Vault failed before an answer (is the vault host inside the \
             audience {resource} that its challenge names?)"
        )),
    }
}

fn find_reqwest<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a reqwest::Error> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<reqwest::Error>() {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::http::headers::Headers;
    use azure_core::http::{RawResponse, StatusCode};

    fn http_error(status: u16, body: &str, headers: &[(&'static str, &'static str)]) -> FetchError {
        let mut h = Headers::new();
        for (k, v) in headers {
            h.insert(*k, *v);
        }
        let raw = RawResponse::from_bytes(StatusCode::from(status), h, body.as_bytes().to_vec());
        let err = azure_core::Error::with_message(
            ErrorKind::HttpResponse {
                status: StatusCode::from(status),
                error_code: None,
                raw_response: Some(Box::new(raw)),
            },
            "x",
        );
        classify(&err, "https://vault.azure.net")
    }

    #[test]
    fn key_vault_errors_are_classified_by_status_and_inner_code() {
        let e = http_error(
            403,
            r#"{"error":{"code":"Forbidden","message":"Caller is not authorized oid=secret-ish","innererror":{"code":"ForbiddenByRbac"}}}"#,
            &[],
        );
        assert!(!e.is_transient());
        assert!(
            e.message.contains("Azure RBAC") && e.message.contains("(ForbiddenByRbac, HTTP 403)"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("secret-ish"), "never quotes the body");

        let e = http_error(
            403,
            r#"{"error":{"code":"Forbidden","message":"disabled","innererror":{"code":"SecretDisabled"}}}"#,
            &[],
        );
        assert!(
            !e.is_transient() && e.message.contains("disabled (SecretDisabled, HTTP 403)"),
            "{}",
            e.message
        );

        let e = http_error(
            403,
            r#"{"error":{"code":"Forbidden","message":"m","innererror":{"code":"AccessDenied"}}}"#,
            &[],
        );
        assert!(e.message.contains("access policy"), "{}", e.message);

        let e = http_error(
            404,
            r#"{"error":{"code":"SecretNotFound","message":"m"}}"#,
            &[],
        );
        assert!(!e.is_transient());
        assert_eq!(e.message, "not found (SecretNotFound, HTTP 404)");

        let e = http_error(
            429,
            r#"{"error":{"code":"Throttled"}}"#,
            &[("retry-after", "4")],
        );
        assert!(e.is_transient());
        assert_eq!(e.retry_after, Some(Duration::from_secs(4)));
        assert!(http_error(503, "<html>", &[]).is_transient());
        assert!(!http_error(401, r#"{"error":{"code":"Unauthorized"}}"#, &[]).is_transient());
        assert!(!http_error(400, r#"{"error":{"code":"BadParameter"}}"#, &[]).is_transient());
    }

    fn entry(f: impl FnOnce(&mut AzureEntry)) -> Result<AzureConfig, Vec<String>> {
        let mut e = AzureEntry {
            vault_url: Some("https://myvault.vault.azure.net".into()),
            ..Default::default()
        };
        f(&mut e);
        plan(&e, &|_| None)
    }

    #[test]
    fn settings_are_validated() {
        let c = entry(|_| {}).unwrap();
        assert_eq!(c.resource, "https://vault.azure.net");
        assert_eq!(c.vault_url, "https://myvault.vault.azure.net");
        assert_eq!(c.imds.endpoint, "http://169.254.169.254");
        assert!(c.imds.identity.is_none());

        let c = entry(|e| e.vault_url = Some("https://kv1.vault.azure.cn:8443/".into())).unwrap();
        assert_eq!(c.resource, "https://vault.azure.cn");
        assert_eq!(c.vault_url, "https://kv1.vault.azure.cn:8443");

        let c =
            entry(|e| e.client_id = Some("11111111-2222-3333-4444-555555555555".into())).unwrap();
        assert!(matches!(
            c.imds.identity,
            Some(azure_imds::UserAssignedId::ClientId(_))
        ));

        let err = |f: fn(&mut AzureEntry)| entry(f).unwrap_err().join("\n");
        assert!(err(|e| e.vault_url = None).contains("vault_url is required"));
        assert!(
            err(|e| e.vault_url = Some("http://myvault.vault.azure.net".into()))
                .contains("https://")
        );
        assert!(
            err(|e| e.vault_url = Some("https://myvault.vault.azure.net/secrets".into()))
                .contains("without a path")
        );
        assert!(err(|e| e.vault_url = Some("https://localhost".into())).contains("set resource"));
        assert!(
            err(|e| e.vault_address = Some("vault.local".into())).contains("not an IP address")
        );
        assert!(err(|e| e.ca_bundle = Some("ca.pem".into())).contains("absolute"));
        assert!(err(|e| e.client_id = Some("nope".into())).contains("not a GUID"));
        assert!(
            err(|e| {
                e.client_id = Some("11111111-2222-3333-4444-555555555555".into());
                e.object_id = Some("11111111-2222-3333-4444-555555555555".into());
            })
            .contains("at most one")
        );
        assert!(
            err(|e| e.resource_id = Some("/subscriptions/x/resourceGroups/y".into()))
                .contains("resource id")
        );
        assert!(err(|e| e.timeout_seconds = Some(0)).contains("between 1 and 300"));
        assert!(
            err(|e| e.imds_endpoint = Some("169.254.169.254".into())).contains("imds_endpoint")
        );
    }

    #[test]
    fn resources_match_scopes() {
        assert!(same_resource(
            "https://vault.azure.net/.default",
            "https://vault.azure.net"
        ));
        assert!(same_resource(
            "https://vault.azure.net",
            "https://vault.azure.net/"
        ));
        assert!(!same_resource(
            "https://management.azure.com/.default",
            "https://vault.azure.net"
        ));
        assert_eq!(
            default_resource("a.vault.usgovcloudapi.net").as_deref(),
            Some("https://vault.usgovcloudapi.net")
        );
        assert_eq!(default_resource("localhost"), None);
        assert_eq!(default_resource("vault.net"), None);
    }

    #[test]
    fn secret_names_and_versions() {
        assert!(valid_secret_name("db-password-1"));
        assert!(!valid_secret_name("db_password"));
        assert!(!valid_secret_name("a/b"));
        assert!(valid_version("0123456789abcdef0123456789ABCDEF"));
        assert!(!valid_version("latest"));
    }
}
