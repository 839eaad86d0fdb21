//! AWS Secrets Manager, authenticated with the instance role's credentials from IMDSv2.

use super::is_loopback_url;
use crate::error::{
    FetchError, TooLarge, describe_io, find_io_error, find_too_large, is_tls_error,
};
use crate::identity::aws_imds::{self, ImdsSettings, InstanceIdentity};
use crate::manifest::{AwsEntry, SecretEntry};
use crate::retry::{Deadline, RetryError, retry};
use crate::secret::Secret;
use crate::settings::{EnvLookup, Limits};
use aws_sdk_secretsmanager::config::{
    BehaviorVersion, Credentials, Region, retry::RetryConfig, timeout::TimeoutConfig,
};
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use std::time::Duration;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Validated settings of one `type = "aws"` backend.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    /// None: read from the instance identity document at run time.
    pub region: Option<(String, &'static str)>,
    pub endpoint: Option<(String, &'static str)>,
    pub imds: ImdsSettings,
    pub imds_source: &'static str,
    pub use_fips: bool,
    pub timeout: Duration,
}

/// What to fetch for one secret.
#[derive(Debug, Clone)]
pub struct AwsSecretRef {
    pub secret_id: String,
    pub version_id: Option<String>,
    pub version_stage: Option<String>,
}

fn valid_url(u: &str) -> bool {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/') && !u.chars().any(char::is_whitespace))
}

/// A well-formed AWS region name: `us-east-1`, `us-gov-west-1`, `cn-north-1`, `eusc-de-east-1`
/// (a partition prefix, words, a number). An availability zone (`eu-west-1a`) is named as one.
pub fn region_name(r: &str) -> Result<(), String> {
    let parts: Vec<&str> = r.split('-').collect();
    let word = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase());
    let number = |p: &str| (1..=2).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    let ok = parts.len() >= 3
        && (2..=4).contains(&parts[0].len())
        && parts[..parts.len() - 1].iter().all(|p| word(p))
        && number(parts[parts.len() - 1]);
    if ok {
        // Every region's last word is a direction (`eu-wset-1` is a typo, not a new region).
        let dir = parts[parts.len() - 2];
        if DIRECTIONS.contains(&dir) {
            return Ok(());
        }
        let near = DIRECTIONS
            .iter()
            .min_by_key(|d| distance(d, dir))
            .expect("nine directions");
        let fixed = r.replacen(&format!("-{dir}-"), &format!("-{near}-"), 1);
        return Err(format!(
            "is not an AWS region name: `{dir}` is not one of north, south, east, west, \
             central and their combinations (did you mean `{fixed}`?)"
        ));
    }
    if let Some(stripped) = r.strip_suffix(|c: char| c.is_ascii_lowercase())
        && region_name(stripped).is_ok()
    {
        return Err(format!(
            "is an availability zone, not a region: the region is `{stripped}`"
        ));
    }
    Err("is not an AWS region name (such as `us-east-1` or `eu-west-3`)".into())
}

/// The last word of every AWS region name.
const DIRECTIONS: [&str; 9] = [
    "north",
    "south",
    "east",
    "west",
    "central",
    "northeast",
    "northwest",
    "southeast",
    "southwest",
];

/// Levenshtein distance, for suggesting the direction meant.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// First of: the manifest key, then each environment variable in order.
fn setting(
    key: Option<&String>,
    key_name: &'static str,
    env: EnvLookup<'_>,
    vars: &[&'static str],
) -> Option<(String, &'static str)> {
    if let Some(v) = key {
        return Some((v.clone(), key_name));
    }
    vars.iter().find_map(|v| env(v).map(|x| (x, *v)))
}

pub fn plan(e: &AwsEntry, env: EnvLookup<'_>) -> Result<AwsConfig, Vec<String>> {
    let mut errors = Vec::new();
    let region = setting(
        e.region.as_ref(),
        "region",
        env,
        &["AWS_REGION", "AWS_DEFAULT_REGION"],
    );
    if let Some((r, src)) = &region
        && let Err(e) = region_name(r)
    {
        errors.push(format!("{src} `{r}` {e}"));
    }
    let endpoint = setting(
        e.endpoint.as_ref(),
        "endpoint",
        env,
        &["AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL"],
    );
    if let Some((u, src)) = &endpoint {
        if !valid_url(u) {
            errors.push(format!("{src} `{u}` is not an http:// or https:// URL"));
        } else if u.starts_with("http://") && !is_loopback_url(u) && e.allow_http != Some(true) {
            errors.push(format!(
                "{src} `{u}` is plain http: the session token and the secret values would cross \
                 the network unencrypted; use https (plain http is accepted for loopback \
                 addresses, or with allow_http = true)"
            ));
        }
    }
    let mode = setting(
        e.imds_endpoint_mode.as_ref(),
        "imds_endpoint_mode",
        env,
        &["AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE"],
    );
    let default_imds = match mode.as_ref().map(|(m, s)| (m.to_ascii_lowercase(), *s)) {
        None => aws_imds::DEFAULT_ENDPOINT,
        Some((m, _)) if m == "ipv4" => aws_imds::DEFAULT_ENDPOINT,
        Some((m, _)) if m == "ipv6" => aws_imds::DEFAULT_ENDPOINT_IPV6,
        Some((m, src)) => {
            errors.push(format!("{src} `{m}` is not \"ipv4\" or \"ipv6\""));
            aws_imds::DEFAULT_ENDPOINT
        }
    };
    let (imds_endpoint, imds_source) = setting(
        e.imds_endpoint.as_ref(),
        "imds_endpoint",
        env,
        &["AWS_EC2_METADATA_SERVICE_ENDPOINT"],
    )
    .unwrap_or((default_imds.to_string(), "default"));
    if !valid_url(&imds_endpoint) {
        errors.push(format!(
            "IMDS endpoint `{imds_endpoint}` is not an http:// or https:// URL"
        ));
    }
    let use_fips = match e.use_fips {
        Some(b) => b,
        None => match env("AWS_USE_FIPS_ENDPOINT").as_deref() {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => {
                errors.push(format!("AWS_USE_FIPS_ENDPOINT `{v}` is not true or false"));
                false
            }
        },
    };
    let timeout = super::timeout_setting(e.timeout_seconds, DEFAULT_TIMEOUT, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(AwsConfig {
        region,
        endpoint,
        imds: ImdsSettings {
            endpoint: imds_endpoint.trim_end_matches('/').to_string(),
            timeout: timeout.min(Duration::from_secs(5)),
        },
        imds_source,
        use_fips,
        timeout,
    })
}

pub fn plan_secret(cfg: &AwsConfig, e: &SecretEntry) -> Result<AwsSecretRef, Vec<String>> {
    let mut errors = super::foreign_keys(e, "aws", &["version_id", "version_stage"]);
    if e.reference.trim().is_empty() {
        errors.push("`ref` must name a secret (its name or ARN)".to_string());
    }
    // `arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME`: a backend reads one region.
    let arn: Vec<&str> = e.reference.splitn(7, ':').collect();
    if let ([_, _, "secretsmanager", arn_region, ..], Some((region, src))) = (&arn[..], &cfg.region)
        && arn.len() == 7
        && arn[0] == "arn"
        && arn_region != region
    {
        errors.push(format!(
            "`ref` is the ARN of a secret in region {arn_region}, but this backend reads region \
             {region} (from {src}): a backend reads one region; add a backend with region = \
             \"{arn_region}\" for it"
        ));
    }
    for (k, v) in [
        ("version_id", &e.version_id),
        ("version_stage", &e.version_stage),
    ] {
        if v.as_deref() == Some("") {
            errors.push(format!("{k} must not be empty"));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(AwsSecretRef {
        secret_id: e.reference.clone(),
        version_id: e.version_id.clone(),
        version_stage: e.version_stage.clone(),
    })
}

impl AwsConfig {
    pub fn describe(&self) -> String {
        let region = match &self.region {
            Some((r, src)) => format!("region {r} (from {src})"),
            None => "region from the instance identity document".to_string(),
        };
        let endpoint = match &self.endpoint {
            Some((u, src)) => format!("endpoint {u} (from {src})"),
            None => "default endpoint".to_string(),
        };
        format!(
            "aws Secrets Manager, {region}, {endpoint}{}, credentials from IMDSv2 at {} ({}), request timeout {} s",
            if self.use_fips { ", FIPS" } else { "" },
            self.imds.endpoint,
            self.imds_source,
            self.timeout.as_secs()
        )
    }
}

impl AwsSecretRef {
    pub fn describe(&self) -> String {
        let mut s = self.secret_id.clone();
        if let Some(v) = &self.version_id {
            s += &format!(" [version_id {v}]");
        }
        if let Some(v) = &self.version_stage {
            s += &format!(" [version_stage {v}]");
        }
        s
    }
}

/// A connected Secrets Manager client, holding the instance role's credentials, and what its
/// error messages name: the region, the endpoint and the role.
pub struct AwsBackend {
    client: aws_sdk_secretsmanager::Client,
    region: String,
    /// The endpoint requests go to: configured, or the one the SDK derives from the region.
    endpoint: String,
    /// The endpoint was derived from the region (a DNS failure then points at the region).
    derived: bool,
    role: String,
    /// The instance's account, from its identity document, when it said.
    account: Option<String>,
}

/// The endpoint the SDK derives from a region when none is configured (for messages).
fn regional_endpoint(region: &str, fips: bool) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    let service = if fips {
        "secretsmanager-fips"
    } else {
        "secretsmanager"
    };
    format!("https://{service}.{region}.{suffix}")
}

/// What a failure was, for the context [`AwsBackend::explain`] adds to its message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reason {
    NotFound,
    /// Access denied; the principal and the action AWS named, when it named them in a form
    /// checked here (an ARN, a `service:Action`), never AWS's text as such.
    Denied {
        principal: Option<String>,
        action: Option<String>,
    },
    Kms,
    Unreachable {
        dns: bool,
    },
    Other,
}

/// The first well-formed principal ARN in `text` (`arn:PARTITION:sts::ACCOUNT:assumed-role/...`
/// or `arn:PARTITION:iam::ACCOUNT:role/...` / `user/...`), at most 256 characters.
fn principal_arn(text: &str) -> Option<String> {
    text.match_indices("arn:").find_map(|(i, _)| {
        let token: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || ":/+=,.@_-".contains(*c))
            .take(257)
            .collect();
        let f: Vec<&str> = token.splitn(6, ':').collect();
        let ok = token.len() <= 256
            && f.len() == 6
            && f[1].starts_with("aws")
            && (f[2] == "sts" || f[2] == "iam")
            && f[3].is_empty()
            && f[4].len() == 12
            && f[4].bytes().all(|b| b.is_ascii_digit())
            && ["assumed-role/", "role/", "user/"]
                .iter()
                .any(|p| f[5].starts_with(p) && f[5].len() > p.len());
        ok.then_some(token)
    })
}

/// The first `secretsmanager:Action` or `kms:Action` in `text`.
fn denied_action(text: &str) -> Option<String> {
    ["secretsmanager:", "kms:"].iter().find_map(|svc| {
        text.match_indices(svc).find_map(|(i, _)| {
            let rest = &text[i + svc.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .take(64)
                .collect();
            (name.len() > 1 && name.starts_with(|c: char| c.is_ascii_uppercase()))
                .then(|| format!("{svc}{name}"))
        })
    })
}

/// AWS's error message, from the parsed error or the XML body (moto answers auth errors in XML),
/// only ever read by [`principal_arn`] and [`denied_action`].
fn error_message<E: ProvideErrorMetadata>(err: &E, raw: Option<&HttpResponse>) -> String {
    if let Some(m) = err.message() {
        return m.to_string();
    }
    let Some(text) = raw
        .and_then(|r| r.body().bytes())
        .and_then(|b| std::str::from_utf8(b).ok())
    else {
        return String::new();
    };
    match (text.find("<Message>"), text.find("</Message>")) {
        (Some(a), Some(b)) if a < b => text[a + "<Message>".len()..b].to_string(),
        _ => String::new(),
    }
}

impl AwsBackend {
    /// Obtains credentials (and the region if needed) from IMDSv2, retrying within `deadline`.
    pub async fn connect(
        name: &str,
        cfg: &AwsConfig,
        deadline: &Deadline,
        limits: &Limits,
    ) -> Result<Self, RetryError> {
        let identity = InstanceIdentity::new(&cfg.imds).map_err(RetryError::Permanent)?;
        let creds = retry(
            &format!("backend `{name}`: IMDSv2 credentials"),
            deadline,
            |_| identity.credentials(),
        )
        .await?;
        let (region, account) = match &cfg.region {
            // The account only names the role in messages: one attempt, no retry, no failure.
            Some((r, _)) => (
                r.clone(),
                identity.document().await.ok().and_then(|d| d.account_id),
            ),
            None => {
                let d = retry(
                    &format!("backend `{name}`: IMDSv2 region"),
                    deadline,
                    |_| identity.document(),
                )
                .await?;
                (d.region, d.account_id)
            }
        };
        let credentials = Credentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.expose(),
            Some(creds.session_token.expose().to_string()),
            creds.expiration,
            "bootsecrets-imdsv2",
        );
        let role = creds.role.clone();
        drop(creds);
        let (endpoint, derived) = match &cfg.endpoint {
            Some((u, _)) => (u.clone(), false),
            None => (regional_endpoint(&region, cfg.use_fips), true),
        };
        let region_used = region.clone();
        // Retries are ours (deadline-bound, transient-only); the SDK makes exactly one attempt.
        let mut b = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region))
            .credentials_provider(credentials)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(cfg.timeout.min(Duration::from_secs(3)))
                    .operation_attempt_timeout(cfg.timeout)
                    .build(),
            )
            .use_fips(cfg.use_fips)
            .interceptor(ResponseLimit(limits.max_response));
        if let Some((u, _)) = &cfg.endpoint {
            b = b.endpoint_url(u);
        }
        Ok(AwsBackend {
            client: aws_sdk_secretsmanager::Client::from_conf(b.build()),
            region: region_used,
            endpoint,
            derived,
            role,
            account,
        })
    }

    /// One GetSecretValue attempt. The value moves into a [`Secret`] without a copy.
    pub async fn fetch(&self, r: &AwsSecretRef) -> Result<(Secret, Option<String>), FetchError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(&r.secret_id)
            .set_version_id(r.version_id.clone())
            .set_version_stage(r.version_stage.clone())
            .send()
            .await
            .map_err(|e| {
                let (f, reason) = classify_with_reason(&e);
                self.explain(f, &reason)
            })?;
        // Shown in logs and the status file: only if it looks like a version id.
        let version = out.version_id.filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if let Some(s) = out.secret_string {
            Ok((Secret::from_string(s), version))
        } else if let Some(b) = out.secret_binary {
            Ok((Secret::new(b.into_inner()), version))
        } else {
            Err(FetchError::permanent(
                "the response has neither SecretString nor SecretBinary",
            ))
        }
    }
}

impl AwsBackend {
    pub fn identity(&self) -> String {
        format!(
            "instance role `{}`{}, region {}, endpoint {}",
            self.role,
            self.account
                .as_deref()
                .map(|a| format!(" in account {a}"))
                .unwrap_or_default(),
            self.region,
            self.endpoint
        )
    }

    /// DescribeSecret: the secret exists, is not scheduled for deletion, and carries the version
    /// id or stage asked for (AWSCURRENT by default).
    pub async fn probe(&self, r: &AwsSecretRef) -> Result<super::Probe, FetchError> {
        let out = match self
            .client
            .describe_secret()
            .secret_id(&r.secret_id)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => {
                let (f, reason) = classify_with_reason(&e);
                if let Reason::Denied { .. } = reason {
                    return Ok(super::Probe::NotAllowed(format!(
                        "the instance role `{}` may not call secretsmanager:DescribeSecret, which \
                         doctor uses to check a secret without reading it (a run needs only \
                         secretsmanager:GetSecretValue)",
                        self.role
                    )));
                }
                return Err(self.explain(f, &reason));
            }
        };
        if out.deleted_date().is_some() {
            return Err(FetchError::permanent(format!(
                "the secret is scheduled for deletion; cancel that with `aws secretsmanager \
                 restore-secret --secret-id {}`",
                r.secret_id
            )));
        }
        let stages = out.version_ids_to_stages().cloned().unwrap_or_default();
        let stage = r.version_stage.as_deref().unwrap_or("AWSCURRENT");
        let found = match &r.version_id {
            Some(id) => stages
                .get(id)
                .is_some_and(|s| r.version_stage.is_none() || s.iter().any(|x| x == stage)),
            None => stages.values().any(|s| s.iter().any(|x| x == stage)),
        };
        if !found {
            return Err(FetchError::permanent(match &r.version_id {
                Some(id) if r.version_stage.is_some() => {
                    format!("version `{id}` does not carry the stage `{stage}`")
                }
                Some(id) => format!("the secret has no version `{id}`"),
                None => format!("no version of the secret carries the stage `{stage}`"),
            }));
        }
        Ok(super::Probe::Found(format!(
            "exists in region {} with {} version(s){}",
            self.region,
            stages.len(),
            if out.kms_key_id().is_some() {
                ", encrypted with a customer managed KMS key (the role needs kms:Decrypt on it)"
            } else {
                ""
            }
        )))
    }

    /// Adds to a failure what it takes to fix it: the region and endpoint a secret was looked
    /// for in, the role and the action that were denied, the endpoint that did not answer.
    fn explain(&self, mut f: FetchError, reason: &Reason) -> FetchError {
        let (region, endpoint, role) = (&self.region, &self.endpoint, &self.role);
        let context = match reason {
            Reason::NotFound => format!(
                " in region {region} at {endpoint}: check `ref` and the region (a secret lives \
                 in one region of one account)"
            ),
            Reason::Denied { principal, action } => {
                let action = action.as_deref().unwrap_or("secretsmanager:GetSecretValue");
                let account = self
                    .account
                    .as_deref()
                    .map(|a| format!(" in account {a}"))
                    .unwrap_or_default();
                let who = match principal {
                    Some(arn) => format!("the instance role `{role}` ({arn})"),
                    None => format!("the instance role `{role}`{account}"),
                };
                if action.starts_with("kms:") {
                    format!(
                        ": {who} may not call {action} on the secret's KMS key (region \
                         {region}); allow it in the key policy or the role's policy"
                    )
                } else {
                    format!(
                        ": {who} may not call {action} on this secret (region {region}); allow \
                         it in the role's policy or the secret's resource policy, and \
                         kms:Decrypt on its key if it uses a customer managed KMS key"
                    )
                }
            }
            Reason::Kms => format!(" for the instance role `{role}` (region {region})"),
            Reason::Unreachable { dns: true } if self.derived => format!(
                ": {endpoint}, built from region `{region}`, did not resolve: check the region; \
                 a VPC without public DNS needs `endpoint` (its Secrets Manager interface \
                 endpoint)"
            ),
            Reason::Unreachable { .. } => format!(" ({endpoint}, region {region})"),
            Reason::Other => String::new(),
        };
        f.message.push_str(&context);
        f
    }
}

/// An AWS error code, from the parsed error, the `X-Amzn-ErrorType` header, or an XML `<Code>`
/// element (moto answers auth errors in XML). Only the code token is read, never the message.
fn error_code<E: ProvideErrorMetadata>(err: &E, raw: Option<&HttpResponse>) -> Option<String> {
    let sanitize = |s: &str| -> Option<String> {
        let c: String = s
            .split(':')
            .next()
            .unwrap_or("")
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
            .take(64)
            .collect();
        (!c.is_empty()).then_some(c)
    };
    if let Some(c) = err.code().and_then(sanitize) {
        return Some(c);
    }
    let raw = raw?;
    if let Some(c) = raw.headers().get("x-amzn-errortype").and_then(sanitize) {
        return Some(c);
    }
    let body = raw.body().bytes()?;
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let end = text[start..].find("</Code>")? + start;
    sanitize(&text[start..end])
}

/// What an `InvalidRequestException` stands for. Secrets Manager uses the one code for several
/// reasons (a secret scheduled for deletion, a `VersionId` that does not carry the `VersionStage`
/// asked for, ...); its message is matched against known phrases, AWS's and moto's, to pick one of
/// our messages, and never quoted.
fn invalid_request_reason<E: ProvideErrorMetadata>(err: &E) -> &'static str {
    let m = err
        .message()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase();
    let has = |p: &str| m.contains(p);
    if (has("deletion") || has("deleted")) && (has("marked") || has("scheduled")) {
        "the secret is scheduled for deletion; cancel that with `aws secretsmanager \
         restore-secret --secret-id <ref>`, or point `ref` at another secret"
    } else if has("versionstage") && has("versionid") && has("not associated") {
        "`version_id` and `version_stage` do not match: the version does not carry that stage; \
         set only one, or a pair that matches"
    } else {
        "AWS refused the request as invalid"
    }
}

/// Refuses a response larger than the limit: at once when its `Content-Length` says so, and
/// otherwise as soon as more than the limit has been read, so an oversize body is never buffered.
#[derive(Debug)]
struct ResponseLimit(u64);

impl aws_smithy_runtime_api::client::interceptors::Intercept for ResponseLimit {
    fn name(&self) -> &'static str {
        "bootsecrets::ResponseLimit"
    }

    fn modify_before_deserialization(
        &self,
        ctx: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut<'_>,
        _: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let limit = self.0;
        let resp = ctx.response_mut();
        let declared = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(Box::new(TooLarge(limit)));
        }
        let body = std::mem::replace(resp.body_mut(), aws_smithy_types::body::SdkBody::taken());
        *resp.body_mut() = aws_smithy_types::body::SdkBody::from_body_1_x(LimitedBody {
            inner: body,
            left: limit,
            limit,
        });
        Ok(())
    }
}

/// A body that fails with [`TooLarge`] once more than `limit` bytes have come through.
struct LimitedBody {
    inner: aws_smithy_types::body::SdkBody,
    left: u64,
    limit: u64,
}

impl http_body::Body for LimitedBody {
    type Data = bytes::Bytes;
    type Error = aws_smithy_runtime_api::box_error::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.left {
                        return Poll::Ready(Some(Err(Box::new(TooLarge(self.limit)))));
                    }
                    self.left -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// [`classify`], and what the failure was for [`AwsBackend::explain`].
fn classify_with_reason<E: ProvideErrorMetadata + std::error::Error + 'static>(
    err: &SdkError<E, HttpResponse>,
) -> (FetchError, Reason) {
    let f = classify(err);
    let reason = match err {
        SdkError::ServiceError(ctx) => {
            let code = error_code(ctx.err(), Some(ctx.raw())).unwrap_or_default();
            let status = ctx.raw().status().as_u16();
            match code.as_str() {
                "ResourceNotFoundException" => Reason::NotFound,
                "DecryptionFailure" => Reason::Kms,
                "AccessDeniedException" | "AccessDenied" => {
                    let text = error_message(ctx.err(), Some(ctx.raw()));
                    Reason::Denied {
                        principal: principal_arn(&text),
                        action: denied_action(&text),
                    }
                }
                _ if status == 403 => Reason::Denied {
                    principal: None,
                    action: None,
                },
                _ if status == 404 && code.is_empty() => Reason::NotFound,
                _ => Reason::Other,
            }
        }
        SdkError::DispatchFailure(d) if !d.is_user() => Reason::Unreachable {
            dns: find_io_error(err).is_some_and(|io| {
                crate::error::describe_io(io) == "the host name did not resolve (DNS)"
            }),
        },
        SdkError::TimeoutError(_) => Reason::Unreachable { dns: false },
        _ => Reason::Other,
    };
    (f, reason)
}

fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    err: &SdkError<E, HttpResponse>,
) -> FetchError {
    if let Some(limit) = find_too_large(err) {
        return FetchError::permanent(TooLarge(limit).to_string());
    }
    match err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code =
                error_code(ctx.err(), Some(ctx.raw())).unwrap_or_else(|| "no error code".into());
            let retry_after = ctx
                .raw()
                .headers()
                .get("retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let (transient, what) = match code.as_str() {
                "ThrottlingException"
                | "Throttling"
                | "TooManyRequestsException"
                | "RequestLimitExceeded"
                | "SlowDown" => (true, "throttled"),
                "InternalServiceError"
                | "InternalFailure"
                | "ServiceUnavailable"
                | "RequestTimeout"
                | "RequestTimeoutException" => (true, "service error"),
                "ResourceNotFoundException" => (false, "not found"),
                "AccessDeniedException" | "AccessDenied" => (false, "access denied"),
                "UnrecognizedClientException" | "InvalidClientTokenId" => {
                    (false, "the instance credentials were not recognised")
                }
                "SignatureDoesNotMatch" | "IncompleteSignature" => {
                    (false, "the request signature was rejected")
                }
                // The SDK learns the clock offset from the failed response and corrects the next
                // request: at boot, before NTP has synced, this clears on retry.
                "RequestTimeTooSkewed" | "RequestExpired" | "InvalidSignatureException" => (
                    true,
                    "the request signature was rejected as expired or skewed (is the clock set?)",
                ),
                "ExpiredTokenException" | "ExpiredToken" => {
                    (false, "the instance credentials have expired")
                }
                "DecryptionFailure" => (
                    false,
                    "KMS cannot decrypt the secret (check kms:Decrypt on its key)",
                ),
                "InvalidRequestException" => (false, invalid_request_reason(ctx.err())),
                "InvalidParameterException" => (
                    false,
                    "invalid parameter (check ref, version_id and version_stage)",
                ),
                _ if status == 429 || status >= 500 => (true, "service error"),
                _ if status == 403 => (false, "access denied"),
                _ if status == 404 => (false, "not found"),
                _ => (false, "request rejected"),
            };
            let message = format!("{what} ({code}, HTTP {status})");
            FetchError {
                class: if transient {
                    crate::error::Class::Transient
                } else {
                    crate::error::Class::Permanent
                },
                message,
                retry_after,
                throttled: what == "throttled",
            }
        }
        SdkError::TimeoutError(_) => FetchError::transient("request timed out"),
        SdkError::DispatchFailure(d) => {
            if d.is_user() {
                FetchError::permanent(
                    "the request could not be sent (invalid endpoint or settings)",
                )
            } else if d.is_timeout() {
                FetchError::transient("connection timed out")
            } else {
                match find_io_error(err) {
                    _ if is_tls_error(err) => {
                        crate::error::classify_tls(err, Some("Secrets Manager"), "")
                            .expect("a TLS error")
                    }
                    Some(io) => FetchError::transient(format!(
                        "cannot reach Secrets Manager: {}",
                        describe_io(io)
                    )),
                    None => {
                        FetchError::transient("cannot reach Secrets Manager: connection failed")
                    }
                }
            }
        }
        SdkError::ResponseError(_) => {
            FetchError::transient("the response could not be read (connection lost or malformed)")
        }
        SdkError::ConstructionFailure(_) => FetchError::permanent("the request could not be built"),
        _ => FetchError::transient("unexpected error talking to Secrets Manager"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn service_error(
        status: u16,
        code: Option<&str>,
        body: &str,
        headers: &[(&str, &str)],
    ) -> FetchError {
        service_error_with_message(status, code, None, body, headers)
    }

    fn service_error_with_message(
        status: u16,
        code: Option<&str>,
        message: Option<&str>,
        body: &str,
        headers: &[(&str, &str)],
    ) -> FetchError {
        let mut meta = ErrorMetadata::builder();
        if let Some(c) = code {
            meta = meta.code(c);
        }
        if let Some(m) = message {
            meta = meta.message(m);
        }
        let err = GetSecretValueError::generic(meta.build());
        let mut raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::from(body));
        for (k, v) in headers {
            raw.headers_mut().insert(k.to_string(), v.to_string());
        }
        classify(&SdkError::service_error(err, raw))
    }

    #[test]
    fn service_errors_are_classified_by_code_then_status() {
        let e = service_error(
            400,
            Some("ThrottlingException"),
            "{}",
            &[("retry-after", "7")],
        );
        assert!(e.is_transient());
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(e.message, "throttled (ThrottlingException, HTTP 400)");
        assert!(e.throttled);
        assert!(!service_error(503, Some("ServiceUnavailable"), "{}", &[]).throttled);

        let e = service_error(400, Some("ResourceNotFoundException"), "{}", &[]);
        assert!(!e.is_transient());
        assert!(e.message.starts_with("not found"));

        let xml = "<ErrorResponse><Error><Code>AccessDenied</Code><Message>User: x</Message></Error></ErrorResponse>";
        let e = service_error(403, None, xml, &[]);
        assert!(!e.is_transient());
        assert_eq!(e.message, "access denied (AccessDenied, HTTP 403)");
        assert!(
            !e.message.contains("User"),
            "the body's message is never quoted"
        );

        let e = service_error(
            400,
            None,
            "",
            &[("x-amzn-errortype", "InternalServiceError:http://x")],
        );
        assert!(e.is_transient());
        assert!(e.message.contains("(InternalServiceError, HTTP 400)"));

        assert!(service_error(503, None, "<html>", &[]).is_transient());
        assert!(service_error(429, None, "", &[]).is_transient());
        assert!(service_error(400, Some("InvalidSignatureException"), "", &[]).is_transient());
        assert!(!service_error(403, Some("SignatureDoesNotMatch"), "", &[]).is_transient());
        assert!(!service_error(418, None, "", &[]).is_transient());
    }

    /// One code, several reasons: AWS's and moto's wordings pick the reason; nothing else does,
    /// and the message is never quoted.
    #[test]
    fn invalid_request_names_the_reason_from_known_phrases() {
        let invalid = |status, message: Option<&str>| {
            service_error_with_message(status, Some("InvalidRequestException"), message, "", &[])
        };
        for m in [
            "You can't perform this operation on the secret because it was marked for deletion.",
            "An error occurred (InvalidRequestException) when calling the GetSecretValue \
             operation: You tried to                 perform the operation on a secret that's \
             currently marked deleted.",
            "The secret is scheduled for deletion.",
        ] {
            let e = invalid(400, Some(m));
            assert!(!e.is_transient());
            assert!(
                e.message
                    .starts_with("the secret is scheduled for deletion; ")
                    && e.message.contains("aws secretsmanager restore-secret")
                    && e.message.ends_with("(InvalidRequestException, HTTP 400)"),
                "{m}: {}",
                e.message
            );
        }
        let e = invalid(
            404,
            Some("You provided a VersionStage that is not associated to the provided VersionId."),
        );
        assert!(!e.is_transient());
        assert!(
            e.message
                .starts_with("`version_id` and `version_stage` do not match")
                && e.message.ends_with("(InvalidRequestException, HTTP 404)"),
            "{}",
            e.message
        );
        for m in [
            None,
            Some(""),
            Some("You can't access a secret managed by another service: canary-3d7f"),
            Some("The secret was deleted"),
            Some("VersionStage canary-3d7f"),
        ] {
            let e = invalid(400, m);
            assert!(!e.is_transient());
            assert_eq!(
                e.message, "AWS refused the request as invalid (InvalidRequestException, HTTP 400)",
                "{m:?}"
            );
        }
    }

    #[test]
    fn loopback_urls() {
        for u in [
            "http://127.0.0.1:4566",
            "http://localhost",
            "http://[::1]:80/x",
            "http://127.9.9.9",
        ] {
            assert!(is_loopback_url(u), "{u}");
        }
        for u in [
            "http://10.0.2.2:4566",
            "http://example.com",
            "http://127.0.0.1.evil.com",
            "http://[fd00::1]",
        ] {
            assert!(!is_loopback_url(u), "{u}");
        }
    }

    #[test]
    fn region_names_are_well_formed() {
        for ok in [
            "us-east-1",
            "eu-west-3",
            "us-gov-west-1",
            "cn-north-1",
            "eusc-de-east-1",
            "ap-southeast-5",
            "il-central-1",
        ] {
            assert!(region_name(ok).is_ok(), "{ok}");
        }
        let e = region_name("eu-wset-1").unwrap_err();
        assert!(e.contains("did you mean `eu-west-1`?"), "{e}");
        let e = region_name("ap-southest-2").unwrap_err();
        assert!(e.contains("did you mean `ap-southeast-2`?"), "{e}");
        for bad in [
            "US-EAST-1",
            "useast1",
            "us-east",
            "us_east_1",
            "",
            "us-east-1-",
            "1-us-east",
            "us-east-100",
            "u-east-1",
        ] {
            assert!(region_name(bad).is_err(), "{bad}");
        }
        assert!(
            region_name("eu-west-1a")
                .unwrap_err()
                .contains("the region is `eu-west-1`")
        );
    }

    #[test]
    fn principals_and_actions_are_read_only_in_checked_forms() {
        let moto = "User: arn:aws:sts::123456789012:assumed-role/nobody/i-0123456789abcdef0 is \
                    not authorized to perform: secretsmanager:GetSecretValue";
        assert_eq!(
            principal_arn(moto).as_deref(),
            Some("arn:aws:sts::123456789012:assumed-role/nobody/i-0123456789abcdef0")
        );
        assert_eq!(
            denied_action(moto).as_deref(),
            Some("secretsmanager:GetSecretValue")
        );
        let kms = "Access to KMS is not allowed. arn:aws:iam::123456789012:role/node is not \
                   authorized to perform: kms:Decrypt on resource arn:aws:kms:...";
        assert_eq!(denied_action(kms).as_deref(), Some("kms:Decrypt"));
        assert_eq!(
            principal_arn(kms).as_deref(),
            Some("arn:aws:iam::123456789012:role/node")
        );
        for junk in [
            "arn:aws:sts::12345:assumed-role/x/y",
            "arn:evil:sts::123456789012:assumed-role/x/y",
            "arn:aws:s3:::bucket/key",
            "arn:aws:sts::123456789012:assumed-role/",
            "no arn here",
        ] {
            assert_eq!(principal_arn(junk), None, "{junk}");
        }
        assert_eq!(denied_action("secretsmanager:<script>"), None);
        assert_eq!(
            regional_endpoint("cn-north-1", false),
            "https://secretsmanager.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            regional_endpoint("us-east-1", true),
            "https://secretsmanager-fips.us-east-1.amazonaws.com"
        );
    }
}
