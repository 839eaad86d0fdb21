//! Vault logins: one per backend instance, chosen by `[backend.NAME.auth] method`.
//!
//! Each login turns something the node already has (a file placed at provisioning, a service
//! account JWT, the cloud instance identity) into a Vault token. Every login is one `POST
//! auth/<mount>/login` through the backend's own HTTP client ([`Api`]), so its answer is bounded
//! by `settings.max_response_bytes` like every other response, and read into secret memory. Every
//! credential read or made here is a [`SecretString`]; each request body is a zeroizing buffer
//! sized up front, handed to the HTTP client without a copy.

use super::http::Api;
use crate::credfile;
use crate::error::FetchError;
use crate::identity::aws_imds::{self, ImdsSettings, InstanceIdentity};
use crate::identity::azure_imds::{self, AzureImdsSettings};
use crate::identity::gce_metadata::{self, GceMetadataSettings};
use crate::manifest::VaultAuthEntry;
use crate::secret::SecretString;
use crate::settings::EnvLookup;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

pub const KUBERNETES_JWT: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const STS_ENDPOINT: &str = "https://sts.amazonaws.com";
pub const STS_REGION: &str = "us-east-1";
/// The resource Vault's azure method is commonly configured with.
pub const AZURE_RESOURCE: &str = "https://management.azure.com/";
/// The STS call Vault's aws method replays.
pub const GET_CALLER_IDENTITY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// Where the AppRole role_id comes from.
#[derive(Debug, Clone)]
pub enum RoleId {
    Inline(String),
    File(String),
}

/// A validated login.
#[derive(Debug, Clone)]
pub enum AuthConfig {
    Token {
        token_file: String,
    },
    AppRole {
        mount: String,
        role_id: RoleId,
        secret_id_file: Option<String>,
        secret_id_wrapped: bool,
    },
    Jwt {
        mount: String,
        role: Option<String>,
        jwt_file: String,
    },
    Kubernetes {
        mount: String,
        role: String,
        jwt_file: String,
    },
    Aws {
        mount: String,
        role: Option<String>,
        server_id: Option<String>,
        sts_endpoint: String,
        sts_region: String,
        imds: ImdsSettings,
    },
    Azure {
        mount: String,
        role: String,
        resource: String,
        imds: AzureImdsSettings,
    },
    Gcp {
        mount: String,
        role: String,
        metadata: GceMetadataSettings,
    },
    /// A TLS client certificate: the HTTPS client presents it, the login names the role.
    Cert {
        mount: String,
        name: Option<String>,
        cert_file: String,
        key_file: String,
        /// Less than this left on the certificate is worth a warning.
        warn_within: std::time::Duration,
    },
}

/// `expiry_warning_days` unless set: a month to renew a certificate in.
pub const CERT_WARNING_DAYS: u32 = 30;

fn mount(m: &Option<String>, default: &str, errors: &mut Vec<String>) -> String {
    let m = m
        .as_deref()
        .unwrap_or(default)
        .trim_matches('/')
        .to_string();
    if !super::valid_path(&m) {
        errors.push(format!("auth mount `{m}` is not a Vault path"));
    }
    m
}

fn role(r: &Option<String>, required: bool, errors: &mut Vec<String>) -> Option<String> {
    match r.as_deref() {
        None if required => {
            errors.push("auth `role` is required for this method".to_string());
            None
        }
        None => None,
        Some(r) if r.is_empty() || !r.bytes().all(|b| b.is_ascii_graphic()) => {
            errors.push(format!("auth role `{r}` is not a role name"));
            None
        }
        Some(r) => Some(r.to_string()),
    }
}

/// A credential file's path, checked for its form only: the file itself is checked when a run
/// needs this backend ([`AuthConfig::files`]).
fn cred_file(key: &str, f: &str, errors: &mut Vec<String>) -> String {
    if let Err(e) = credfile::check_form(&format!("auth {key}"), f) {
        errors.push(e);
    }
    f.to_string()
}

fn url_ok(u: &str) -> bool {
    reqwest::Url::parse(u)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
}

pub fn plan(e: &VaultAuthEntry, _env: EnvLookup<'_>) -> Result<AuthConfig, Vec<String>> {
    let mut errors = Vec::new();
    let cfg = match e {
        VaultAuthEntry::Token(t) => AuthConfig::Token {
            token_file: cred_file("token_file", &t.token_file, &mut errors),
        },
        VaultAuthEntry::Approle(a) => {
            let role_id = match (&a.role_id, &a.role_id_file) {
                (Some(r), None) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_graphic()) => {
                    RoleId::Inline(r.clone())
                }
                (Some(_), None) => {
                    errors.push("auth role_id must be one printable word".to_string());
                    RoleId::Inline(String::new())
                }
                (None, Some(f)) => RoleId::File(cred_file("role_id_file", f, &mut errors)),
                (Some(_), Some(_)) => {
                    errors.push("auth: set role_id or role_id_file, not both".to_string());
                    RoleId::Inline(String::new())
                }
                (None, None) => {
                    errors.push("auth: approle needs role_id or role_id_file".to_string());
                    RoleId::Inline(String::new())
                }
            };
            let secret_id_file = a
                .secret_id_file
                .as_deref()
                .map(|f| cred_file("secret_id_file", f, &mut errors));
            if a.secret_id_wrapped == Some(true) && secret_id_file.is_none() {
                errors.push("auth: secret_id_wrapped needs secret_id_file".to_string());
            }
            // A role without a bound secret_id logs in with the role_id alone: written inline, it
            // is a complete credential in a file anything on the node may read, and in the
            // instance's user data, which anything on the node may fetch from its metadata.
            if matches!(role_id, RoleId::Inline(_)) && secret_id_file.is_none() {
                errors.push(
                    "auth: an inline role_id with no secret_id_file is a complete login \
                     credential (a role with bind_secret_id = false asks for nothing else), and \
                     the manifest is readable by anything on the node and part of the instance's \
                     user data: put the role_id in role_id_file (a root-only file placed at \
                     provisioning, not in user data), or bind a secret_id and name its \
                     secret_id_file"
                        .to_string(),
                );
            }
            AuthConfig::AppRole {
                mount: mount(&a.mount, "approle", &mut errors),
                role_id,
                secret_id_file,
                secret_id_wrapped: a.secret_id_wrapped.unwrap_or(false),
            }
        }
        VaultAuthEntry::Jwt(j) => {
            let jwt_file = match &j.jwt_file {
                Some(f) => cred_file("jwt_file", f, &mut errors),
                None => {
                    errors.push("auth: jwt needs jwt_file".to_string());
                    String::new()
                }
            };
            AuthConfig::Jwt {
                mount: mount(&j.mount, "jwt", &mut errors),
                role: role(&j.role, false, &mut errors),
                jwt_file,
            }
        }
        VaultAuthEntry::Kubernetes(k) => AuthConfig::Kubernetes {
            mount: mount(&k.mount, "kubernetes", &mut errors),
            role: role(&k.role, true, &mut errors).unwrap_or_default(),
            jwt_file: cred_file(
                "jwt_file",
                k.jwt_file.as_deref().unwrap_or(KUBERNETES_JWT),
                &mut errors,
            ),
        },
        VaultAuthEntry::Aws(a) => {
            let sts_endpoint = a
                .sts_endpoint
                .as_deref()
                .unwrap_or(STS_ENDPOINT)
                .trim_end_matches('/')
                .to_string();
            if !url_ok(&sts_endpoint) {
                errors.push(format!(
                    "auth sts_endpoint `{sts_endpoint}` is not an http:// or https:// URL"
                ));
            }
            let sts_region = a.sts_region.clone().unwrap_or_else(|| STS_REGION.into());
            if sts_region.is_empty()
                || !sts_region
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                errors.push(format!(
                    "auth sts_region `{sts_region}` is not a region name"
                ));
            }
            let imds_endpoint = a
                .imds_endpoint
                .as_deref()
                .unwrap_or(aws_imds::DEFAULT_ENDPOINT)
                .trim_end_matches('/')
                .to_string();
            if !url_ok(&imds_endpoint) {
                errors.push(format!(
                    "auth imds_endpoint `{imds_endpoint}` is not an http:// URL"
                ));
            }
            if let Some(s) = &a.server_id
                && (s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()))
            {
                errors.push(format!("auth server_id `{s}` must be one printable word"));
            }
            AuthConfig::Aws {
                mount: mount(&a.mount, "aws", &mut errors),
                role: role(&a.role, false, &mut errors),
                server_id: a.server_id.clone(),
                sts_endpoint,
                sts_region,
                imds: ImdsSettings {
                    endpoint: imds_endpoint,
                    timeout: Duration::from_secs(5),
                },
            }
        }
        VaultAuthEntry::Azure(a) => {
            let resource = a.resource.clone().unwrap_or_else(|| AZURE_RESOURCE.into());
            if !url_ok(&resource) {
                errors.push(format!("auth resource `{resource}` is not a URL"));
            }
            let identity = azure_imds::user_assigned(
                a.client_id.as_deref(),
                a.object_id.as_deref(),
                a.resource_id.as_deref(),
            )
            .map_err(|errs| errors.extend(errs.into_iter().map(|e| format!("auth {e}"))))
            .ok()
            .flatten();
            let endpoint = endpoint(
                &a.imds_endpoint,
                azure_imds::DEFAULT_ENDPOINT,
                "imds_endpoint",
                &mut errors,
            );
            AuthConfig::Azure {
                mount: mount(&a.mount, "azure", &mut errors),
                role: role(&Some(a.role.clone()), true, &mut errors).unwrap_or_default(),
                resource,
                imds: AzureImdsSettings {
                    endpoint,
                    timeout: azure_imds::DEFAULT_TIMEOUT,
                    identity,
                },
            }
        }
        VaultAuthEntry::Gcp(g) => {
            let service_account = g
                .service_account
                .clone()
                .unwrap_or_else(|| gce_metadata::DEFAULT_SERVICE_ACCOUNT.into());
            if !gce_metadata::valid_service_account(&service_account) {
                errors.push(format!(
                    "auth service_account `{service_account}` is not `default` or an email"
                ));
            }
            let endpoint = endpoint(
                &g.metadata_endpoint,
                gce_metadata::DEFAULT_ENDPOINT,
                "metadata_endpoint",
                &mut errors,
            );
            AuthConfig::Gcp {
                mount: mount(&g.mount, "gcp", &mut errors),
                role: role(&Some(g.role.clone()), true, &mut errors).unwrap_or_default(),
                metadata: GceMetadataSettings {
                    endpoint,
                    timeout: gce_metadata::DEFAULT_TIMEOUT,
                    service_account,
                },
            }
        }
        VaultAuthEntry::Cert(c) => {
            if let Err(e) = credfile::check_form("auth cert_file", &c.cert_file) {
                errors.push(e);
            }
            AuthConfig::Cert {
                mount: mount(&c.mount, "cert", &mut errors),
                name: role(&c.name, false, &mut errors),
                cert_file: c.cert_file.clone(),
                key_file: cred_file("key_file", &c.key_file, &mut errors),
                warn_within: std::time::Duration::from_secs(
                    u64::from(c.expiry_warning_days.unwrap_or(CERT_WARNING_DAYS)) * 86_400,
                ),
            }
        }
    };
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(errors)
    }
}

/// The files this login reads on the node, checked when a run needs the backend (planning
/// checks their form only).
pub fn node_files(e: &VaultAuthEntry) -> Vec<credfile::NodeFile> {
    use credfile::{Kind, NodeFile};
    match e {
        VaultAuthEntry::Token(t) => {
            vec![NodeFile::new(
                "auth token_file",
                &t.token_file,
                Kind::Credential,
            )]
        }
        VaultAuthEntry::Approle(a) => a
            .role_id_file
            .iter()
            .map(|f| NodeFile::new("auth role_id_file", f, Kind::Credential))
            .chain(
                a.secret_id_file
                    .iter()
                    .map(|f| NodeFile::new("auth secret_id_file", f, Kind::Credential)),
            )
            .collect(),
        VaultAuthEntry::Jwt(j) => j
            .jwt_file
            .iter()
            .map(|f| NodeFile::new("auth jwt_file", f, Kind::Credential))
            .collect(),
        VaultAuthEntry::Kubernetes(k) => vec![NodeFile::new(
            "auth jwt_file",
            k.jwt_file.as_deref().unwrap_or(KUBERNETES_JWT),
            Kind::Credential,
        )],
        VaultAuthEntry::Cert(c) => vec![
            NodeFile::new("auth cert_file", &c.cert_file, Kind::Trusted),
            NodeFile::new("auth key_file", &c.key_file, Kind::Credential),
        ],
        VaultAuthEntry::Aws(_) | VaultAuthEntry::Azure(_) | VaultAuthEntry::Gcp(_) => Vec::new(),
    }
}

/// A metadata endpoint setting, validated, without a trailing slash.
fn endpoint(v: &Option<String>, default: &str, key: &str, errors: &mut Vec<String>) -> String {
    let e = v
        .as_deref()
        .unwrap_or(default)
        .trim_end_matches('/')
        .to_string();
    if !url_ok(&e) {
        errors.push(format!("auth {key} `{e}` is not an http:// URL"));
    }
    e
}

impl AuthConfig {
    pub fn method(&self) -> &'static str {
        match self {
            AuthConfig::Token { .. } => "token",
            AuthConfig::AppRole { .. } => "approle",
            AuthConfig::Jwt { .. } => "jwt",
            AuthConfig::Kubernetes { .. } => "kubernetes",
            AuthConfig::Aws { .. } => "aws",
            AuthConfig::Azure { .. } => "azure",
            AuthConfig::Gcp { .. } => "gcp",
            AuthConfig::Cert { .. } => "cert",
        }
    }

    /// Whether a login spends a credential it cannot get back: a wrapped secret_id (its wrapping
    /// token works once), or a plain one (whose uses the role may limit, `secret_id_num_uses`,
    /// which nothing on the node can see). `doctor` does not log in with either unasked.
    pub fn login_spends(&self) -> Option<crate::backend::Spends> {
        match self {
            AuthConfig::AppRole {
                secret_id_file: Some(_),
                secret_id_wrapped,
                ..
            } => Some(if *secret_id_wrapped {
                crate::backend::Spends::Wrapped
            } else {
                crate::backend::Spends::MaybeLimitedUses
            }),
            _ => None,
        }
    }

    pub fn warnings(&self) -> Vec<String> {
        match self {
            AuthConfig::AppRole {
                secret_id_wrapped: true,
                ..
            } => vec![
                "secret_id_wrapped: a wrapping token works once, so only the first run can log \
                 in; a refresh (bootsecrets-refresh.timer) or a reboot with the same file fails. \
                 Deliver a fresh wrapped SecretID before each run, or use an unwrapped one."
                    .into(),
            ],
            _ => Vec::new(),
        }
    }

    /// A token placed by other means is not ours to revoke unless the manifest says so: revoking
    /// it would break the next boot. Tokens this run minted by logging in are revoked.
    pub fn revoke_by_default(&self) -> bool {
        !matches!(self, AuthConfig::Token { .. })
    }

    pub fn describe(&self) -> String {
        match self {
            AuthConfig::Token { token_file } => format!("token from {token_file}"),
            AuthConfig::AppRole {
                mount,
                role_id,
                secret_id_file,
                secret_id_wrapped,
            } => format!(
                "approle at auth/{mount}, role_id {}, {}",
                match role_id {
                    RoleId::Inline(_) => "inline".to_string(),
                    RoleId::File(f) => format!("from {f}"),
                },
                match secret_id_file {
                    Some(f) if *secret_id_wrapped => format!("wrapped secret_id from {f}"),
                    Some(f) => format!("secret_id from {f}"),
                    None => "no secret_id".to_string(),
                }
            ),
            AuthConfig::Jwt {
                mount,
                role,
                jwt_file,
            } => format!(
                "jwt at auth/{mount}, role {}, JWT from {jwt_file}",
                role.as_deref().unwrap_or("(the mount's default)")
            ),
            AuthConfig::Kubernetes {
                mount,
                role,
                jwt_file,
            } => format!("kubernetes at auth/{mount}, role {role}, JWT from {jwt_file}"),
            AuthConfig::Aws {
                mount,
                role,
                server_id,
                sts_endpoint,
                imds,
                ..
            } => format!(
                "aws (IAM) at auth/{mount}, role {}, GetCallerIdentity for {sts_endpoint}{}, credentials from IMDSv2 at {}",
                role.as_deref().unwrap_or("(named after the IAM principal)"),
                server_id
                    .as_deref()
                    .map(|s| format!(" with server ID {s}"))
                    .unwrap_or_default(),
                imds.endpoint
            ),
            AuthConfig::Azure {
                mount,
                role,
                resource,
                imds,
            } => format!(
                "azure at auth/{mount}, role {role}, managed-identity token for {resource} ({}) from Azure IMDS at {}",
                imds.identity
                    .as_ref()
                    .map(|i| i.describe())
                    .unwrap_or_else(|| "system-assigned identity".into()),
                imds.endpoint
            ),
            AuthConfig::Gcp {
                mount,
                role,
                metadata,
            } => format!(
                "gcp at auth/{mount}, role {role}, identity token (audience vault/{role}) of service account {} from {}",
                metadata.service_account, metadata.endpoint
            ),
            AuthConfig::Cert {
                mount,
                name,
                cert_file,
                ..
            } => format!(
                "cert at auth/{mount}, role {}, client certificate {cert_file}",
                name.as_deref()
                    .unwrap_or("(any role the certificate matches)")
            ),
        }
    }
}

/// State kept across login attempts: an unwrapped AppRole secret_id must not be unwrapped twice
/// (a wrapping token works once).
#[derive(Default)]
pub struct LoginState {
    secret_id: Mutex<Option<std::sync::Arc<SecretString>>>,
}

/// A JSON object of string members, written into a zeroizing buffer sized up front (serde_json
/// writes a byte as at most 6, `\u00XX`; a member adds `"":"",` around its name and value), so
/// that no growing buffer frees a partial copy of a credential. Members in the order given.
pub(super) fn json_body(members: &[(&str, &str)]) -> Result<Zeroizing<Vec<u8>>, FetchError> {
    let bound = 2 + members
        .iter()
        .map(|(k, v)| 6 * k.len() + 6 * v.len() + 6)
        .sum::<usize>();
    let mut out = Zeroizing::new(Vec::with_capacity(bound));
    let mut map = serde_json::Serializer::new(&mut *out);
    use serde::ser::{SerializeMap, Serializer};
    let fail = |_| FetchError::permanent("encoding a Vault login request failed");
    let mut m = map.serialize_map(Some(members.len())).map_err(fail)?;
    for (k, v) in members {
        m.serialize_entry(k, v).map_err(fail)?;
    }
    m.end().map_err(fail)?;
    debug_assert!(out.capacity() == bound, "reallocated");
    Ok(out)
}

/// Sends a login body to `auth/<mount>/login` and takes the token from the answer.
async fn post_login(
    api: &Api,
    mount: &str,
    mut body: Zeroizing<Vec<u8>>,
    what: &str,
) -> Result<SecretString, FetchError> {
    // The client owns the body once sent and frees it without zeroing (docs/security.md): the
    // buffer is moved to it, never copied.
    let resp = api
        .post(
            &format!("auth/{mount}/login"),
            std::mem::take(&mut *body),
            None,
            what,
        )
        .await?;
    login_answer(&resp, what)
}

/// One login attempt; the caller retries transient errors.
pub async fn login(
    cfg: &AuthConfig,
    state: &LoginState,
    api: &Api,
) -> Result<SecretString, FetchError> {
    match cfg {
        AuthConfig::Token { token_file } => credfile::read_credential("token_file", token_file),
        AuthConfig::AppRole {
            mount,
            role_id,
            secret_id_file,
            secret_id_wrapped,
        } => {
            let what = format!("login with approle at auth/{mount}");
            let role_id = match role_id {
                RoleId::Inline(r) => SecretString::new(r.clone()),
                RoleId::File(f) => credfile::read_credential("role_id_file", f)?,
            };
            let secret_id = match secret_id_file {
                None => None,
                Some(f) if !*secret_id_wrapped => Some(std::sync::Arc::new(
                    credfile::read_credential("secret_id_file", f)?,
                )),
                Some(f) => {
                    let cached = state.secret_id.lock().unwrap().clone();
                    match cached {
                        Some(s) => Some(s),
                        None => {
                            let s = std::sync::Arc::new(unwrap_secret_id(f, api).await?);
                            *state.secret_id.lock().unwrap() = Some(s.clone());
                            Some(s)
                        }
                    }
                }
            };
            let body = match &secret_id {
                Some(s) => json_body(&[("role_id", role_id.expose()), ("secret_id", s.expose())]),
                None => json_body(&[("role_id", role_id.expose())]),
            }?;
            post_login(api, mount, body, &what).await
        }
        AuthConfig::Jwt {
            mount,
            role,
            jwt_file,
        } => {
            let what = format!("login with jwt at auth/{mount}");
            let jwt = credfile::read_credential("jwt_file", jwt_file)?;
            let body = match role {
                Some(r) => json_body(&[("jwt", jwt.expose()), ("role", r)]),
                None => json_body(&[("jwt", jwt.expose())]),
            }?;
            post_login(api, mount, body, &what).await
        }
        AuthConfig::Kubernetes {
            mount,
            role,
            jwt_file,
        } => {
            let what = format!("login with kubernetes at auth/{mount}");
            let jwt = credfile::read_credential("jwt_file", jwt_file)?;
            let body = json_body(&[("role", role), ("jwt", jwt.expose())])?;
            post_login(api, mount, body, &what).await
        }
        AuthConfig::Aws {
            mount,
            role,
            server_id,
            sts_endpoint,
            sts_region,
            imds,
        } => {
            let what = format!("login with aws (IAM) at auth/{mount}");
            let creds = InstanceIdentity::new(imds)?.credentials().await?;
            let body = aws_login_body(
                role.as_deref(),
                server_id.as_deref(),
                sts_endpoint,
                sts_region,
                &creds,
                SystemTime::now(),
            )?;
            post_login(api, mount, body, &what).await
        }
        AuthConfig::Azure {
            mount,
            role,
            resource,
            imds,
        } => {
            let what = format!("login with azure at auth/{mount}");
            let token = imds.token(resource).await?;
            let vm = imds.compute().await?;
            let body = Zeroizing::new(azure_login_body(role, &token.token, &vm)?);
            post_login(api, mount, body, &what).await
        }
        AuthConfig::Gcp {
            mount,
            role,
            metadata,
        } => {
            let what = format!("login with gcp at auth/{mount}");
            let jwt = metadata
                .identity_token(&format!("vault/{role}"), true)
                .await?;
            let body = json_body(&[("role", role), ("jwt", jwt.expose())])?;
            post_login(api, mount, body, &what).await
        }
        AuthConfig::Cert { mount, name, .. } => {
            // The certificate itself went with the TLS handshake (see `Api::new`).
            let what = format!("login with cert at auth/{mount}");
            let body = match name {
                Some(n) => json_body(&[("name", n)]),
                None => json_body(&[]),
            }?;
            post_login(api, mount, body, &what).await
        }
    }
}

/// Vault's azure login body: the managed-identity JWT, the role, and the VM's subscription,
/// resource group and VM or scale-set name from instance metadata (Vault checks them against
/// the token's `xms_mirid` and the role's bindings).
pub fn azure_login_body(
    role: &str,
    jwt: &SecretString,
    vm: &azure_imds::ComputeMetadata,
) -> Result<Vec<u8>, FetchError> {
    let mut body = serde_json::Map::new();
    body.insert("role".into(), role.into());
    body.insert("jwt".into(), jwt.expose().into());
    body.insert("subscription_id".into(), vm.subscription_id.clone().into());
    body.insert(
        "resource_group_name".into(),
        vm.resource_group_name.clone().into(),
    );
    match &vm.vm_scale_set_name {
        Some(ss) => body.insert("vmss_name".into(), ss.clone().into()),
        None => body.insert("vm_name".into(), vm.name.clone().into()),
    };
    let out = serde_json::to_vec(&body)
        .map_err(|_| FetchError::permanent("encoding the azure login request failed"));
    // The map's copy of the JWT is freed here; zero what we can reach.
    if let Some(serde_json::Value::String(s)) = body.get_mut("jwt") {
        zeroize::Zeroize::zeroize(s);
    }
    out
}

/// The token of a login's answer (`auth.client_token`), refusing one that cannot be sent back
/// as a header.
fn login_answer(resp: &super::http::Response, what: &str) -> Result<SecretString, FetchError> {
    if resp.code != 200 {
        return Err(resp.quoting_error(what));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        auth: Option<AnswerAuth>,
    }
    #[derive(serde::Deserialize)]
    struct AnswerAuth {
        client_token: SecretString,
    }
    let token = serde_json::from_slice::<Answer>(resp.body.expose())
        .ok()
        .and_then(|a| a.auth)
        .map(|a| a.client_token)
        .ok_or_else(|| FetchError::permanent(format!("{what}: Vault's answer has no token")))?;
    if token.expose().is_empty() || !token.expose().bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FetchError::permanent(format!(
            "{what}: Vault returned no usable token"
        )));
    }
    Ok(token)
}

#[derive(serde::Deserialize)]
struct UnwrappedSecretId {
    secret_id: SecretString,
}

/// Unwraps a response-wrapped AppRole secret_id: `sys/wrapping/unwrap` with the wrapping token as
/// the request's token.
async fn unwrap_secret_id(file: &str, api: &Api) -> Result<SecretString, FetchError> {
    let what = "unwrapping the AppRole secret_id";
    let wrapping = credfile::read_credential("secret_id_file", file)?;
    let resp = api
        .post(
            "sys/wrapping/unwrap",
            Vec::from(*b"{}"),
            Some(&wrapping),
            what,
        )
        .await?;
    if resp.code != 200 {
        let mut e = resp.quoting_error(what);
        if resp.code == 400 {
            e = FetchError::permanent(format!(
                "{what}: the wrapping token is invalid, expired or already used (400); a wrapped \
                 secret_id works for one login only"
            ));
        }
        return Err(e);
    }
    #[derive(serde::Deserialize)]
    struct Wrapped {
        data: UnwrappedSecretId,
    }
    serde_json::from_slice::<Wrapped>(resp.body.expose())
        .map(|w| w.data.secret_id)
        .map_err(|_| {
            FetchError::permanent(format!("{what}: the wrapped response holds no secret_id"))
        })
}

/// Looks at a wrapped secret_id without unwrapping it (`sys/wrapping/lookup`, which does not
/// spend the wrapping token): what it was made for and its TTL, or why a run would fail on it.
pub async fn lookup_wrapped(cfg: &AuthConfig, api: &Api) -> Result<String, FetchError> {
    let AuthConfig::AppRole {
        secret_id_file: Some(file),
        secret_id_wrapped: true,
        ..
    } = cfg
    else {
        return Err(FetchError::permanent(
            "internal error: no wrapped secret_id to look at",
        ));
    };
    let what = "looking up the wrapped secret_id (sys/wrapping/lookup)";
    let wrapping = credfile::read_credential("secret_id_file", file)?;
    let mut body = json_body(&[("token", wrapping.expose())])?;
    let resp = api
        .post(
            "sys/wrapping/lookup",
            std::mem::take(&mut *body),
            None,
            what,
        )
        .await?;
    if resp.code == 400 {
        return Err(FetchError::permanent(format!(
            "{what}: the wrapping token in `{file}` is invalid, expired or already used (400): a \
             run would fail to unwrap it; deliver a fresh wrapped secret_id"
        )));
    }
    if resp.code != 200 {
        return Err(resp.quoting_error(what));
    }
    #[derive(serde::Deserialize)]
    struct Lookup {
        data: LookupData,
    }
    #[derive(serde::Deserialize)]
    struct LookupData {
        #[serde(default)]
        creation_path: String,
        #[serde(default)]
        creation_ttl: u64,
    }
    let l: Lookup = serde_json::from_slice(resp.body.expose()).map_err(|_| {
        FetchError::permanent(format!("{what}: Vault's answer is not a wrapping lookup"))
    })?;
    // Shown only when it is a Vault path as bootsecrets accepts them, never whatever was sent.
    let path = Some(l.data.creation_path)
        .filter(|p| p.len() <= 200 && super::valid_path(p))
        .unwrap_or_else(|| "an unnamed path".into());
    Ok(format!(
        "the wrapped secret_id in `{file}` is live (made by {path}, TTL {} s); not unwrapped: it \
         works once, and a run needs it",
        l.data.creation_ttl
    ))
}

/// Builds Vault's aws (IAM) login body: an `sts:GetCallerIdentity` request signed with SigV4 using the
/// instance role's credentials, handed to Vault to replay. With `server_id`, the
/// `X-Vault-AWS-IAM-Server-ID` header is part of the signed headers, so the signature cannot be
/// replayed against another Vault.
pub fn aws_login_body(
    role: Option<&str>,
    server_id: Option<&str>,
    sts_endpoint: &str,
    sts_region: &str,
    creds: &aws_imds::AwsCredentials,
    now: SystemTime,
) -> Result<Zeroizing<Vec<u8>>, FetchError> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;
    let fail = |m: &str| FetchError::permanent(format!("signing the aws login request: {m}"));

    let url = format!("{sts_endpoint}/");
    let host = reqwest::Url::parse(&url)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            })
        })
        .ok_or_else(|| fail("the STS endpoint has no host"))?;
    let mut headers: Vec<(&str, String)> = vec![("host", host), ("content-type", FORM.into())];
    if let Some(id) = server_id {
        headers.push(("x-vault-aws-iam-server-id", id.to_string()));
    }
    let identity = aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.expose(),
        Some(creds.session_token.expose().to_string()),
        creds.expiration,
        "imds",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(sts_region)
        .name("sts")
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|_| fail("incomplete signing parameters"))?
        .into();
    let signable = SignableRequest::new(
        "POST",
        url.as_str(),
        headers.iter().map(|(k, v)| (*k, v.as_str())),
        SignableBody::Bytes(GET_CALLER_IDENTITY.as_bytes()),
    )
    .map_err(|_| fail("the request cannot be signed"))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|_| fail("SigV4 signing failed"))?
        .into_parts();

    // Vault wants the headers as a JSON object of name -> list of values, base64-encoded. The
    // values (the session token and the signature among them) are zeroizing, and so is the JSON,
    // sized up front: serde_json writes a byte as at most 6 (`\u00XX`), and a member adds
    // `"":[""],` around its name and value; a growing buffer would free partial copies unzeroed.
    let mut all: std::collections::BTreeMap<String, Vec<Zeroizing<String>>> = headers
        .iter()
        .map(|(k, v)| (canonical_header(k), vec![Zeroizing::new(v.clone())]))
        .collect();
    for (k, v) in instructions.headers() {
        all.insert(canonical_header(k), vec![Zeroizing::new(v.to_string())]);
    }
    let bound = 2 + all
        .iter()
        .map(|(k, vs)| 6 * k.len() + 6 + vs.iter().map(|v| 6 * v.len() + 3).sum::<usize>())
        .sum::<usize>();
    let mut json = Zeroizing::new(Vec::with_capacity(bound));
    serde_json::to_writer(&mut *json, &all).map_err(|_| fail("encoding headers"))?;
    debug_assert!(json.capacity() == bound, "reallocated");
    // The base64 of the signed headers, in a zeroizing string of its exact size.
    let mut headers_b64 = Zeroizing::new(String::with_capacity(json.len().div_ceil(3) * 4));
    B64.encode_string(&*json, &mut headers_b64);
    let url_b64 = B64.encode(url.as_bytes());
    let body_b64 = B64.encode(GET_CALLER_IDENTITY.as_bytes());
    let mut members = vec![
        ("iam_http_request_method", "POST"),
        ("iam_request_url", url_b64.as_str()),
        ("iam_request_body", body_b64.as_str()),
        ("iam_request_headers", headers_b64.as_str()),
    ];
    if let Some(r) = role {
        members.push(("role", r));
    }
    json_body(&members)
}

/// `x-amz-date` -> `X-Amz-Date`, as Go's net/http (and so Vault) writes header names.
fn canonical_header(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Where a cert login's client certificate stands now: `Err` when a login cannot work (expired:
/// permanent; not yet valid: transient, the node's clock being behind, as at boot before NTP);
/// `Ok(Some(warning))` when it expires within `warn_within`.
pub fn certificate_standing(
    cert_file: &str,
    warn_within: std::time::Duration,
) -> Result<Option<String>, FetchError> {
    use crate::x509::Standing;
    let pem = std::fs::read(cert_file).map_err(|e| {
        FetchError::permanent(format!(
            "cannot read the client certificate {cert_file}: {e}"
        ))
    })?;
    let v = crate::x509::first_certificate_validity(&pem)
        .map_err(|e| FetchError::permanent(format!("client certificate {cert_file}: {e}")))?;
    let now = SystemTime::now();
    let stamp = crate::status::rfc3339;
    match v.at(now) {
        Standing::NotYetValid => Err(FetchError::transient(format!(
            "the client certificate in {cert_file} is not valid before {}, and the node's clock \
             says {}: the clock is probably behind (not yet synchronized at boot); waiting for \
             it (if it stays wrong, fix the node's time source)",
            stamp(v.not_before),
            stamp(now)
        ))),
        Standing::Expired { .. } => Err(FetchError::permanent(format!(
            "the client certificate in {cert_file} expired at {} (the node's clock says {}): \
             Vault refuses the login; install a renewed certificate in cert_file (and its key \
             in key_file), or fix the node's clock if it is ahead",
            stamp(v.not_after),
            stamp(now)
        ))),
        Standing::Valid { left } if left < warn_within => Ok(Some(format!(
            "the client certificate in {cert_file} expires in {} ({}): renew it before then, or \
             the node cannot log in (expiry_warning_days sets this warning's margin)",
            super::token::span(left),
            stamp(v.not_after)
        ))),
        Standing::Valid { .. } => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> aws_imds::AwsCredentials {
        aws_imds::AwsCredentials {
            role: "node".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SecretString::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            session_token: SecretString::new("session-token-canary".into()),
            expiration: None,
        }
    }

    /// The login body, decoded field by field, has exactly the shape Vault's aws method documents:
    /// role, iam_http_request_method, and base64 iam_request_url, iam_request_body and
    /// iam_request_headers (a JSON object of header name to list of values).
    #[test]
    fn aws_login_body_has_the_documented_shape() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let req = aws_login_body(
            Some("node"),
            Some("vault.example.com"),
            STS_ENDPOINT,
            STS_REGION,
            &creds(),
            now,
        )
        .unwrap();
        let body: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&req).unwrap();
        let mut body_keys: Vec<&String> = body.keys().collect();
        body_keys.sort();
        let body: serde_json::Map<String, serde_json::Value> = body_keys
            .into_iter()
            .map(|k| (k.clone(), body[k].clone()))
            .collect();
        let keys: Vec<&str> = body.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "iam_http_request_method",
                "iam_request_body",
                "iam_request_headers",
                "iam_request_url",
                "role"
            ]
        );
        let s = |k: &str| body[k].as_str().unwrap().to_string();
        let d = |k: &str| String::from_utf8(B64.decode(s(k)).unwrap()).unwrap();
        assert_eq!(s("role"), "node");
        assert_eq!(s("iam_http_request_method"), "POST");
        assert_eq!(d("iam_request_url"), "https://sts.amazonaws.com/");
        assert_eq!(d("iam_request_body"), GET_CALLER_IDENTITY);
        let headers: std::collections::BTreeMap<String, Vec<String>> =
            serde_json::from_str(&d("iam_request_headers")).unwrap();
        assert_eq!(headers["Host"], ["sts.amazonaws.com"]);
        assert_eq!(headers["Content-Type"], [FORM]);
        assert_eq!(headers["X-Vault-Aws-Iam-Server-Id"], ["vault.example.com"]);
        assert_eq!(headers["X-Amz-Date"], ["20231114T221320Z"]);
        assert_eq!(headers["X-Amz-Security-Token"], ["session-token-canary"]);
        let auth = &headers["Authorization"][0];
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/sts/aws4_request, "
            ),
            "{auth}"
        );
        // The server ID header is signed, so the request cannot be replayed to another Vault.
        assert!(
            auth.contains(
                "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-vault-aws-iam-server-id,"
            ),
            "{auth}"
        );
        assert!(
            !auth.contains("wJalrXUtnFEMI"),
            "the secret key is never sent"
        );
    }

    #[test]
    fn aws_login_without_role_or_server_id() {
        let req = aws_login_body(
            None,
            None,
            "https://sts.eu-west-1.amazonaws.com",
            "eu-west-1",
            &creds(),
            SystemTime::now(),
        )
        .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&req).unwrap();
        assert!(body.get("role").is_none());
        let headers: serde_json::Value = serde_json::from_slice(
            &B64.decode(body["iam_request_headers"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(headers["Host"][0], "sts.eu-west-1.amazonaws.com");
        assert!(headers.get("X-Vault-Aws-Iam-Server-Id").is_none());
        assert!(
            headers["Authorization"][0]
                .as_str()
                .unwrap()
                .contains("/eu-west-1/sts/aws4_request")
        );
    }

    #[test]
    fn login_bodies_are_json_objects_of_the_members_given() {
        let b = json_body(&[("role_id", "r\"1"), ("secret_id", "s\u{1}")]).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&b).unwrap(),
            serde_json::json!({"role_id": "r\"1", "secret_id": "s\u{1}"})
        );
        assert_eq!(&*json_body(&[]).unwrap(), b"{}");
    }

    #[test]
    fn azure_login_body_names_the_vm_or_its_scale_set() {
        let jwt = SecretString::new("eyJ.jwt.sig".into());
        let mut vm = azure_imds::ComputeMetadata {
            subscription_id: "sub-1".into(),
            resource_group_name: "rg-1".into(),
            name: "node-0".into(),
            vm_scale_set_name: None,
        };
        let body: serde_json::Value =
            serde_json::from_slice(&azure_login_body("worker", &jwt, &vm).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"role": "worker", "jwt": "eyJ.jwt.sig", "subscription_id": "sub-1",
                               "resource_group_name": "rg-1", "vm_name": "node-0"})
        );
        vm.vm_scale_set_name = Some("pool-a".into());
        let body: serde_json::Value =
            serde_json::from_slice(&azure_login_body("worker", &jwt, &vm).unwrap()).unwrap();
        assert_eq!(body["vmss_name"], "pool-a");
        assert!(body.get("vm_name").is_none());
    }

    /// Dropping the login body (as the HTTP client does once it is sent, or a cancelled login)
    /// frees no block that still holds its signed headers unzeroed; nor does building it (every
    /// buffer is sized up front). Token lengths are swept so that a growing buffer would be
    /// caught reallocating after the session token entry is written.
    #[test]
    fn the_aws_login_request_leaves_no_copy_of_the_signed_headers() {
        use super::super::http::freed;
        let (mut built, mut dropped) = (0, 0);
        for n in (200..1200).step_by(5) {
            let token: String = (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            let json: &'static [u8] = Box::leak(
                format!("\"X-Amz-Security-Token\":[\"{token}\"]")
                    .into_bytes()
                    .into(),
            );
            let creds = aws_imds::AwsCredentials {
                session_token: SecretString::new(token),
                ..creds()
            };
            let (req, hits) = freed::holding(json, || {
                aws_login_body(
                    Some("node"),
                    Some("vault.example.com"),
                    STS_ENDPOINT,
                    STS_REGION,
                    &creds,
                    SystemTime::now(),
                )
                .unwrap()
            });
            built += hits;
            let v: serde_json::Value = serde_json::from_slice(&req).unwrap();
            let encoded: &'static [u8] = Box::leak(
                v["iam_request_headers"]
                    .as_str()
                    .unwrap()
                    .as_bytes()
                    .to_vec()
                    .into(),
            );
            let ((), hits) = freed::holding(encoded, || drop(req));
            dropped += hits;
        }
        assert_eq!(built, 0, "a freed block held the signed headers' JSON");
        assert_eq!(
            dropped, 0,
            "a freed block held the login request's signed headers"
        );
    }

    #[test]
    fn header_names_are_canonical() {
        assert_eq!(
            canonical_header("x-amz-security-token"),
            "X-Amz-Security-Token"
        );
        assert_eq!(canonical_header("host"), "Host");
    }
}
