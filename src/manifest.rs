//! The manifest as written on disk: TOML, names and references only, never values.
//!
//! These types mirror the file exactly and reject unknown keys; [`crate::plan`] turns them into a
//! validated plan. Every key is documented in `docs/manifest.md`, and a test fails when one is not.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Default manifest location.
pub const DEFAULT_PATH: &str = "/etc/bootsecrets/manifest.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub settings: Settings,
    /// Named backend instances, `[backend.NAME]`.
    #[serde(default)]
    pub backend: BTreeMap<String, BackendEntry>,
    /// `[[secret]]` entries.
    #[serde(default)]
    pub secret: Vec<SecretEntry>,
    /// `[[template]]` entries: files assembled from secrets.
    #[serde(default)]
    pub template: Vec<TemplateEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub layout: Option<String>,
    pub output_root: Option<String>,
    pub root_owner: Option<String>,
    pub root_group: Option<String>,
    pub deadline_seconds: Option<u64>,
    pub concurrency: Option<usize>,
    pub startup_jitter_ms: Option<u64>,
    pub max_secret_bytes: Option<u64>,
    pub max_response_bytes: Option<u64>,
    pub default_mode: Option<String>,
    pub default_owner: Option<String>,
    pub default_group: Option<String>,
}

/// `[backend.NAME]`, selected by its `type` key.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BackendEntry {
    Aws(AwsEntry),
    Vault(VaultEntry),
    Azure(AzureEntry),
    Gcp(GcpEntry),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsEntry {
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub imds_endpoint: Option<String>,
    pub imds_endpoint_mode: Option<String>,
    pub use_fips: Option<bool>,
    pub timeout_seconds: Option<u64>,
    pub allow_http: Option<bool>,
}

/// `type = "vault"`: HashiCorp Vault or OpenBao.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultEntry {
    pub address: Option<String>,
    pub namespace: Option<String>,
    pub ca_file: Option<String>,
    pub tls_server_name: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub allow_http: Option<bool>,
    pub revoke_token: Option<bool>,
    pub auth: VaultAuthEntry,
}

/// `[backend.NAME.auth]`, selected by its `method` key.
#[derive(Debug, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum VaultAuthEntry {
    Token(VaultTokenAuth),
    Approle(VaultAppRoleAuth),
    Jwt(VaultJwtAuth),
    Kubernetes(VaultJwtAuth),
    Aws(VaultAwsAuth),
    Azure(VaultAzureAuth),
    Gcp(VaultGcpAuth),
    Cert(VaultCertAuth),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultTokenAuth {
    pub token_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultAppRoleAuth {
    pub mount: Option<String>,
    pub role_id: Option<String>,
    pub role_id_file: Option<String>,
    pub secret_id_file: Option<String>,
    pub secret_id_wrapped: Option<bool>,
}

/// `method = "jwt"` and `method = "kubernetes"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultJwtAuth {
    pub mount: Option<String>,
    pub role: Option<String>,
    pub jwt_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultAwsAuth {
    pub mount: Option<String>,
    pub role: Option<String>,
    pub server_id: Option<String>,
    pub sts_endpoint: Option<String>,
    pub sts_region: Option<String>,
    pub imds_endpoint: Option<String>,
}

/// `method = "azure"`: a managed-identity token plus the VM's names from Azure IMDS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultAzureAuth {
    pub mount: Option<String>,
    pub role: String,
    pub resource: Option<String>,
    pub client_id: Option<String>,
    pub object_id: Option<String>,
    pub resource_id: Option<String>,
    pub imds_endpoint: Option<String>,
}

/// `method = "cert"`: a TLS client certificate the node holds (Vault's cert auth method).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultCertAuth {
    pub mount: Option<String>,
    /// The certificate role (`auth/cert/certs/NAME`); Vault tries every role when unset.
    pub name: Option<String>,
    pub cert_file: String,
    pub key_file: String,
    /// `check`, `doctor` and runs warn when `cert_file` expires within this many days.
    pub expiry_warning_days: Option<u32>,
}

/// `method = "gcp"`: the GCE metadata server's identity token for `vault/ROLE`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultGcpAuth {
    pub mount: Option<String>,
    pub role: String,
    pub service_account: Option<String>,
    pub metadata_endpoint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureEntry {
    pub vault_url: Option<String>,
    pub vault_address: Option<String>,
    pub ca_bundle: Option<String>,
    pub resource: Option<String>,
    pub client_id: Option<String>,
    pub object_id: Option<String>,
    pub resource_id: Option<String>,
    pub imds_endpoint: Option<String>,
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpEntry {
    pub project: Option<String>,
    pub location: Option<String>,
    pub endpoint: Option<String>,
    pub allow_http: Option<bool>,
    pub metadata_endpoint: Option<String>,
    pub service_account: Option<String>,
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretEntry {
    pub path: String,
    pub backend: Option<String>,
    #[serde(rename = "ref")]
    pub reference: String,
    pub version_id: Option<String>,
    pub version_stage: Option<String>,
    pub version: Option<String>,
    pub field: Option<String>,
    pub mount: Option<String>,
    pub kv_version: Option<u8>,
    pub json_key: Option<String>,
    pub encoding: Option<String>,
    pub mode: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub on_change: Option<Vec<String>>,
    pub unless_exists: Option<String>,
    pub optional: Option<bool>,
}

/// `[[template]]`: a file whose text is written with placeholders for secrets' values.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateEntry {
    pub path: String,
    pub format: String,
    pub text: String,
    pub mode: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub on_change: Option<Vec<String>>,
    pub unless_exists: Option<String>,
    pub optional: Option<bool>,
}

impl BackendEntry {
    /// The `type` value.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendEntry::Aws(_) => "aws",
            BackendEntry::Vault(_) => "vault",
            BackendEntry::Azure(_) => "azure",
            BackendEntry::Gcp(_) => "gcp",
        }
    }
}

/// Parses manifest text. Errors carry TOML's line and column and name the offending key.
pub fn parse(text: &str) -> Result<Manifest, toml::de::Error> {
    toml::from_str(text)
}
