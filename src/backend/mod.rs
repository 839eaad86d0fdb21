//! Backends: where secret values come from. One module per backend, and this file is the one
//! dispatch point from manifest `type` to implementation.
//!
//! Adding a backend: a module here (settings planning, per-secret reference, connect, fetch, error
//! classification), its variant in [`crate::manifest::BackendEntry`] and in the three enums below,
//! a cargo feature, docs/manifest.md, and tests against a real server or a faithful double.

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
#[cfg(feature = "gcp")]
pub mod gcp;
#[cfg(feature = "vault")]
pub mod vault;

use crate::error::FetchError;
use crate::manifest::{BackendEntry, SecretEntry};
use crate::retry::{Deadline, RetryError};
use crate::secret::Secret;
use crate::settings::{EnvLookup, Limits};

/// A backend's validated settings.
#[derive(Debug, Clone)]
pub enum BackendConfig {
    #[cfg(feature = "aws")]
    Aws(aws::AwsConfig),
    #[cfg(feature = "vault")]
    Vault(vault::VaultConfig),
    #[cfg(feature = "azure")]
    Azure(azure::AzureConfig),
    #[cfg(feature = "gcp")]
    Gcp(gcp::GcpConfig),
}

/// One secret's reference in its backend's terms.
#[derive(Debug, Clone)]
pub enum SecretRef {
    #[cfg(feature = "aws")]
    Aws(aws::AwsSecretRef),
    #[cfg(feature = "vault")]
    Vault(vault::VaultSecretRef),
    #[cfg(feature = "azure")]
    Azure(azure::AzureSecretRef),
    #[cfg(feature = "gcp")]
    Gcp(gcp::GcpSecretRef),
}

/// A connected backend, ready to fetch.
pub enum Backend {
    #[cfg(feature = "aws")]
    Aws(aws::AwsBackend),
    #[cfg(feature = "vault")]
    Vault(Box<vault::VaultBackend>),
    #[cfg(feature = "azure")]
    Azure(azure::AzureBackend),
    #[cfg(feature = "gcp")]
    Gcp(gcp::GcpBackend),
}

/// What a metadata-only look at a secret found ([`Backend::probe`]). Never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The reference resolves; what was seen (versions, stages, state).
    Found(String),
    /// The identity may not read the secret's metadata (a least-privilege policy grants only the
    /// read of the value): not checkable without reading the value, which doctor never does.
    NotAllowed(String),
    /// The API has no metadata call for it.
    NoMetadata(String),
}

/// How a backend's login would spend a credential it cannot get back: `doctor` never spends one
/// unasked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spends {
    /// A response-wrapped credential: its wrapping token works once.
    Wrapped,
    /// A credential whose uses the server may limit, which the node cannot see.
    MaybeLimitedUses,
}

/// A fetched value and the version the backend served, if it says.
pub struct Fetched {
    pub value: Secret,
    pub version: Option<String>,
}

/// A backend's `timeout_seconds`: 1-300, else an error and the default.
pub fn timeout_setting(
    v: Option<u64>,
    default: std::time::Duration,
    errors: &mut Vec<String>,
) -> std::time::Duration {
    match v {
        None => default,
        Some(t) if (1..=300).contains(&t) => std::time::Duration::from_secs(t),
        Some(t) => {
            errors.push(format!("timeout_seconds = {t}: must be between 1 and 300"));
            default
        }
    }
}

/// True for `http(s)://` URLs whose host is a loopback address or `localhost`: plain http is
/// accepted for those (tests, local agents), refused elsewhere unless `allow_http`. Parsed with
/// the `url` crate, as the HTTP clients parse it: `http://host#@localhost` and
/// `http://localhost@host` name `host`, not a loopback.
pub fn is_loopback_url(u: &str) -> bool {
    let Ok(parsed) = url::Url::parse(u) else {
        return false;
    };
    match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// `[[secret]]` keys that only some backend types understand, with how to read each.
fn backend_specific_keys(e: &SecretEntry) -> [(&'static str, bool); 6] {
    [
        ("version_id", e.version_id.is_some()),
        ("version_stage", e.version_stage.is_some()),
        ("version", e.version.is_some()),
        ("field", e.field.is_some()),
        ("mount", e.mount.is_some()),
        ("kv_version", e.kv_version.is_some()),
    ]
}

/// Errors for backend-specific keys set on a secret whose backend type does not take them, so a
/// key meant for another backend is never silently ignored.
pub fn foreign_keys(e: &SecretEntry, kind: &str, allowed: &[&str]) -> Vec<String> {
    backend_specific_keys(e)
        .into_iter()
        .filter(|(k, set)| *set && !allowed.contains(k))
        .map(|(k, _)| format!("`{k}` does not apply to a backend of type \"{kind}\""))
        .collect()
}

pub fn plan_backend(e: &BackendEntry, env: EnvLookup<'_>) -> Result<BackendConfig, Vec<String>> {
    match e {
        #[cfg(feature = "aws")]
        BackendEntry::Aws(a) => aws::plan(a, env).map(BackendConfig::Aws),
        #[cfg(feature = "vault")]
        BackendEntry::Vault(v) => vault::plan(v, env).map(BackendConfig::Vault),
        #[cfg(feature = "azure")]
        BackendEntry::Azure(a) => azure::plan(a, env).map(BackendConfig::Azure),
        #[cfg(feature = "gcp")]
        BackendEntry::Gcp(g) => gcp::plan(g, env).map(BackendConfig::Gcp),
        #[allow(unreachable_patterns)]
        other => Err(vec![format!(
            "backend type \"{}\" is not built into this binary (cargo feature `{}`)",
            other.kind(),
            other.kind()
        )]),
    }
}

/// The files connecting to this backend reads on the node (credentials, CA bundles). Planning
/// checks their form; a run checks the files when it needs the backend (see
/// [`crate::plan::Plan::check_files`]).
pub fn node_files(e: &BackendEntry) -> Vec<crate::credfile::NodeFile> {
    match e {
        #[cfg(feature = "vault")]
        BackendEntry::Vault(v) => vault::node_files(v),
        #[cfg(feature = "azure")]
        BackendEntry::Azure(a) => azure::node_files(a),
        #[allow(unreachable_patterns)]
        _ => Vec::new(),
    }
}

pub fn plan_secret(cfg: &BackendConfig, e: &SecretEntry) -> Result<SecretRef, Vec<String>> {
    match cfg {
        #[cfg(feature = "aws")]
        BackendConfig::Aws(c) => aws::plan_secret(c, e).map(SecretRef::Aws),
        #[cfg(feature = "vault")]
        BackendConfig::Vault(_) => vault::plan_secret(e).map(SecretRef::Vault),
        #[cfg(feature = "azure")]
        BackendConfig::Azure(_) => azure::plan_secret(e).map(SecretRef::Azure),
        #[cfg(feature = "gcp")]
        BackendConfig::Gcp(c) => gcp::plan_secret(c, e).map(SecretRef::Gcp),
    }
}

impl BackendConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            #[cfg(feature = "aws")]
            BackendConfig::Aws(_) => "aws",
            #[cfg(feature = "vault")]
            BackendConfig::Vault(_) => "vault",
            #[cfg(feature = "azure")]
            BackendConfig::Azure(_) => "azure",
            #[cfg(feature = "gcp")]
            BackendConfig::Gcp(_) => "gcp",
        }
    }

    /// Where the client certificate a login presents stands now (Vault's cert login): `None`
    /// for every other identity; `Err` when a login cannot work now (expired: permanent; not yet
    /// valid: transient); `Ok(Some(warning))` when it is near its end. Reads the file.
    pub fn certificate_standing(&self) -> Option<Result<Option<String>, FetchError>> {
        match self {
            #[cfg(feature = "vault")]
            BackendConfig::Vault(c) => match &c.auth {
                vault::auth::AuthConfig::Cert {
                    cert_file,
                    warn_within,
                    ..
                } => Some(vault::auth::certificate_standing(cert_file, *warn_within)),
                _ => None,
            },
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Whether establishing the identity talks only to the node's own metadata service (then it
    /// can run during the startup jitter), not to the backend service (a Vault login does).
    pub fn identity_is_local(&self) -> bool {
        match self {
            #[cfg(feature = "vault")]
            BackendConfig::Vault(_) => false,
            #[allow(unreachable_patterns)]
            _ => true,
        }
    }

    /// Whether establishing the identity spends a credential (see [`Spends`]).
    pub fn login_spends(&self) -> Option<Spends> {
        match self {
            #[cfg(feature = "vault")]
            BackendConfig::Vault(c) => c.auth.login_spends(),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Things worth telling the operator about these settings (not errors).
    pub fn warnings(&self) -> Vec<String> {
        match self {
            #[cfg(feature = "vault")]
            BackendConfig::Vault(c) => c.auth.warnings(),
            #[allow(unreachable_patterns)]
            _ => Vec::new(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            #[cfg(feature = "aws")]
            BackendConfig::Aws(c) => c.describe(),
            #[cfg(feature = "vault")]
            BackendConfig::Vault(c) => c.describe(),
            #[cfg(feature = "azure")]
            BackendConfig::Azure(c) => c.describe(),
            #[cfg(feature = "gcp")]
            BackendConfig::Gcp(c) => c.describe(),
        }
    }
}

impl SecretRef {
    pub fn describe(&self) -> String {
        match self {
            #[cfg(feature = "aws")]
            SecretRef::Aws(r) => r.describe(),
            #[cfg(feature = "vault")]
            SecretRef::Vault(r) => r.describe(),
            #[cfg(feature = "azure")]
            SecretRef::Azure(r) => r.describe(),
            #[cfg(feature = "gcp")]
            SecretRef::Gcp(r) => r.describe(),
        }
    }
}

impl Backend {
    /// Establishes the backend's identity (retrying transient errors within `deadline`).
    pub async fn connect(
        name: &str,
        cfg: &BackendConfig,
        deadline: &Deadline,
        limits: &Limits,
    ) -> Result<Backend, RetryError> {
        match cfg {
            #[cfg(feature = "aws")]
            BackendConfig::Aws(c) => aws::AwsBackend::connect(name, c, deadline, limits)
                .await
                .map(Backend::Aws),
            #[cfg(feature = "vault")]
            BackendConfig::Vault(c) => vault::VaultBackend::connect(name, c, deadline, limits)
                .await
                .map(|b| Backend::Vault(Box::new(b))),
            #[cfg(feature = "azure")]
            BackendConfig::Azure(c) => azure::AzureBackend::connect(name, c, deadline, limits)
                .await
                .map(Backend::Azure),
            #[cfg(feature = "gcp")]
            BackendConfig::Gcp(c) => {
                // Secret Manager's client reads its responses itself: no response limit to set.
                let _ = limits;
                gcp::GcpBackend::connect(name, c, deadline)
                    .await
                    .map(Backend::Gcp)
            }
        }
    }

    /// For `doctor`: what a [`Spends::Wrapped`] credential is, looked at without spending it.
    pub async fn inspect_wrapped(
        name: &str,
        cfg: &BackendConfig,
        deadline: &Deadline,
        limits: &Limits,
    ) -> Result<String, RetryError> {
        match cfg {
            #[cfg(feature = "vault")]
            BackendConfig::Vault(c) => {
                vault::VaultBackend::inspect_wrapped(name, c, deadline, limits).await
            }
            #[allow(unreachable_patterns)]
            _ => {
                let _ = (name, deadline, limits);
                Err(RetryError::Permanent(FetchError::permanent(
                    "internal error: this backend has no wrapped credential",
                )))
            }
        }
    }

    /// One fetch attempt; the caller retries transient errors.
    pub async fn fetch(&self, r: &SecretRef) -> Result<Fetched, FetchError> {
        let fetched = match (self, r) {
            #[cfg(feature = "aws")]
            (Backend::Aws(b), SecretRef::Aws(r)) => b.fetch(r).await,
            #[cfg(feature = "vault")]
            (Backend::Vault(b), SecretRef::Vault(r)) => b.fetch(r).await,
            #[cfg(feature = "azure")]
            (Backend::Azure(b), SecretRef::Azure(r)) => b.fetch(r).await,
            #[cfg(feature = "gcp")]
            (Backend::Gcp(b), SecretRef::Gcp(r)) => b.fetch(r).await,
            #[allow(unreachable_patterns)]
            _ => Err(FetchError::permanent(
                "internal error: a secret was routed to a backend of another type",
            )),
        };
        fetched.map(|(value, version)| Fetched { value, version })
    }

    /// The identity this backend established, as `bootsecrets doctor` shows it (never a token).
    pub fn identity(&self) -> String {
        match self {
            #[cfg(feature = "aws")]
            Backend::Aws(b) => b.identity(),
            #[cfg(feature = "vault")]
            Backend::Vault(b) => b.identity(),
            #[cfg(feature = "azure")]
            Backend::Azure(b) => b.identity(),
            #[cfg(feature = "gcp")]
            Backend::Gcp(b) => b.identity(),
        }
    }

    /// What a run does once connected, before reading, and `doctor` does not: a placed Vault
    /// token is renewed. Nothing for the other backends.
    pub async fn renew(&mut self, deadline: &Deadline) -> Result<(), RetryError> {
        match self {
            #[cfg(feature = "vault")]
            Backend::Vault(b) => b.renew(deadline).await,
            #[allow(unreachable_patterns)]
            _ => {
                let _ = deadline;
                Ok(())
            }
        }
    }

    /// What a run logs as warnings about the identity it established (Vault: a placed token or
    /// a client certificate near its end). Nothing for the other backends.
    pub fn run_warnings(&self) -> Vec<String> {
        match self {
            #[cfg(feature = "vault")]
            Backend::Vault(b) => b.run_warnings(),
            #[allow(unreachable_patterns)]
            _ => Vec::new(),
        }
    }

    /// A placed Vault token's life as the status file records it (its `note` the warning it
    /// deserves, if any). `None` for every other identity.
    pub fn placed_token(&self, name: &str) -> Option<crate::status::TokenStatus> {
        match self {
            #[cfg(feature = "vault")]
            Backend::Vault(b) => b.token_status(name),
            #[allow(unreachable_patterns)]
            _ => {
                let _ = name;
                None
            }
        }
    }

    /// Problems with the identity that `doctor` can see beyond a working login (GCP: access
    /// scopes that keep Secret Manager out; Vault: a placed token near its end). A run logs
    /// the Vault ones as warnings too.
    pub async fn diagnose(&self) -> Vec<String> {
        match self {
            #[cfg(feature = "gcp")]
            Backend::Gcp(b) => b.diagnose().await,
            #[cfg(feature = "vault")]
            Backend::Vault(b) => b.diagnose(),
            #[allow(unreachable_patterns)]
            _ => Vec::new(),
        }
    }

    /// One metadata-only look at a secret, for `bootsecrets doctor`: does the reference resolve
    /// (the secret, its version or stage), without reading the value. An `Err` is a finding (not
    /// found, scheduled for deletion, a disabled version) with the same message a run would give.
    pub async fn probe(&self, r: &SecretRef) -> Result<Probe, FetchError> {
        match (self, r) {
            #[cfg(feature = "aws")]
            (Backend::Aws(b), SecretRef::Aws(r)) => b.probe(r).await,
            #[cfg(feature = "vault")]
            (Backend::Vault(b), SecretRef::Vault(r)) => b.probe(r).await,
            #[cfg(feature = "azure")]
            (Backend::Azure(b), SecretRef::Azure(r)) => b.probe(r).await,
            #[cfg(feature = "gcp")]
            (Backend::Gcp(b), SecretRef::Gcp(r)) => b.probe(r).await,
            #[allow(unreachable_patterns)]
            _ => Err(FetchError::permanent(
                "internal error: a secret was routed to a backend of another type",
            )),
        }
    }

    /// Ends the run's use of the backend (Vault: revokes the token it logged in with). Never
    /// fails the run.
    pub async fn finish(&self) {
        match self {
            #[cfg(feature = "vault")]
            Backend::Vault(b) => b.finish().await,
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback_url;

    #[test]
    fn the_loopback_guard_reads_urls_as_http_clients_do() {
        for ok in [
            "http://localhost:4566",
            "http://LOCALHOST/",
            "http://127.0.0.1:8200",
            "http://127.9.9.9",
            "http://[::1]:8200/v1",
            "http://user@localhost/",
        ] {
            assert!(is_loopback_url(ok), "{ok}");
        }
        for bad in [
            "http://secrets.example.com#@localhost",
            "http://localhost@secrets.example.com",
            "http://localhost:80@secrets.example.com/",
            "http://secrets.example.com/?@localhost",
            "http://secrets.example.com\\@localhost",
            "http://127.0.0.1.example.com",
            "http://[::2]",
            "not a url",
        ] {
            assert!(!is_loopback_url(bad), "{bad}");
        }
    }
}
