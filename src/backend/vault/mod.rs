//! HashiCorp Vault and OpenBao: KV v1 and v2 secrets, read with a token from one login per
//! backend instance (see [`auth`]).
//!
//! Every request (the logins, unwrapping, KV reads, mount detection, token revocation) goes
//! through one `reqwest` client that bootsecrets builds itself (timeout, CA bundle, TLS server
//! name, no redirects, no proxy) and that reads every answer into secret memory, bounded by
//! `settings.max_response_bytes` ([`http::Api`]). See docs/design.md for why `vaultrs` is not
//! used.

pub mod auth;
mod http;
pub mod token;

use crate::credfile;
use crate::error::FetchError;
use crate::manifest::{SecretEntry, VaultEntry};
use crate::retry::{Deadline, RetryError, retry};
use crate::secret::{Secret, SecretString};
use crate::settings::EnvLookup;
use http::{Api, Status};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Mutex;
use std::time::Duration;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Budget for revoking the token after the run, outside the run's deadline.
pub const REVOKE_TIMEOUT: Duration = crate::settings::FINISH_BUDGET;

/// Validated settings of one `type = "vault"` backend.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// Base URL without a trailing slash.
    pub address: String,
    pub address_source: &'static str,
    pub namespace: Option<String>,
    pub ca_file: Option<String>,
    pub tls_server_name: Option<String>,
    pub timeout: Duration,
    pub revoke_token: bool,
    pub auth: auth::AuthConfig,
}

/// What to read for one secret.
#[derive(Debug, Clone)]
pub struct VaultSecretRef {
    /// The path: the whole path when `mount` is None (the mount is then detected), else the
    /// path inside `mount`.
    pub path: String,
    pub mount: Option<String>,
    pub kv_version: Option<u8>,
    pub version: Option<u64>,
    pub field: Option<String>,
}

/// A Vault path: non-empty segments of safe characters, no `.` or `..`.
pub(crate) fn valid_path(p: &str) -> bool {
    !p.is_empty()
        && p.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@+=:,~".contains(&b))
        })
}

/// A DNS name or an IP address, as accepted for `tls_server_name`.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':')
}

pub fn plan(e: &VaultEntry, env: EnvLookup<'_>) -> Result<VaultConfig, Vec<String>> {
    let mut errors = Vec::new();
    let (address, address_source) = match (&e.address, env("VAULT_ADDR")) {
        (Some(a), _) => (a.trim_end_matches('/').to_string(), "address"),
        (None, Some(a)) => (a.trim_end_matches('/').to_string(), "VAULT_ADDR"),
        // `check --offline`: the node's environment may hold it.
        (None, None) if crate::settings::offline() => (String::new(), "VAULT_ADDR"),
        (None, None) => {
            errors.push("`address` is required (or VAULT_ADDR in the environment)".to_string());
            (String::new(), "address")
        }
    };
    if !address.is_empty() {
        match reqwest::Url::parse(&address) {
            Ok(u) if u.scheme() != "https" && u.scheme() != "http" => errors.push(format!(
                "{address_source} `{address}` is not an http:// or https:// URL"
            )),
            Ok(u) if u.host_str().is_none() || u.query().is_some() || u.path() != "/" => errors
                .push(format!(
                    "{address_source} `{address}` must be scheme://host[:port], without a path"
                )),
            Ok(u)
                if u.scheme() == "http"
                    && !crate::backend::is_loopback_url(u.as_str())
                    && e.allow_http != Some(true) =>
            {
                errors.push(format!(
                    "{address_source} `{address}` is plain http: the Vault token and the secret \
                     values would cross the network unencrypted; use https (plain http is accepted \
                     for loopback addresses, or with allow_http = true)"
                ))
            }
            Ok(_) => {}
            Err(_) => errors.push(format!("{address_source} `{address}` is not a valid URL")),
        }
    }
    let namespace = e
        .namespace
        .as_deref()
        .map(|n| n.trim_matches('/').to_string());
    if let Some(n) = &namespace
        && !valid_path(n)
    {
        errors.push(format!(
            "namespace `{n}` is not a namespace path (segments of letters, digits and -_.)"
        ));
    }
    if let Some(f) = &e.ca_file
        && let Err(err) = credfile::check_form("ca_file", f)
    {
        errors.push(err);
    }
    if let Some(n) = &e.tls_server_name
        && !valid_host(n)
    {
        errors.push(format!("tls_server_name `{n}` is not a host name"));
    }
    if e.tls_server_name.is_some() && address.starts_with("http://") {
        errors.push("tls_server_name needs an https:// address".to_string());
    }
    let timeout = crate::backend::timeout_setting(e.timeout_seconds, DEFAULT_TIMEOUT, &mut errors);
    let auth = auth::plan(&e.auth, env)
        .map_err(|errs| errors.extend(errs))
        .ok();
    if !errors.is_empty() {
        return Err(errors);
    }
    let auth = auth.expect("auth planned when there are no errors");
    Ok(VaultConfig {
        address,
        address_source,
        namespace,
        ca_file: e.ca_file.clone(),
        tls_server_name: e.tls_server_name.clone(),
        timeout,
        revoke_token: e.revoke_token.unwrap_or(auth.revoke_by_default()),
        auth,
    })
}

/// The files a connection reads on the node: the CA bundle and the login's own.
pub fn node_files(e: &VaultEntry) -> Vec<credfile::NodeFile> {
    let mut v: Vec<credfile::NodeFile> = e
        .ca_file
        .iter()
        .map(|f| credfile::NodeFile::new("ca_file", f, credfile::Kind::Trusted))
        .collect();
    v.extend(auth::node_files(&e.auth));
    v
}

pub fn plan_secret(e: &SecretEntry) -> Result<VaultSecretRef, Vec<String>> {
    let mut errors = super::foreign_keys(e, "vault", &["version", "field", "mount", "kv_version"]);
    let path = e.reference.trim_matches('/').to_string();
    if !valid_path(&path) {
        errors.push(format!(
            "`ref` `{}` is not a Vault path (segments of letters, digits and -_.@+=:,~; no . or ..)",
            e.reference
        ));
    }
    let mount = e.mount.as_deref().map(|m| m.trim_matches('/').to_string());
    if let Some(m) = &mount
        && !valid_path(m)
    {
        errors.push(format!("mount `{m}` is not a Vault path"));
    }
    match e.kv_version {
        None | Some(1) | Some(2) => {}
        Some(v) => errors.push(format!("kv_version = {v}: must be 1 or 2")),
    }
    if e.kv_version.is_some() && mount.is_none() {
        errors.push("kv_version needs `mount` (the KV engine's mount path)".to_string());
    }
    let version = match e.version.as_deref() {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                errors.push(format!(
                    "version `{v}` is not a KV v2 version number (1 or more)"
                ));
                None
            }
        },
    };
    if version.is_some() && e.kv_version == Some(1) {
        errors.push("version pinning needs KV v2 (kv_version = 1 has no versions)".to_string());
    }
    if e.field.as_deref() == Some("") {
        errors.push("field must not be empty".to_string());
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(VaultSecretRef {
        path,
        mount,
        kv_version: e.kv_version,
        version,
        field: e.field.clone(),
    })
}

impl VaultConfig {
    pub fn describe(&self) -> String {
        let mut s = format!("vault at {} (from {})", self.address, self.address_source);
        if let Some(n) = &self.namespace {
            s += &format!(", namespace {n}");
        }
        if let Some(c) = &self.ca_file {
            s += &format!(", CA bundle {c}");
        }
        if let Some(n) = &self.tls_server_name {
            s += &format!(", TLS server name {n}");
        }
        s += &format!(
            ", login {}, request timeout {} s, token {}",
            self.auth.describe(),
            self.timeout.as_secs(),
            if self.revoke_token {
                "revoked after the run"
            } else {
                "kept after the run"
            }
        );
        s
    }
}

impl VaultSecretRef {
    pub fn describe(&self) -> String {
        let mut s = match &self.mount {
            Some(m) => format!("{m}/{} (mount {m}", self.path),
            None => format!("{} (mount detected", self.path),
        };
        match self.kv_version {
            Some(v) => s += &format!(", KV v{v})"),
            None => s += ")",
        }
        if let Some(v) = self.version {
            s += &format!(" [version {v}]");
        }
        match &self.field {
            Some(f) => s += &format!(" [field {f}]"),
            None => s += " [whole data object as JSON]",
        }
        s
    }
}

/// A logged-in Vault client.
pub struct VaultBackend {
    name: String,
    /// For messages: the login method (`token`, `approle`, ...).
    method: &'static str,
    api: Api,
    /// For messages: the namespace requests go to.
    namespace: Option<String>,
    revoke: bool,
    /// A token placed on the node (`method = "token"`): its file and what its lookup said.
    placed: Option<(String, token::Lookup)>,
    /// The client certificate near its end (cert login), for the run's log.
    cert_warning: Option<String>,
    /// Detected (mount, KV version) pairs: a secret under a known mount, or a retry, does not
    /// ask again (one detection per mount, not per secret: each is a round trip).
    mounts: Mutex<Vec<(String, u8)>>,
    /// Held while detecting, so that the first concurrent fetches under one mount ask once.
    detecting: tokio::sync::Mutex<()>,
    /// What `auth/token/lookup-self` said of the token after the run's first 403: asked once,
    /// to tell a token Vault no longer knows from a policy that does not allow the read.
    standing: tokio::sync::OnceCell<Standing>,
}

/// A token's standing after a permission denial.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Vault knows it: the denial is its policies'.
    Valid,
    /// Vault does not know it (expired, revoked, its use limit spent).
    Invalid,
    /// The lookup was not allowed or did not answer: either could be true.
    Unknown,
}

/// Whether the path `full` lies in the mount `mount` (a whole-segment prefix).
fn mount_contains(mount: &str, full: &str) -> bool {
    full.strip_prefix(mount)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[derive(Deserialize)]
struct MountInfo {
    data: MountData,
}

#[derive(Deserialize)]
struct MountData {
    path: String,
    #[serde(rename = "type")]
    kind: String,
    options: Option<MountOptions>,
}

#[derive(Deserialize)]
struct MountOptions {
    version: Option<String>,
}

/// A KV read's body. Only raw slices of the data object are kept, copied into a [`Secret`].
#[derive(Deserialize)]
struct KvBody<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Kv2Data<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    metadata: Option<Kv2Metadata>,
}

#[derive(Deserialize)]
struct Kv2Metadata {
    version: Option<u64>,
    #[serde(default)]
    deletion_time: String,
    #[serde(default)]
    destroyed: bool,
}

impl VaultBackend {
    /// Logs in (retrying transient errors within `deadline`).
    pub async fn connect(
        name: &str,
        cfg: &VaultConfig,
        deadline: &Deadline,
        limits: &crate::settings::Limits,
    ) -> Result<Self, RetryError> {
        let cert = match &cfg.auth {
            auth::AuthConfig::Cert {
                cert_file,
                key_file,
                ..
            } => Some(http::ClientCert {
                cert_file,
                key_file,
            }),
            _ => None,
        };
        // An expired client certificate fails here, saying so, not as Vault's 500 retried until
        // the deadline; a not-yet-valid one (the clock behind at boot) is waited for.
        let cert_warning = match &cfg.auth {
            auth::AuthConfig::Cert {
                cert_file,
                warn_within,
                ..
            } => {
                retry(
                    &format!("backend `{name}`: client certificate"),
                    deadline,
                    |_| async { auth::certificate_standing(cert_file, *warn_within) },
                )
                .await?
            }
            _ => None,
        };
        let api = retry(&format!("backend `{name}`: Vault client"), deadline, |_| {
            Api::new(cfg, cert, limits.max_response)
        })
        .await?;
        let state = auth::LoginState::default();
        let token: SecretString = retry(
            &format!("backend `{name}`: Vault login ({})", cfg.auth.method()),
            deadline,
            |_| auth::login(&cfg.auth, &state, &api),
        )
        .await?;
        let api = api.with_token(token);
        // A placed token is looked up first: one that Vault no longer knows fails here, saying
        // so, rather than as a permission denial per secret.
        let placed = match &cfg.auth {
            auth::AuthConfig::Token { token_file } => {
                let lookup = retry(
                    &format!("backend `{name}`: Vault token lookup"),
                    deadline,
                    |_| token::look_up(&api, token_file),
                )
                .await?;
                Some((token_file.clone(), lookup))
            }
            _ => None,
        };
        Ok(VaultBackend {
            name: name.to_string(),
            method: cfg.auth.method(),
            namespace: cfg.namespace.clone(),
            api,
            revoke: cfg.revoke_token,
            placed,
            cert_warning,
            mounts: Mutex::new(Vec::new()),
            detecting: tokio::sync::Mutex::new(()),
            standing: tokio::sync::OnceCell::new(),
        })
    }

    /// What a run does before reading (`doctor` does not): renews a renewable placed token, so
    /// that it outlives the period as long as the node runs within each. A refusal is a warning
    /// (the reads say whether the token still works); an unknown token fails the backend.
    pub async fn renew(&mut self, deadline: &Deadline) -> Result<(), RetryError> {
        let Some((file, token::Lookup::Known(life))) = &self.placed else {
            return Ok(());
        };
        if !token::wants_renewal(life) {
            return Ok(());
        }
        let (file, before) = (file.clone(), life.clone());
        let renewed = retry(
            &format!("backend `{}`: Vault token renewal", self.name),
            deadline,
            |_| token::renew(&self.api, &file, &before),
        )
        .await?;
        match renewed {
            Ok(after) => {
                log::debug!(
                    backend = self.name.as_str();
                    "backend `{}`: Vault token renewed: {}",
                    self.name,
                    after.describe()
                );
                self.placed = Some((file, token::Lookup::Known(after)));
            }
            Err(reason) => log::warn!(
                backend = self.name.as_str();
                "backend `{}`: the Vault token in {file} was not renewed ({reason}); it {}",
                self.name,
                before.left()
            ),
        }
        Ok(())
    }

    /// What a run logs as warnings about this identity: a placed token near its end (or of
    /// unknown life), a client certificate near its end.
    pub fn run_warnings(&self) -> Vec<String> {
        self.diagnose()
    }

    /// A placed token's life as the status file records it, after the run's renewal (its `note`
    /// the warning it deserves, if any).
    pub fn token_status(&self, name: &str) -> Option<crate::status::TokenStatus> {
        let (file, lookup) = self.placed.as_ref()?;
        let life = match lookup {
            token::Lookup::Known(life) => Some(life),
            token::Lookup::Unknown(_) => None,
        };
        Some(crate::status::TokenStatus {
            backend: name.to_string(),
            token_file: file.clone(),
            renewable: life.map(|l| l.renewable),
            renewed: life.is_some_and(|l| l.renewed),
            ttl_s: life.and_then(|l| l.ttl).map(|t| t.as_secs()),
            expires: life.and_then(|l| l.expires()).map(crate::status::rfc3339),
            period_s: life.and_then(|l| l.period).map(|p| p.as_secs()),
            note: self.diagnose().into_iter().next(),
        })
    }

    /// Problems `doctor` (and a run, as warnings) can see in the identity: a placed token near
    /// its end, or one whose life is unknown; a client certificate near its end.
    pub fn diagnose(&self) -> Vec<String> {
        let mut w: Vec<String> = match &self.placed {
            Some((file, token::Lookup::Known(life))) => life.warning(file).into_iter().collect(),
            Some((file, token::Lookup::Unknown(why))) => {
                vec![format!("the Vault token in {file}: {why}")]
            }
            None => Vec::new(),
        };
        w.extend(self.cert_warning.clone());
        w
    }

    /// For `doctor`: looks at a wrapped secret_id without spending it (see
    /// [`auth::lookup_wrapped`]), retrying transient errors within `deadline`.
    pub async fn inspect_wrapped(
        name: &str,
        cfg: &VaultConfig,
        deadline: &Deadline,
        limits: &crate::settings::Limits,
    ) -> Result<String, RetryError> {
        let api = retry(&format!("backend `{name}`: Vault client"), deadline, |_| {
            Api::new(cfg, None, limits.max_response)
        })
        .await?;
        retry(
            &format!("backend `{name}`: wrapped secret_id"),
            deadline,
            |_| auth::lookup_wrapped(&cfg.auth, &api),
        )
        .await
    }

    /// Revokes the token (`auth/token/revoke-self`) unless the manifest keeps it. A failure is
    /// reported, not fatal: the secrets are already written, and the token expires with its TTL.
    pub async fn finish(&self) {
        if !self.revoke {
            return;
        }
        let what = "revoking the token (auth/token/revoke-self)";
        let revoke = self
            .api
            .post("auth/token/revoke-self", b"{}".to_vec(), None, what);
        match tokio::time::timeout(REVOKE_TIMEOUT, revoke).await {
            Ok(Ok(resp)) if (200..300).contains(&resp.code) => {
                log::debug!("backend `{}`: Vault token revoked", self.name)
            }
            Ok(Ok(resp)) => log::warn!(
                "backend `{}`: could not revoke the Vault token ({}); it stays valid until its TTL ends",
                self.name,
                resp.quoting_error(what).message
            ),
            Ok(Err(e)) => log::warn!(
                "backend `{}`: could not revoke the Vault token ({}); it stays valid until its TTL ends",
                self.name,
                e.message
            ),
            Err(_) => log::warn!(
                "backend `{}`: revoking the Vault token timed out after {} s; it stays valid until its TTL ends",
                self.name,
                REVOKE_TIMEOUT.as_secs()
            ),
        }
    }

    async fn mount_of(&self, r: &VaultSecretRef) -> Result<(String, String, u8), FetchError> {
        if let (Some(m), Some(v)) = (&r.mount, r.kv_version) {
            return Ok((m.clone(), r.path.clone(), v));
        }
        let full = match &r.mount {
            Some(m) => format!("{m}/{}", r.path),
            None => r.path.clone(),
        };
        let (mount, version) = match self.known_mount(&full) {
            Some(c) => c,
            None => {
                let _detecting = self.detecting.lock().await;
                match self.known_mount(&full) {
                    Some(c) => c,
                    None => {
                        let detected = self.detect_mount(&full).await?;
                        self.mounts.lock().unwrap().push(detected.clone());
                        detected
                    }
                }
            }
        };
        if let Some(m) = &r.mount
            && *m != mount
        {
            return Err(FetchError::permanent(format!(
                "`{full}` belongs to mount `{mount}`, not to the configured mount `{m}`"
            )));
        }
        let inner = full
            .strip_prefix(&mount)
            .map(|p| p.trim_start_matches('/').to_string())
            .unwrap_or_default();
        if inner.is_empty() {
            return Err(FetchError::permanent(format!(
                "`{full}` is the mount `{mount}` itself, not a secret in it"
            )));
        }
        Ok((mount, inner, r.kv_version.unwrap_or(version)))
    }

    /// The detected mount `full` lies in (Vault refuses a mount inside another, so at most one).
    fn known_mount(&self, full: &str) -> Option<(String, u8)> {
        self.mounts
            .lock()
            .unwrap()
            .iter()
            .find(|(m, _)| mount_contains(m, full))
            .cloned()
    }

    async fn detect_mount(&self, full: &str) -> Result<(String, u8), FetchError> {
        let what = format!("detecting the KV mount of `{full}`");
        let resp = self
            .api
            .get(&format!("sys/internal/ui/mounts/{full}"), &what)
            .await?;
        if resp.code == 403 {
            let policy = format!("`sys/internal/ui/mounts/{full}`");
            let mut e = self.denied(&resp, &what, &policy).await;
            if self.standing.get() != Some(&Standing::Invalid) {
                e.message += "; or set `mount` and `kv_version` on the secret to skip detection";
            }
            return Err(e);
        }
        if resp.status != Status::Ok {
            let mut e = resp.quoting_error(&what);
            if e.class == crate::error::Class::Permanent {
                e.message += "; set `mount` and `kv_version` on the secret to skip detection";
            }
            return Err(e);
        }
        let info: MountInfo = serde_json::from_slice(resp.body.expose()).map_err(|_| {
            FetchError::permanent(format!("{what}: Vault's answer is not a mount description"))
        })?;
        let d = info.data;
        // The mount path is used to build URLs and appears in messages: it must be a path like
        // the ones we accept, not whatever the server says.
        let mount = d.path.trim_end_matches('/').to_string();
        if !valid_path(&mount) {
            return Err(FetchError::permanent(format!(
                "{what}: Vault named a mount path that is not a valid path"
            )));
        }
        let version = match (
            d.kind.as_str(),
            d.options.and_then(|o| o.version).as_deref(),
        ) {
            ("kv" | "generic", None | Some("1") | Some("")) => 1,
            ("kv", Some("2")) => 2,
            (kind, v) => {
                let kind = crate::http::sanitize_code(kind).unwrap_or_else(|| "unknown".into());
                let v = v
                    .and_then(crate::http::sanitize_code)
                    .map(|v| format!(" version {v}"))
                    .unwrap_or_default();
                return Err(FetchError::permanent(format!(
                    "{what}: mount `{mount}` is a `{kind}` engine{v}, not KV v1 or v2"
                )));
            }
        };
        Ok((mount, version))
    }

    /// The Vault requests go to, for messages: its address and namespace.
    fn at(&self) -> String {
        match &self.namespace {
            Some(n) => format!("{} (namespace `{n}`)", self.api.base_url()),
            None => self.api.base_url().to_string(),
        }
    }

    /// The token's standing, asked of Vault once per run (`auth/token/lookup-self`, one attempt:
    /// it only chooses between two messages), on the first 403.
    async fn standing(&self) -> Standing {
        *self
            .standing
            .get_or_init(|| async {
                match token::known(&self.api).await {
                    Some(true) => Standing::Valid,
                    Some(false) => Standing::Invalid,
                    None => Standing::Unknown,
                }
            })
            .await
    }

    /// A 403, told apart: a token Vault no longer knows (what to do about the token), or a
    /// policy that does not grant `read` on `policy_path` (the policy to write).
    async fn denied(&self, resp: &http::Response, what: &str, policy_path: &str) -> FetchError {
        let at = self.at();
        let grant = format!(
            "its policies must grant `read` on {policy_path} (a policy `path \"{}\" {{ \
             capabilities = [\"read\"] }}`)",
            policy_path.trim_matches('`')
        );
        let message = match self.standing().await {
            Standing::Valid => {
                format!("{what}: permission denied (403) at {at}: the token is valid, but {grant}")
            }
            Standing::Invalid => match &self.placed {
                Some((file, _)) => format!(
                    "{what}: {}",
                    token::invalid_message(file, &at).replace("is not valid", "is no longer valid")
                ),
                None => format!(
                    "{what}: the token from the {} login is no longer valid at {at}: Vault does \
                     not know it (expired, revoked, or its use limit spent): a role's \
                     `token_num_uses` must be 0 or cover every request of a run (one per secret, \
                     one per KV mount detected, one to revoke it), and its `token_ttl` the run",
                    self.method
                ),
            },
            Standing::Unknown => {
                format!("{what}: permission denied (403) at {at}: the token is invalid or {grant}")
            }
        };
        let mut e = resp.error(what);
        e.message = message;
        e
    }

    /// A failed KV read, with what it takes to fix it: which Vault, and the policy path the token
    /// needs `read` on (for KV v2 the `data/` path, which is what a policy must name).
    async fn read_error(&self, resp: &http::Response, what: &str, url_path: &str) -> FetchError {
        let path = url_path.split('?').next().unwrap_or(url_path);
        if resp.code == 403 {
            return self.denied(resp, what, &format!("`{path}`")).await;
        }
        let mut e = resp.error(what);
        let at = self.at();
        match resp.code {
            404 => {
                e.message += &format!(" at {at}: no secret at `{path}`; check `ref` (and `mount`)")
            }
            _ if e.class == crate::error::Class::Transient => e.message += &format!(" at {at}"),
            _ => {}
        }
        e
    }

    pub fn identity(&self) -> String {
        let at = format!(
            "{}{}",
            self.api.base_url(),
            self.namespace
                .as_deref()
                .map(|n| format!(" (namespace `{n}`)"))
                .unwrap_or_default()
        );
        match &self.placed {
            Some((file, token::Lookup::Known(life))) => {
                format!("the token in {file}, valid at {at}: {}", life.describe())
            }
            Some((file, token::Lookup::Unknown(_))) => {
                format!("the token in {file} at {at} (its life unknown)")
            }
            None => format!("a token from the {} login at {at}", self.method),
        }
    }

    /// KV v2: reads the secret's metadata (never its data): the version asked for (or the
    /// current one) exists and is neither deleted nor destroyed. KV v1 has no metadata.
    pub async fn probe(&self, r: &VaultSecretRef) -> Result<crate::backend::Probe, FetchError> {
        use crate::backend::Probe;
        let (mount, inner, kv) = self.mount_of(r).await?;
        if kv == 1 {
            return Ok(Probe::NoMetadata(format!(
                "`{mount}` is a KV v1 mount, which keeps no metadata: doctor cannot check \
                 `{mount}/{inner}` without reading it"
            )));
        }
        let path = format!("{mount}/metadata/{inner}");
        let what = format!("reading the metadata of KV v2 `{mount}/{inner}`");
        let resp = self.api.get(&path, &what).await?;
        match resp.code {
            200 => {}
            403 => {
                return Ok(Probe::NotAllowed(format!(
                    "the token may not read `{path}`, which doctor uses to check a secret \
                     without reading it (a run needs only `read` on `{mount}/data/{inner}`)"
                )));
            }
            _ => {
                return Err(self
                    .read_error(&resp, &what, &format!("{mount}/data/{inner}"))
                    .await);
            }
        }
        #[derive(serde::Deserialize)]
        struct Meta {
            data: MetaData,
        }
        #[derive(serde::Deserialize)]
        struct MetaData {
            current_version: u64,
            #[serde(default)]
            versions: std::collections::BTreeMap<String, VersionMeta>,
        }
        #[derive(serde::Deserialize)]
        struct VersionMeta {
            #[serde(default)]
            deletion_time: String,
            #[serde(default)]
            destroyed: bool,
        }
        let m: Meta = serde_json::from_slice(resp.body.expose()).map_err(|_| {
            FetchError::permanent(format!("{what}: Vault's answer is not KV metadata"))
        })?;
        let want = r.version.unwrap_or(m.data.current_version);
        match m.data.versions.get(&want.to_string()) {
            None => Err(FetchError::permanent(format!(
                "{what}: version {want} does not exist (current: {})",
                m.data.current_version
            ))),
            Some(v) if v.destroyed => Err(FetchError::permanent(format!(
                "{what}: version {want} is destroyed"
            ))),
            Some(v) if !v.deletion_time.is_empty() => Err(FetchError::permanent(format!(
                "{what}: version {want} is deleted (undelete it or pin another version)"
            ))),
            Some(_) => Ok(Probe::Found(format!(
                "version {want} of {} exists at {}",
                m.data.versions.len(),
                self.api.base_url()
            ))),
        }
    }

    /// One read attempt; the caller retries transient errors.
    pub async fn fetch(&self, r: &VaultSecretRef) -> Result<(Secret, Option<String>), FetchError> {
        let (mount, inner, kv) = self.mount_of(r).await?;
        let (url_path, what) = match kv {
            1 => (
                format!("{mount}/{inner}"),
                format!("reading KV v1 `{mount}/{inner}`"),
            ),
            _ => {
                let mut p = format!("{mount}/data/{inner}");
                if let Some(v) = r.version {
                    p += &format!("?version={v}");
                }
                (p, format!("reading KV v2 `{mount}/{inner}`"))
            }
        };
        let resp = self.api.get(&url_path, &what).await?;
        let body = resp.body.expose();
        let unreadable =
            || FetchError::permanent(format!("{what}: Vault's answer is not a KV response"));
        let (data, version) = match kv {
            1 => {
                if resp.status != Status::Ok {
                    return Err(self.read_error(&resp, &what, &url_path).await);
                }
                let b: KvBody<'_> = serde_json::from_slice(body).map_err(|_| unreadable())?;
                (b.data, None)
            }
            _ => {
                let b: KvBody<'_> = serde_json::from_slice(body).unwrap_or(KvBody { data: None });
                let inner: Option<Kv2Data<'_>> =
                    b.data.and_then(|d| serde_json::from_str(d.get()).ok());
                if resp.status != Status::Ok {
                    // A 404 for a version that exists but was deleted or destroyed still carries
                    // its metadata.
                    if resp.status == Status::NotFound
                        && let Some(m) = inner.as_ref().and_then(|i| i.metadata.as_ref())
                    {
                        let v = m
                            .version
                            .map(|v| format!("version {v}"))
                            .unwrap_or_else(|| "the version".to_string());
                        if m.destroyed {
                            return Err(FetchError::permanent(format!("{what}: {v} is destroyed")));
                        }
                        if !m.deletion_time.is_empty() {
                            return Err(FetchError::permanent(format!(
                                "{what}: {v} is deleted (undelete it or pin another version)"
                            )));
                        }
                    }
                    return Err(self.read_error(&resp, &what, &url_path).await);
                }
                let inner = inner.ok_or_else(unreadable)?;
                (
                    inner.data,
                    inner
                        .metadata
                        .and_then(|m| m.version)
                        .map(|v| v.to_string()),
                )
            }
        };
        let data = data
            .filter(|d| d.get() != "null")
            .ok_or_else(|| FetchError::permanent(format!("{what}: the secret has no data")))?;
        let whole = Secret::new(data.get().as_bytes().to_vec());
        let value = match &r.field {
            None => whole,
            Some(f) => crate::extract::json_key(&whole, f).map_err(|e| {
                FetchError::permanent(format!(
                    "{what}: field `{f}`: {}",
                    e.replace("the secret's JSON object", "the secret's data")
                ))
            })?,
        };
        Ok((value, version))
    }
}

#[cfg(test)]
mod tests {
    use super::mount_contains;

    #[test]
    fn a_mount_contains_whole_segments_only() {
        assert!(mount_contains("secret", "secret/app/db"));
        assert!(mount_contains("team/kv", "team/kv/x"));
        assert!(mount_contains("secret", "secret"));
        assert!(!mount_contains("secret", "secretive/x"));
        assert!(!mount_contains("team/kv", "team/kv2/x"));
        assert!(!mount_contains("secret", "other/secret/x"));
    }
}
