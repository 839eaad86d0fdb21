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

use crate::error::FetchError;
use crate::manifest::{BackendEntry, SecretEntry};
use crate::plan::EnvLookup;
use crate::retry::{Deadline, RetryError};
use crate::secret::Secret;

/// A backend's validated settings.
#[derive(Debug, Clone)]
pub enum BackendConfig {
    #[cfg(feature = "aws")]
    Aws(aws::AwsConfig),
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
    #[cfg(feature = "azure")]
    Azure(azure::AzureSecretRef),
    #[cfg(feature = "gcp")]
    Gcp(gcp::GcpSecretRef),
}

/// A connected backend, ready to fetch.
pub enum Backend {
    #[cfg(feature = "aws")]
    Aws(aws::AwsBackend),
    #[cfg(feature = "azure")]
    Azure(azure::AzureBackend),
    #[cfg(feature = "gcp")]
    Gcp(gcp::GcpBackend),
}

/// A fetched value and the version the backend served, if it says.
pub struct Fetched {
    pub value: Secret,
    pub version: Option<String>,
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
        #[cfg(feature = "azure")]
        BackendEntry::Azure(a) => azure::plan(a, env).map(BackendConfig::Azure),
        #[cfg(feature = "gcp")]
        BackendEntry::Gcp(g) => gcp::plan(g, env).map(BackendConfig::Gcp),
        #[allow(unreachable_patterns)]
        _ => Err(vec![
            "this backend type is not compiled into this build of bootsecrets".to_string(),
        ]),
    }
}

pub fn plan_secret(cfg: &BackendConfig, e: &SecretEntry) -> Result<SecretRef, Vec<String>> {
    match cfg {
        #[cfg(feature = "aws")]
        BackendConfig::Aws(_) => aws::plan_secret(e).map(SecretRef::Aws),
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
            #[cfg(feature = "azure")]
            BackendConfig::Azure(_) => "azure",
            #[cfg(feature = "gcp")]
            BackendConfig::Gcp(_) => "gcp",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            #[cfg(feature = "aws")]
            BackendConfig::Aws(c) => c.describe(),
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
    ) -> Result<Backend, RetryError> {
        match cfg {
            #[cfg(feature = "aws")]
            BackendConfig::Aws(c) => aws::AwsBackend::connect(name, c, deadline)
                .await
                .map(Backend::Aws),
            #[cfg(feature = "azure")]
            BackendConfig::Azure(c) => azure::AzureBackend::connect(name, c, deadline)
                .await
                .map(Backend::Azure),
            #[cfg(feature = "gcp")]
            BackendConfig::Gcp(c) => gcp::GcpBackend::connect(name, c, deadline)
                .await
                .map(Backend::Gcp),
        }
    }

    /// One fetch attempt; the caller retries transient errors.
    pub async fn fetch(&self, r: &SecretRef) -> Result<Fetched, FetchError> {
        match (self, r) {
            #[cfg(feature = "aws")]
            (Backend::Aws(b), SecretRef::Aws(r)) => b
                .fetch(r)
                .await
                .map(|(value, version)| Fetched { value, version }),
            #[cfg(feature = "azure")]
            (Backend::Azure(b), SecretRef::Azure(r)) => b
                .fetch(r)
                .await
                .map(|(value, version)| Fetched { value, version }),
            #[cfg(feature = "gcp")]
            (Backend::Gcp(b), SecretRef::Gcp(r)) => b
                .fetch(r)
                .await
                .map(|(value, version)| Fetched { value, version }),
            #[allow(unreachable_patterns)]
            _ => Err(FetchError::permanent(
                "internal error: a secret was planned for another backend type",
            )),
        }
    }
}
