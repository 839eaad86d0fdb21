//! AWS instance identity through IMDSv2 only: `PUT /latest/api/token`, then every `GET` with the
//! session token. IMDSv1 is never used, not even as a fallback.
//!
//! Built on `aws_config::imds::Client`. Its own retries are kept short (they only smooth over a
//! single blip); waiting for a metadata service that is not up yet is the caller's deadline-bound
//! retry loop. Its error `Display` impls print raw responses, so errors are classified from their
//! structure here and described in bootsecrets' own words.

use crate::error::{FetchError, describe_io, find_io_error};
use crate::identity::imdsd;
use crate::secret::SecretString;
use aws_config::imds::client::Client;
use aws_config::imds::client::error::{ImdsError, TokenError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use serde::Deserialize;
use std::fmt;
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
pub const DEFAULT_ENDPOINT_IPV6: &str = "http://[fd00:ec2::254]";
const CREDENTIALS_PATH: &str = "/latest/meta-data/iam/security-credentials/";
const IDENTITY_DOCUMENT_PATH: &str = "/latest/dynamic/instance-identity/document";

/// Where and how to reach IMDS.
#[derive(Debug, Clone)]
pub struct ImdsSettings {
    /// Full endpoint URL, e.g. `http://169.254.169.254` or `http://[fd00:ec2::254]`.
    pub endpoint: String,
    /// Per-request timeout (connect and read).
    pub timeout: Duration,
}

/// Temporary role credentials from IMDS. Secret parts are zeroed on drop.
pub struct AwsCredentials {
    /// The instance role's name, as IMDS lists it (checked to be an IAM role name).
    pub role: String,
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    pub session_token: SecretString,
    pub expiration: Option<SystemTime>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialsDocument {
    code: String,
    access_key_id: String,
    secret_access_key: SecretString,
    token: SecretString,
    expiration: Option<String>,
}

pub struct InstanceIdentity {
    settings: ImdsSettings,
    /// The route to the metadata service was found locked (systemd-imdsd): ask the daemon.
    locked: std::sync::atomic::AtomicBool,
}

impl InstanceIdentity {
    pub fn new(settings: &ImdsSettings) -> Result<Self, FetchError> {
        let me = InstanceIdentity {
            settings: settings.clone(),
            locked: std::sync::atomic::AtomicBool::new(false),
        };
        me.client()?; // validate the endpoint now
        Ok(me)
    }

    /// A fresh client per attempt: it fetches a new session token, so a token the service has
    /// rejected (401) is never reused by the next attempt. Building one makes no request.
    fn client(&self) -> Result<Client, FetchError> {
        let s = &self.settings;
        Ok(Client::builder()
            .endpoint(&s.endpoint)
            .map_err(|_| FetchError::permanent(format!("invalid IMDS endpoint `{}`", s.endpoint)))?
            .max_attempts(2)
            .connect_timeout(s.timeout.min(Duration::from_secs(2)))
            .read_timeout(s.timeout)
            .operation_attempt_timeout(s.timeout)
            .operation_timeout(s.timeout * 3)
            .token_ttl(Duration::from_secs(300))
            .build())
    }

    async fn get(
        &self,
        client: &Client,
        path: &str,
        what: &str,
    ) -> Result<Zeroizing<String>, FetchError> {
        use std::sync::atomic::Ordering::Relaxed;
        let endpoint = &self.settings.endpoint;
        if !self.locked.load(Relaxed) {
            match client.get(path).await {
                Ok(s) => return Ok(Zeroizing::new(String::from(s))),
                Err(e) if imdsd::prohibited(&e) && imdsd::serves(endpoint) => {
                    log::info!(
                        "IMDS at {endpoint}: the route is locked (systemd-imdsd); asking systemd-imdsd at {}",
                        imdsd::SOCKET
                    );
                    self.locked.store(true, Relaxed);
                }
                Err(e) if imdsd::prohibited(&e) => {
                    return Err(imdsd::locked_elsewhere(endpoint, what));
                }
                Err(e) => return Err(classify(&e, endpoint, what)),
            }
        }
        // systemd-imdsd's data URL for AWS is `http://169.254.169.254/latest`.
        let key = path.strip_prefix("/latest").unwrap_or(path);
        imdsd::get(&imdsd::socket(), key, self.settings.timeout, endpoint, what)
            .await?
            .into_text()
            .ok_or_else(|| FetchError::permanent(format!("IMDS at {endpoint}: {what} is not text")))
    }

    /// The instance role's current credentials (one attempt; the caller retries).
    pub async fn credentials(&self) -> Result<AwsCredentials, FetchError> {
        let client = self.client()?;
        let endpoint = &self.settings.endpoint;
        let roles = self
            .get(&client, CREDENTIALS_PATH, "the IAM role name")
            .await?;
        let role = roles.lines().next().unwrap_or("").trim();
        if role.is_empty() || role.contains('/') {
            return Err(FetchError::permanent(format!(
                "IMDS at {}: no IAM role (instance profile) is attached to this instance",
                endpoint
            )));
        }
        if role.len() > 64
            || !role
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
        {
            return Err(FetchError::permanent(format!(
                "IMDS at {}: the instance's role is listed under a name IAM does not allow",
                endpoint
            )));
        }
        let doc = self
            .get(
                &client,
                &format!("{CREDENTIALS_PATH}{role}"),
                "the role's credentials",
            )
            .await?;
        let doc: CredentialsDocument = serde_json::from_str(&doc).map_err(|_| {
            FetchError::permanent(format!(
                "IMDS at {}: the credentials document for role `{role}` is not the expected JSON",
                endpoint
            ))
        })?;
        if doc.code != "Success" {
            let code: String = doc
                .code
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(40)
                .collect();
            return Err(FetchError::transient(format!(
                "IMDS at {}: credentials for role `{role}` are not ready (Code {code})",
                endpoint
            )));
        }
        let expiration = doc.expiration.as_deref().and_then(|e| {
            aws_smithy_types::DateTime::from_str(e, aws_smithy_types::date_time::Format::DateTime)
                .ok()
                .and_then(|d| SystemTime::try_from(d).ok())
        });
        log::debug!(
            "IMDS at {}: credentials for role `{role}` obtained",
            endpoint
        );
        Ok(AwsCredentials {
            role: role.to_string(),
            access_key_id: doc.access_key_id,
            secret_access_key: doc.secret_access_key,
            session_token: doc.token,
            expiration,
        })
    }

    /// The region from the instance identity document (one attempt; the caller retries).
    pub async fn region(&self) -> Result<String, FetchError> {
        self.document().await.map(|d| d.region)
    }

    /// The instance identity document's region and account (one attempt; the caller retries).
    pub async fn document(&self) -> Result<IdentityDocument, FetchError> {
        #[derive(Deserialize)]
        struct Doc {
            region: String,
            #[serde(rename = "accountId", default)]
            account_id: String,
        }
        let client = self.client()?;
        let endpoint = &self.settings.endpoint;
        let text = self
            .get(
                &client,
                IDENTITY_DOCUMENT_PATH,
                "the instance identity document",
            )
            .await?;
        let doc: Doc = serde_json::from_str(&text).map_err(|_| {
            FetchError::permanent(format!(
                "IMDS at {}: the instance identity document has no `region`",
                endpoint
            ))
        })?;
        if doc.region.is_empty()
            || !doc
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(FetchError::permanent(format!(
                "IMDS at {}: the instance identity document's region is not a region name",
                endpoint
            )));
        }
        // Shown in messages: only if it is an account id.
        let account_id = (doc.account_id.len() == 12
            && doc.account_id.bytes().all(|b| b.is_ascii_digit()))
        .then_some(doc.account_id);
        Ok(IdentityDocument {
            region: doc.region,
            account_id,
        })
    }
}

/// What the instance identity document says that bootsecrets uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityDocument {
    pub region: String,
    pub account_id: Option<String>,
}

fn status_of(resp: &HttpResponse) -> u16 {
    resp.status().as_u16()
}

/// Classifies an IMDS client error without ever printing it (its Display includes the response).
fn classify(err: &ImdsError, endpoint: &str, what: &str) -> FetchError {
    let unreachable = |detail: &str| {
        FetchError::transient(format!(
            "IMDS at {endpoint} not reachable yet while fetching {what}: {detail} (if it stays \
             so: the instance's metadata service must be enabled (HttpEndpoint=enabled, \
             IMDSv2), and from a container the session token's hop limit \
             (HttpPutResponseHopLimit) must be 2 or more)"
        ))
    };
    match err {
        ImdsError::FailedToLoadToken(_) => {
            let sdk = std::error::Error::source(err)
                .and_then(|s| s.downcast_ref::<SdkError<TokenError, HttpResponse>>());
            match sdk {
                Some(SdkError::ServiceError(ctx)) => {
                    let s = status_of(ctx.raw());
                    match s {
                        403 => FetchError::permanent(format!(
                            "IMDS at {endpoint} refused the IMDSv2 session token request (HTTP 403): \
                             the metadata service is disabled for this instance, or the request was \
                             forwarded (X-Forwarded-For)"
                        )),
                        429 | 500..=599 => FetchError::transient(format!(
                            "IMDS at {endpoint} answered the IMDSv2 token request with HTTP {s}"
                        )),
                        200 => FetchError::permanent(format!(
                            "IMDS at {endpoint} answered the IMDSv2 token request without a valid token \
                             and TTL: it does not implement IMDSv2, and bootsecrets never uses IMDSv1"
                        )),
                        _ => FetchError::permanent(format!(
                            "IMDS at {endpoint} does not support IMDSv2 (the session token request was \
                             answered with HTTP {s}); bootsecrets never falls back to IMDSv1"
                        )),
                    }
                }
                Some(SdkError::ConstructionFailure(_)) => FetchError::permanent(format!(
                    "cannot build an IMDSv2 token request for {endpoint}"
                )),
                Some(other) => {
                    let detail = find_io_error(other)
                        .map(describe_io)
                        .unwrap_or(match other {
                            SdkError::TimeoutError(_) => "timed out",
                            _ => "no answer to the token request",
                        });
                    unreachable(detail)
                }
                None => unreachable("no answer to the token request"),
            }
        }
        ImdsError::ErrorResponse(r) => {
            let s = status_of(r.response());
            match s {
                401 => FetchError::transient(format!(
                    "IMDS at {endpoint} rejected the session token (HTTP 401) while fetching {what}"
                )),
                404 => FetchError::permanent(format!(
                    "IMDS at {endpoint} found nothing while fetching {what} (HTTP 404){}",
                    if what.contains("role") {
                        ": is an IAM role (instance profile) attached to this instance?"
                    } else {
                        ""
                    }
                )),
                429 | 500..=599 => FetchError::transient(format!(
                    "IMDS at {endpoint} answered HTTP {s} while fetching {what}"
                )),
                _ => FetchError::permanent(format!(
                    "IMDS at {endpoint} answered HTTP {s} while fetching {what}"
                )),
            }
        }
        ImdsError::IoError(_) => unreachable(
            find_io_error(err)
                .map(describe_io)
                .unwrap_or("timed out or connection lost"),
        ),
        _ => unreachable(
            find_io_error(err)
                .map(describe_io)
                .unwrap_or("connection failed"),
        ),
    }
}
