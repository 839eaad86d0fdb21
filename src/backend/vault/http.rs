//! The HTTP side of the Vault backend: one `reqwest` client for every request, each answer read
//! into secret memory up to `settings.max_response_bytes`, and the classification of every
//! failure as transient or permanent.
//!
//! Error messages are built from status codes and bootsecrets' own words, matched against known
//! phrases of Vault's `errors` strings. Vault's own words are added ([`Response::quoting_error`])
//! only for answers that cannot carry secret data (logins, token lookups and renewals, unwrapping,
//! mount detection, revocation), bounded and stripped of control characters; a KV read's answer
//! is never quoted.

use super::VaultConfig;
use crate::error::{FetchError, TooLarge, is_tls_error};
use crate::http::shared_header;
use crate::secret::{Secret, SecretString};
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderValue};
use std::time::Duration;
use zeroize::Zeroizing;

/// The status classes the KV code branches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    NotFound,
    Other,
}

/// An answer with its body held as secret bytes (a KV body holds the values).
pub struct Response {
    pub status: Status,
    pub code: u16,
    pub body: Secret,
    retry_after: Option<Duration>,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

impl Response {
    /// Vault's `errors` list, for matching against known phrases (never echoed).
    pub fn errors(&self) -> Vec<String> {
        serde_json::from_slice::<ErrorBody>(self.body.expose())
            .map(|b| b.errors)
            .unwrap_or_default()
    }

    /// [`Response::error`], with Vault's own words added: only for an answer that cannot carry
    /// secret data (never a KV read's).
    pub fn quoting_error(&self, what: &str) -> FetchError {
        let mut e = self.error(what);
        if let Some(said) = vault_said(&self.errors()) {
            e.message += &format!(" (Vault said: {said})");
        }
        e
    }

    /// The failure this non-success answer stands for.
    pub fn error(&self, what: &str) -> FetchError {
        let errors = self.errors();
        let mut e = classify_status(self.code, &errors, what);
        e.retry_after = e.retry_after.or(self.retry_after);
        e
    }
}

/// At most this many characters of Vault's words in a message.
pub const SAID_MAX: usize = 240;

/// Vault's `errors`, as one line fit for a message: Go's multi-error wrapper (`1 error
/// occurred:` and its bullets) and formatting debris (`%!w(<nil>)`) removed, control characters
/// turned into spaces, runs of blanks collapsed, quoted, at most [`SAID_MAX`] characters. `None`
/// when Vault said nothing.
pub fn vault_said(errors: &[String]) -> Option<String> {
    let mut parts = Vec::new();
    for e in errors {
        let mut t: String = e
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        while let Some(at) = t.find("%!") {
            let end = t[at..].find(')').map(|i| at + i + 1).unwrap_or(t.len());
            t.replace_range(at..end, "");
        }
        for item in t.split(" * ") {
            let item = item.split_whitespace().collect::<Vec<_>>().join(" ");
            let item = item.trim_end_matches(':').trim();
            let wrapper = item.ends_with("occurred") && item.contains("error");
            if !item.is_empty() && !wrapper && item != "*" {
                parts.push(item.trim_start_matches("* ").to_string());
            }
        }
    }
    if parts.is_empty() {
        return None;
    }
    let joined = parts.join("; ");
    let mut out: String = joined.chars().take(SAID_MAX).collect();
    if joined.chars().count() > SAID_MAX {
        out.push('…');
    }
    Some(format!("\"{}\"", out.replace('"', "'")))
}

fn mentions(errors: &[String], phrase: &str) -> bool {
    errors
        .iter()
        .any(|e| e.to_ascii_lowercase().contains(phrase))
}

/// Transient or permanent, from a Vault status code and its `errors` list.
pub fn classify_status(code: u16, errors: &[String], what: &str) -> FetchError {
    let t = |m: String| FetchError::transient(format!("{what}: {m}"));
    let p = |m: String| FetchError::permanent(format!("{what}: {m}"));
    match code {
        307 | 308 => t(format!(
            "redirected ({code}): a standby node with no active leader to forward to"
        )),
        // The aws method replays our signed request to STS and wraps STS's answer in a 400.
        // An expired or skewed signature (the clock not yet synced at boot) and STS 5xx clear
        // on retry; anything else STS refuses does not.
        400 if mentions(errors, "upstream request") => {
            if mentions(errors, "expired") || mentions(errors, "skew") {
                t("login refused: STS rejected the signature as expired or skewed (is the clock set?) (400)".into())
            } else if mentions(errors, "error code 5") {
                t("login failed: STS answered a server error to Vault (400)".into())
            } else {
                p("login refused: STS rejected the signed GetCallerIdentity (400)".into())
            }
        }
        400 if mentions(errors, "invalid role or secret id") => {
            p("login refused: invalid role_id or secret_id (400)".into())
        }
        400 if mentions(errors, "expired") => p("login refused: the JWT is expired (400)".into()),
        400 if mentions(errors, "audience") => {
            p("login refused: the JWT's audience does not match the role (400)".into())
        }
        400 if mentions(errors, "role") && mentions(errors, "not") => {
            p("login refused: the role does not exist or does not match (400)".into())
        }
        400 => p("request refused as invalid (400)".into()),
        401 => p("unauthenticated (401)".into()),
        403 => p(
            "permission denied (403): the token is invalid or its policies do not allow this"
                .into(),
        ),
        404 if mentions(errors, "namespace not found") => p("namespace not found (404)".into()),
        404 if mentions(errors, "unsupported path") || mentions(errors, "no handler") => {
            p("no such endpoint (404): is the auth method or engine mounted there?".into())
        }
        404 => p("not found (404)".into()),
        412 => t("precondition failed (412): the node has not caught up yet".into()),
        429 => FetchError {
            throttled: true,
            ..t("standby node or rate limit (429)".into())
        },
        472 | 473 => t(format!("node is a DR or performance standby ({code})")),
        503 if mentions(errors, "sealed") => t("Vault is sealed (503)".into()),
        500..=599 => t(format!("server error ({code})")),
        _ => p(format!("unexpected status {code}")),
    }
}

/// Transient or permanent, for a transport failure: [`crate::http::transport_error`], with a
/// pointer to the settings that fix a TLS failure.
pub fn classify_transport(e: &reqwest::Error, what: &str) -> FetchError {
    let mut f = crate::http::transport_error(e, what);
    if is_tls_error(e) && !crate::error::is_tls_clock_error(e) {
        f.message +=
            " (is Vault's CA in ca_file? does its certificate name the host, or tls_server_name?)";
    }
    f
}

/// The `X-Vault-Token` value for `token`, over a zeroizing copy of it.
fn token_header(token: &SecretString) -> Option<HeaderValue> {
    shared_header(Zeroizing::new(token.expose().as_bytes().to_vec()))
}

/// A TLS client certificate and its key, presented in every handshake (the cert login).
#[derive(Debug, Clone, Copy)]
pub struct ClientCert<'a> {
    pub cert_file: &'a str,
    pub key_file: &'a str,
}

/// The HTTP client and the request defaults shared by every call to one Vault.
pub struct Api {
    http: reqwest::Client,
    base: String,
    namespace: Option<String>,
    /// The client's `X-Vault-Token`, built once: every request sends a clone that shares its
    /// buffer, zeroed when the client and its last request are gone.
    token: Option<HeaderValue>,
    max_body: usize,
}

impl Api {
    /// Builds the client. With `tls_server_name`, requests are addressed to that name (SNI,
    /// certificate check and `Host`) while connecting to the addresses of `address`'s host,
    /// resolved here: a resolver failure is transient.
    pub async fn new(
        cfg: &VaultConfig,
        cert: Option<ClientCert<'_>>,
        max_body: u64,
    ) -> Result<Api, FetchError> {
        let url = Url::parse(&cfg.address)
            .map_err(|_| FetchError::permanent("the Vault address is not a valid URL"))?;
        let mut b = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tls_backend_rustls()
            .user_agent(concat!("bootsecrets/", env!("CARGO_PKG_VERSION")));
        if let Some(f) = &cfg.ca_file {
            // The bundle replaces the system roots: only the CA the manifest names is trusted.
            let pem = crate::credfile::read_trusted_bytes(
                "ca_file",
                std::path::Path::new(f),
                crate::credfile::MAX_CA_BUNDLE,
            )
            .map_err(FetchError::permanent)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
                FetchError::permanent(format!("ca_file `{f}` holds no valid PEM certificate"))
            })?;
            if certs.is_empty() {
                return Err(FetchError::permanent(format!(
                    "ca_file `{f}` holds no certificate"
                )));
            }
            b = b.tls_certs_only(certs);
        }
        if let Some(ClientCert {
            cert_file,
            key_file,
        }) = cert
        {
            // The client certificate and its key, as one PEM for the TLS handshake. The key is a
            // credential (its file checked as one); rustls keeps its own parsed copy.
            let mut pem = Zeroizing::new(
                crate::credfile::read_trusted_bytes(
                    "auth cert_file",
                    std::path::Path::new(cert_file),
                    crate::credfile::MAX_CA_BUNDLE,
                )
                .map_err(FetchError::permanent)?,
            );
            let key = crate::credfile::read_credential_bytes(
                "auth key_file",
                key_file,
                crate::credfile::MAX_LEN,
            )?;
            pem.reserve_exact(key.len() + 1);
            pem.push(b'\n');
            pem.extend_from_slice(&key);
            drop(key);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|_| {
                FetchError::permanent(format!(
                    "auth cert_file `{cert_file}` and key_file `{key_file}` are not a PEM \
                     certificate and its private key"
                ))
            })?;
            b = b.identity(identity);
        }
        let mut base = url.clone();
        if let Some(name) = &cfg.tls_server_name {
            let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
            let port = url.port_or_known_default().unwrap_or(443);
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port))
                .await
                .map_err(|_| {
                    FetchError::transient(format!("resolving the Vault host `{host}` failed"))
                })?
                .collect();
            if addrs.is_empty() {
                return Err(FetchError::transient(format!(
                    "the Vault host `{host}` has no address"
                )));
            }
            b = b.resolve_to_addrs(name, &addrs);
            base.set_host(Some(name))
                .map_err(|_| FetchError::permanent("tls_server_name is not a host name"))?;
        }
        let http = b.build().map_err(|e| {
            crate::http::client_setup_error("the HTTPS client for Vault", Some("ca_file"), &e)
        })?;
        Ok(Api {
            http,
            base: base.as_str().trim_end_matches('/').to_string(),
            namespace: cfg.namespace.clone(),
            token: None,
            max_body: max_body as usize,
        })
    }

    /// Sends `token` with every request that names no other. The token's own buffer becomes the
    /// header's (no copy).
    pub fn with_token(mut self, token: SecretString) -> Self {
        self.token = shared_header(token.into_bytes());
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn headers(&self, token: Option<&SecretString>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("X-Vault-Request", HeaderValue::from_static("true"));
        let value = match token {
            Some(t) => token_header(t),
            None => self.token.clone(),
        };
        if let Some(v) = value {
            h.insert("X-Vault-Token", v);
        }
        if let Some(n) = &self.namespace
            && let Ok(v) = HeaderValue::from_str(n)
        {
            h.insert("X-Vault-Namespace", v);
        }
        h
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        token: Option<&SecretString>,
        what: &str,
    ) -> Result<Response, FetchError> {
        let resp = req
            .headers(self.headers(token))
            .send()
            .await
            .map_err(|e| classify_transport(&e, what))?;
        let code = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let too_large =
            || FetchError::permanent(format!("{what}: {}", TooLarge(self.max_body as u64)));
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_body as u64)
        {
            return Err(too_large());
        }
        let mut body = crate::http::read_body(resp, self.max_body, what).await?;
        let status = match code {
            200 => Status::Ok,
            404 => Status::NotFound,
            _ => Status::Other,
        };
        Ok(Response {
            status,
            code,
            body: Secret::new(std::mem::take(&mut *body)),
            retry_after,
        })
    }

    pub async fn get(&self, path: &str, what: &str) -> Result<Response, FetchError> {
        let url = format!("{}/v1/{path}", self.base);
        self.send(self.http.get(url), None, what).await
    }

    /// POSTs a JSON body, with `token` as the request's token if given, else the client's (none
    /// during a login). reqwest owns the body once sent and frees it without zeroing (see
    /// docs/design.md).
    pub async fn post(
        &self,
        path: &str,
        body: Vec<u8>,
        token: Option<&SecretString>,
        what: &str,
    ) -> Result<Response, FetchError> {
        let url = format!("{}/v1/{path}", self.base);
        let req = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.send(req, token, what).await
    }
}

/// A global allocator for this crate's unit tests that, while a test watches for a byte string on
/// its own thread, looks for it in every block freed on that thread. A reallocation counts as a
/// move (a new block, then the old one freed), since it may be one.
#[cfg(test)]
pub(super) mod freed {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static NEEDLE: Cell<Option<&'static [u8]>> = const { Cell::new(None) };
        static HITS: Cell<usize> = const { Cell::new(0) };
    }

    pub struct Scanning;

    fn watching() -> bool {
        NEEDLE.try_with(|n| n.get().is_some()).unwrap_or(false)
    }

    fn scan(ptr: *const u8, size: usize) {
        let _ = NEEDLE.try_with(|n| {
            if let Some(needle) = n.get() {
                // SAFETY: the block is live until it is handed back; its bytes are only compared.
                let block = unsafe { std::slice::from_raw_parts(ptr, size) };
                if block.windows(needle.len()).any(|w| w == needle) {
                    HITS.with(|h| h.set(h.get() + 1));
                }
            }
        });
    }

    unsafe impl GlobalAlloc for Scanning {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            scan(ptr, layout.size());
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if !watching() {
                return unsafe { System.realloc(ptr, layout, new_size) };
            }
            let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            let new = unsafe { self.alloc(new_layout) };
            if !new.is_null() {
                unsafe {
                    std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
            }
            new
        }
    }

    #[global_allocator]
    static ALLOC: Scanning = Scanning;

    /// Runs `f`; returns its result and how many blocks freed meanwhile (on this thread) still
    /// held `needle`.
    pub fn holding<R>(needle: &'static [u8], f: impl FnOnce() -> R) -> (R, usize) {
        HITS.with(|h| h.set(0));
        NEEDLE.with(|n| n.set(Some(needle)));
        let r = f();
        NEEDLE.with(|n| n.set(None));
        (r, HITS.with(|h| h.get()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(e: &[&str]) -> Option<String> {
        vault_said(&e.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn vaults_words_are_one_bounded_line() {
        // OpenBao's CIDR refusal, with its formatting debris.
        assert_eq!(
            said(&["source address \"127.0.0.1\" unauthorized by CIDR restrictions on the role: %!w(<nil>)"])
                .unwrap(),
            "\"source address '127.0.0.1' unauthorized by CIDR restrictions on the role\""
        );
        // Go's multi-error wrapper, and control characters.
        assert_eq!(
            said(&["1 error occurred:\n\t* permission denied\n\n"]).unwrap(),
            "\"permission denied\""
        );
        assert_eq!(
            said(&["2 errors occurred:\n\t* a\x1b[31m\n\t* b\n\n"]).unwrap(),
            "\"a [31m; b\""
        );
        assert_eq!(said(&[]), None);
        assert_eq!(said(&["  \n"]), None);
        let long = said(&[&"x".repeat(1000)]).unwrap();
        assert_eq!(long.chars().count(), SAID_MAX + 3, "{long}");
        assert!(long.ends_with("…\""));
    }

    async fn test_api() -> Api {
        let cfg = VaultConfig {
            address: "http://127.0.0.1:8200".into(),
            address_source: "address",
            namespace: Some("team-a".into()),
            ca_file: None,
            tls_server_name: None,
            timeout: Duration::from_secs(5),
            revoke_token: false,
            auth: super::super::auth::AuthConfig::Token {
                token_file: "/unused".into(),
            },
        };
        Api::new(&cfg, None, 1 << 20).await.unwrap()
    }

    /// The token header sent with each request shares one zeroizing buffer: dropping the requests'
    /// headers and then the client frees no block that still holds the token. The same for a
    /// token given for one request (the wrapping token of an unwrap).
    #[tokio::test]
    async fn token_headers_leave_no_copy_of_the_token_when_freed() {
        const TOKEN: &str = "hvs.canary-client-token-3f9a1c";
        const WRAPPING: &str = "hvs.canary-wrapping-token-0b7e";
        let api = test_api().await;
        let ((), hits) = freed::holding(TOKEN.as_bytes(), || {
            let api = api.with_token(SecretString::new(TOKEN.to_string()));
            for _ in 0..3 {
                let h = api.headers(None);
                assert_eq!(h["X-Vault-Token"], TOKEN);
                assert!(h["X-Vault-Token"].is_sensitive());
                assert_eq!(h["X-Vault-Namespace"], "team-a");
            }
            drop(api);
        });
        assert_eq!(hits, 0, "a freed block held the client's token");

        let api = test_api().await;
        let wrapping = SecretString::new(WRAPPING.to_string());
        let ((), hits) = freed::holding(WRAPPING.as_bytes(), || {
            let h = api.headers(Some(&wrapping));
            assert_eq!(h["X-Vault-Token"], WRAPPING);
            assert!(h["X-Vault-Token"].is_sensitive());
        });
        assert_eq!(hits, 0, "a freed block held the per-request token");
        assert!(!api.headers(None).contains_key("X-Vault-Token"));
    }

    /// An owner that records when it is dropped.
    struct Owner(Vec<u8>, std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Owner {
        fn drop(&mut self) {
            self.1.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_shared_header_keeps_its_owner_until_the_last_clone_and_copies_nothing() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dropped = std::sync::Arc::new(AtomicBool::new(false));
        let bytes = b"s.token-value".to_vec();
        let ptr = bytes.as_ptr();
        let v = shared_header(Owner(bytes, dropped.clone())).unwrap();
        assert!(v.is_sensitive());
        assert_eq!(v, "s.token-value");
        assert_eq!(
            v.as_bytes().as_ptr(),
            ptr,
            "the header's bytes are the owner's"
        );
        let clone = v.clone();
        assert_eq!(clone.as_bytes().as_ptr(), ptr, "a clone shares them");
        assert!(format!("{clone:?}").contains("Sensitive"));
        drop(v);
        assert!(!dropped.load(Ordering::SeqCst));
        drop(clone);
        assert!(
            dropped.load(Ordering::SeqCst),
            "dropped with the last clone"
        );

        // Bytes a header cannot carry: no header, and the owner is dropped at once.
        for bad in [&b"tok\nen"[..], b"tok\x7fen", b"tok\0en"] {
            let dropped = std::sync::Arc::new(AtomicBool::new(false));
            assert!(shared_header(Owner(bad.to_vec(), dropped.clone())).is_none());
            assert!(dropped.load(Ordering::SeqCst));
        }
        let empty = shared_header(Zeroizing::new(Vec::new())).unwrap();
        assert!(empty.is_empty() && empty.is_sensitive());
    }

    fn errs(e: &[&str]) -> Vec<String> {
        e.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn statuses_and_known_phrases_are_classified() {
        let c = |code, e: &[&str]| classify_status(code, &errs(e), "x");
        assert!(c(503, &["Vault is sealed"]).is_transient());
        assert!(c(503, &["Vault is sealed"]).message.contains("sealed"));
        for code in [307, 412, 429, 472, 473, 500, 502] {
            assert!(c(code, &[]).is_transient(), "{code}");
        }
        for code in [400, 401, 403, 404, 405] {
            assert!(!c(code, &[]).is_transient(), "{code}");
        }
        assert!(
            c(404, &["namespace not found"])
                .message
                .contains("namespace not found")
        );
        let skew = c(
            400,
            &[
                "error making upstream request: received error code 403 from STS: \
                              Signature expired: 20261121T000000Z is now earlier than ...",
            ],
        );
        assert!(
            skew.is_transient() && skew.message.contains("clock"),
            "{}",
            skew.message
        );
        assert!(
            c(
                400,
                &["error making upstream request: received error code 503 from STS"]
            )
            .is_transient()
        );
        let denied = c(
            400,
            &[
                "error making upstream request: received error code 403 from STS: InvalidClientTokenId",
            ],
        );
        assert!(!denied.is_transient());
        let jwt = c(400, &["token is expired"]);
        assert!(!jwt.is_transient() && jwt.message.contains("JWT is expired"));
        // Vault's own words never reach the message.
        assert!(
            !c(400, &["secret-ish detail"])
                .message
                .contains("secret-ish")
        );
    }
}
