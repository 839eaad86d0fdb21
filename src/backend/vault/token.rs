//! A token placed on the node (`method = "token"`), kept across boots: what is left of its life,
//! and its renewal.
//!
//! Every connection looks the token up (`auth/token/lookup-self`, which the default policy
//! grants): an invalid one (expired, revoked, or from another Vault) fails the backend at once
//! with a message that says so, instead of a permission denial per secret. A run then renews a
//! renewable one (`auth/token/renew-self`, also in the default policy) before reading with it,
//! so a periodic token lives as long as the node runs at least once per period; `doctor` only
//! looks. Both answers carry the token's own identifiers (`data.id` in the lookup): they are read
//! as secret bytes like every answer, and only the life fields are parsed out of them.

use super::http::Api;
use crate::error::FetchError;
use std::time::{Duration, SystemTime};

/// Less than this left after a run is worth a warning: a node powered off (or failing to run)
/// for that long would find its token expired.
pub const WARN_WITHIN: Duration = Duration::from_secs(24 * 3600);

/// What is left of a placed token's life, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLife {
    pub renewable: bool,
    /// Time to live; `None` for a token that never expires (a root token, `ttl` 0).
    pub ttl: Option<Duration>,
    /// A periodic token's period: each renewal gives it this much again, with no maximum.
    pub period: Option<Duration>,
    /// The TTL it was created with: what a renewal of a token that is not periodic asks for
    /// again (Vault's default would be the mount's default TTL, often much longer).
    pub creation_ttl: Option<Duration>,
    /// Whether this run renewed it.
    pub renewed: bool,
    /// When this was learnt (for the expiry time).
    pub at: SystemTime,
}

/// The lookup's outcome: the life, or why it is not known (the token's policies lack the lookup).
#[derive(Debug, Clone)]
pub enum Lookup {
    Known(TokenLife),
    Unknown(String),
}

#[derive(serde::Deserialize)]
struct LookupAnswer {
    data: Option<LookupData>,
}

/// The life fields of `auth/token/lookup-self`'s `data` (its `id` is the token itself: never
/// parsed).
#[derive(serde::Deserialize)]
struct LookupData {
    #[serde(default)]
    renewable: bool,
    #[serde(default)]
    ttl: u64,
    #[serde(default)]
    period: Option<u64>,
    #[serde(default)]
    creation_ttl: u64,
}

#[derive(serde::Deserialize)]
struct RenewAnswer {
    auth: Option<RenewAuth>,
}

/// The life fields of `auth/token/renew-self`'s `auth` (its `client_token`: never parsed).
#[derive(serde::Deserialize)]
struct RenewAuth {
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

/// Vault answers an unknown token with a bare `permission denied` (HashiCorp Vault 1.12+ adds
/// `invalid token`), and a known token whose policies refuse a path with the same words inside
/// a multi-error (`1 error occurred: * permission denied`): the only way to tell them apart.
pub fn invalid_token(errors: &[String]) -> bool {
    let lower: Vec<String> = errors.iter().map(|e| e.to_ascii_lowercase()).collect();
    lower.iter().any(|e| e.contains("invalid token"))
        || (!lower.is_empty()
            && lower
                .iter()
                .all(|e| e.trim() == "permission denied" && !e.contains("error occurred")))
}

/// The message for a token Vault does not know, naming the file and what to do.
pub fn invalid_message(token_file: &str, base: &str) -> String {
    format!(
        "the token in {token_file} is not valid at {base}: Vault does not know it (expired, \
         revoked, or minted by another Vault or namespace); place a new token in token_file \
         (a periodic token, `-period=`, lives as long as the node runs at least once per period)"
    )
}

/// The permanent failure of a token Vault does not know.
fn unknown(token_file: &str, api: &Api) -> FetchError {
    FetchError::permanent(invalid_message(token_file, api.base_url()))
}

/// Whether Vault knows the token, from one lookup attempt (its answer's status only): `None`
/// when the lookup is not allowed or does not answer.
pub async fn known(api: &Api) -> Option<bool> {
    let what = "looking up the token after a denial (auth/token/lookup-self)";
    match api.get("auth/token/lookup-self", what).await {
        Ok(r) if r.code == 200 => Some(true),
        Ok(r) if r.code == 403 && invalid_token(&r.errors()) => Some(false),
        _ => None,
    }
}

/// One lookup attempt (`auth/token/lookup-self`); the caller retries transient errors.
pub async fn look_up(api: &Api, token_file: &str) -> Result<Lookup, FetchError> {
    let what = "looking up the token (auth/token/lookup-self)";
    let resp = api.get("auth/token/lookup-self", what).await?;
    match resp.code {
        200 => {}
        403 if invalid_token(&resp.errors()) => return Err(unknown(token_file, api)),
        403 => {
            return Ok(Lookup::Unknown(
                "the token's policies do not allow `read` on auth/token/lookup-self (the default \
                 policy does): its remaining life is unknown and it is not renewed; give it the \
                 default policy (`vault token create` without `-no-default-policy`) or a policy \
                 granting `read` on auth/token/lookup-self and `update` on auth/token/renew-self"
                    .to_string(),
            ));
        }
        _ => return Err(resp.quoting_error(what)),
    }
    let data = serde_json::from_slice::<LookupAnswer>(resp.body.expose())
        .ok()
        .and_then(|a| a.data)
        .ok_or_else(|| {
            FetchError::permanent(format!("{what}: Vault's answer is not a token lookup"))
        })?;
    Ok(Lookup::Known(life_of(&data, SystemTime::now())))
}

/// A lookup's answer as a token's life. Vault counts the TTL in whole seconds, so a token looked
/// up in its last second answers `ttl: 0`, as a token that never expires (a root token) does; only
/// a token with neither a period nor a creation TTL is one that never expires.
fn life_of(data: &LookupData, at: SystemTime) -> TokenLife {
    let period = data.period.filter(|&p| p > 0).map(Duration::from_secs);
    let creation_ttl = (data.creation_ttl > 0).then(|| Duration::from_secs(data.creation_ttl));
    let expires = data.ttl > 0 || period.is_some() || creation_ttl.is_some();
    TokenLife {
        renewable: data.renewable,
        ttl: expires.then(|| Duration::from_secs(data.ttl)),
        period,
        creation_ttl,
        renewed: false,
        at,
    }
}

/// Whether a run renews a token with this life: renewable, and with a TTL to extend.
pub fn wants_renewal(life: &TokenLife) -> bool {
    life.renewable && life.ttl.is_some()
}

/// One renewal attempt (`auth/token/renew-self`): a periodic token gets its period again, another
/// the TTL it was created with, up to its maximum; the caller retries transient errors. A permanent
/// refusal is returned as `Ok(Err(reason))`: the run goes on with the token as it is.
pub async fn renew(
    api: &Api,
    token_file: &str,
    before: &TokenLife,
) -> Result<Result<TokenLife, String>, FetchError> {
    let what = "renewing the token (auth/token/renew-self)";
    let body = match (before.period, before.creation_ttl) {
        (None, Some(t)) => format!("{{\"increment\":\"{}s\"}}", t.as_secs()),
        _ => "{}".to_string(),
    };
    let resp = api
        .post("auth/token/renew-self", body.into_bytes(), None, what)
        .await?;
    match resp.code {
        200 => {}
        403 if invalid_token(&resp.errors()) => return Err(unknown(token_file, api)),
        _ => {
            let e = resp.quoting_error(what);
            if e.class == crate::error::Class::Transient {
                return Err(e);
            }
            return Ok(Err(e.message));
        }
    }
    let auth = serde_json::from_slice::<RenewAnswer>(resp.body.expose())
        .ok()
        .and_then(|a| a.auth)
        .ok_or_else(|| {
            FetchError::permanent(format!("{what}: Vault's answer is not a token renewal"))
        })?;
    Ok(Ok(TokenLife {
        renewable: auth.renewable,
        ttl: (auth.lease_duration > 0 || before.ttl.is_some())
            .then(|| Duration::from_secs(auth.lease_duration)),
        period: before.period,
        creation_ttl: before.creation_ttl,
        renewed: true,
        at: SystemTime::now(),
    }))
}

/// `3 d 4 h`, `5 h 12 min`, `42 s`: two units at most.
pub fn span(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    if days > 0 {
        format!("{days} d {hours} h")
    } else if hours > 0 {
        format!("{hours} h {mins} min")
    } else if mins > 0 {
        format!("{mins} min {} s", s % 60)
    } else {
        format!("{s} s")
    }
}

impl TokenLife {
    pub fn expires(&self) -> Option<SystemTime> {
        self.ttl.map(|t| self.at + t)
    }

    /// `expires in 5 h 12 min (<time>)` or `never expires`.
    pub fn left(&self) -> String {
        match (self.ttl, self.expires()) {
            (Some(t), Some(at)) => {
                format!("expires in {} ({})", span(t), crate::status::rfc3339(at))
            }
            _ => "never expires".to_string(),
        }
    }

    /// For `doctor` and the debug log: renewable or not, what is left, the period.
    pub fn describe(&self) -> String {
        let left = self.left();
        let kind = match (self.renewable, self.period) {
            (true, Some(p)) => format!("periodic ({}), renewable", span(p)),
            (true, None) => "renewable".to_string(),
            (false, _) => "not renewable".to_string(),
        };
        format!(
            "{kind}, {left}{}",
            if self.renewed { " after renewal" } else { "" }
        )
    }

    /// The warning when less than [`WARN_WITHIN`] is left, saying what happens then.
    pub fn warning(&self, token_file: &str) -> Option<String> {
        let ttl = self.ttl?;
        if ttl >= WARN_WITHIN {
            return None;
        }
        let at = self
            .expires()
            .map(crate::status::rfc3339)
            .unwrap_or_default();
        let what_then = if self.renewable && self.period.is_some() {
            format!(
                "every run renews it (boot and bootsecrets-refresh.timer's hourly run), so a node \
                 that does not run for {} (powered off, or Vault unreachable) finds it expired and \
                 fails closed until a new token is placed; a longer `-period=` gives it more",
                span(self.period.unwrap_or(ttl))
            )
        } else if self.renewable {
            format!(
                "every run renews it for {}, never past its maximum TTL: a node that does not \
                 run for that long finds it expired and fails closed until a new token is \
                 placed (a periodic token, `-period=`, has no maximum)",
                self.creation_ttl
                    .map(span)
                    .unwrap_or_else(|| "its TTL".to_string())
            )
        } else {
            "it cannot be renewed: place a new token before then (a periodic token, \
             `-period=`, is renewed by every run)"
                .to_string()
        };
        Some(format!(
            "the Vault token in {token_file} expires in {} ({at}): {what_then}",
            span(ttl)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(e: &[&str]) -> Vec<String> {
        e.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_unknown_token_is_told_from_a_policy_denial() {
        // OpenBao 2.x and Vault before 1.12: an unknown token.
        assert!(invalid_token(&errs(&["permission denied"])));
        // Vault 1.12+: an unknown token.
        assert!(invalid_token(&errs(&[
            "permission denied",
            "invalid token"
        ])));
        // A known token whose policies refuse the path (both servers).
        assert!(!invalid_token(&errs(&[
            "1 error occurred:\n\t* permission denied\n\n"
        ])));
        assert!(!invalid_token(&[]));
    }

    #[test]
    fn spans_read_in_two_units_at_most() {
        assert_eq!(span(Duration::from_secs(42)), "42 s");
        assert_eq!(span(Duration::from_secs(125)), "2 min 5 s");
        assert_eq!(
            span(Duration::from_secs(5 * 3600 + 12 * 60 + 9)),
            "5 h 12 min"
        );
        assert_eq!(
            span(Duration::from_secs(3 * 86_400 + 4 * 3600 + 1)),
            "3 d 4 h"
        );
    }

    fn life(renewable: bool, ttl: u64, period: Option<u64>) -> TokenLife {
        TokenLife {
            renewable,
            ttl: (ttl > 0).then(|| Duration::from_secs(ttl)),
            period: period.map(Duration::from_secs),
            creation_ttl: None,
            renewed: false,
            at: SystemTime::UNIX_EPOCH,
        }
    }

    fn looked_up(renewable: bool, ttl: u64, period: Option<u64>, creation_ttl: u64) -> TokenLife {
        let data = LookupData {
            renewable,
            ttl,
            period,
            creation_ttl,
        };
        life_of(&data, SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn a_token_looked_up_in_its_last_second_is_renewed_not_taken_for_immortal() {
        // Vault rounds the TTL down to whole seconds: `ttl: 0` with a period or a creation TTL is
        // a token about to expire.
        let periodic = looked_up(true, 0, Some(6), 0);
        assert_eq!(periodic.ttl, Some(Duration::ZERO));
        assert!(wants_renewal(&periodic));
        assert!(
            periodic.left().starts_with("expires in 0 s"),
            "{}",
            periodic.left()
        );
        let ttl_token = looked_up(true, 0, None, 600);
        assert!(wants_renewal(&ttl_token));
        // A root token: no TTL, no period, no creation TTL, not renewable.
        let root = looked_up(false, 0, Some(0), 0);
        assert_eq!(root.ttl, None);
        assert!(!wants_renewal(&root));
        assert_eq!(root.left(), "never expires");
        assert_eq!(
            looked_up(true, 5, Some(6), 0).ttl,
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn a_warning_only_under_a_day_and_saying_what_happens_then() {
        assert_eq!(life(true, 86_400, Some(86_400)).warning("/t"), None);
        assert_eq!(life(false, 0, None).warning("/t"), None);
        let w = life(true, 8, Some(8)).warning("/t").unwrap();
        assert!(
            w.contains("/t expires in 8 s (1970-01-01T00:00:08.000Z)"),
            "{w}"
        );
        assert!(w.contains("does not run for 8 s"), "{w}");
        let w = life(false, 3600, None).warning("/t").unwrap();
        assert!(w.contains("cannot be renewed"), "{w}");
        let w = life(true, 600, None).warning("/t").unwrap();
        assert!(
            w.contains("renews it for its TTL, never past its maximum"),
            "{w}"
        );
    }
}
