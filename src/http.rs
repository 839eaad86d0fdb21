//! Small plain-HTTP helpers for the metadata clients (`identity::azure_imds`,
//! `identity::gce_metadata`) and the HTTPS client the Azure backend hands to its SDK.
//!
//! Everything here uses the `reqwest` the cloud SDKs already pull in (one copy in the graph), with
//! rustls and never a proxy: a metadata endpoint must be reached directly, and an HTTP proxy
//! would see the tokens.

use crate::error::{FetchError, describe_io, find_io_error};
use std::time::Duration;
use zeroize::Zeroizing;

/// A sensitive header value that shares `owner`'s bytes instead of copying them: its clones
/// share them too, and `owner` is dropped (a `Zeroizing` buffer zeroed) with the last clone, or at
/// once if the bytes are not a valid header value. `reqwest::header::HeaderValue::from_maybe_shared` keeps a
/// `Bytes` as it is; `Bytes::from_owner` keeps the owner rather than a copy of its bytes.
pub fn shared_header<T: AsRef<[u8]> + Send + 'static>(
    owner: T,
) -> Option<reqwest::header::HeaderValue> {
    let mut v =
        reqwest::header::HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(owner)).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// Largest response body read from a metadata server (tokens and small JSON documents).
pub const MAX_METADATA_BODY: usize = 256 * 1024;

/// A client for a link-local metadata server: no proxy (environment variables are ignored), no
/// redirects, `timeout` for the whole request and at most 2 s to connect. Metadata servers speak
/// plain HTTP, so it trusts no CA at all (`tls_certs_only` with none): without that, reqwest's
/// rustls loads the system's CA certificates to build any client, and on a node that has none
/// the identity would fail before a byte was sent.
pub fn metadata_client(timeout: Duration) -> Result<reqwest::Client, FetchError> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(2)))
        .timeout(timeout)
        .tls_certs_only(std::iter::empty::<reqwest::Certificate>())
        .build()
        .map_err(|e| client_setup_error("the metadata server's HTTP client", None, &e))
}

/// Whether building an HTTPS client failed because the system has no CA certificates
/// (rustls-platform-verifier, which reqwest's rustls verifies servers with, loads them at build
/// time and refuses an empty store).
pub fn lacks_system_roots(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .to_string()
            .contains("No CA certificates were loaded from the system")
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The failure to set up `what` (an HTTP client), with the cause a person can act on when it is
/// a system without CA certificates; `ca_key` is the manifest key that names a CA instead, if
/// the backend has one. Nothing else of the error is repeated (it can quote configuration).
pub fn client_setup_error(
    what: &str,
    ca_key: Option<&str>,
    e: &(dyn std::error::Error + 'static),
) -> FetchError {
    if !lacks_system_roots(e) {
        return FetchError::permanent(format!("cannot set up {what}"));
    }
    let or_key = ca_key
        .map(|k| format!(", or name the server's CA with `{k}`"))
        .unwrap_or_default();
    FetchError::permanent(format!(
        "cannot set up {what}: this system has no CA certificates (none in /etc/ssl/certs, \
         SSL_CERT_FILE or SSL_CERT_DIR), which verifying the server needs: install the \
         distribution's CA certificates{or_key}"
    ))
}

/// A metadata server's answer: status, `Retry-After`, headers and the body (zeroizing).
pub struct MetadataAnswer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub headers: reqwest::header::HeaderMap,
    pub body: Zeroizing<Vec<u8>>,
}

/// One GET to a link-local metadata server (Azure IMDS, GCE): no proxy, `timeout`, the header
/// the service requires, the body read with [`MAX_METADATA_BODY`]. Transport failures are
/// classified here; the caller classifies statuses, which differ per service.
pub async fn metadata_get(
    timeout: Duration,
    url: &str,
    query: &[(&str, &str)],
    header: (&str, &str),
    what: &str,
) -> Result<MetadataAnswer, FetchError> {
    metadata_get_unless_locked(timeout, url, query, header, what)
        .await?
        .ok_or_else(|| {
            FetchError::permanent(format!(
                "{what}: the address is closed by a prohibit route (systemd-imdsd's lock, \
                 systemd.imds.network=locked, systemd 261+), and this request \
                 cannot be made through systemd-imdsd; boot with systemd.imds.network=unlocked \
                 (every process on the node may then reach the metadata service)"
            ))
        })
}

/// [`metadata_get`], or `None` when the connection was refused by a `prohibit` route (the
/// metadata service locked by systemd-imdsd): the caller may ask the daemon instead.
pub async fn metadata_get_unless_locked(
    timeout: Duration,
    url: &str,
    query: &[(&str, &str)],
    header: (&str, &str),
    what: &str,
) -> Result<Option<MetadataAnswer>, FetchError> {
    let resp = match metadata_client(timeout)?
        .get(url)
        .query(query)
        .header(header.0, header.1)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) if crate::error::connect_prohibited(&e) => return Ok(None),
        Err(e) => return Err(transport_error(&e, &format!("{what}: not reachable"))),
    };
    let status = resp.status().as_u16();
    let retry_after = retry_after(resp.headers());
    let headers = resp.headers().clone();
    let body = read_body(resp, MAX_METADATA_BODY, what).await?;
    Ok(Some(MetadataAnswer {
        status,
        retry_after,
        headers,
        body,
    }))
}

/// Reads a response body into a zeroizing buffer, refusing more than `limit` bytes. The chunks
/// `reqwest` hands out are its own buffers and are freed without zeroing (see docs/design.md).
pub async fn read_body(
    mut resp: reqwest::Response,
    limit: usize,
    what: &str,
) -> Result<Zeroizing<Vec<u8>>, FetchError> {
    let mut out = Zeroizing::new(Vec::new());
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > limit {
                    return Err(FetchError::permanent(format!(
                        "{what}: the response is larger than {limit} bytes"
                    )));
                }
                // Grow by hand so the old buffer is zeroed before it is freed.
                if out.capacity() < out.len() + chunk.len() {
                    let mut bigger =
                        Zeroizing::new(Vec::with_capacity((out.len() + chunk.len()).max(4096)));
                    bigger.extend_from_slice(&out);
                    out = bigger;
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(out),
            Err(e) => return Err(transport_error(&e, what)),
        }
    }
}

/// Classifies a `reqwest` transport error (no HTTP status): TLS failures are permanent,
/// everything else (refused, reset, timeouts, DNS not ready) is transient.
pub fn transport_error(err: &reqwest::Error, what: &str) -> FetchError {
    if let Some(mut e) = crate::error::classify_tls(err, None, "") {
        e.message = format!("{what}: {}", e.message);
        return e;
    }
    if err.is_builder() {
        return FetchError::permanent(format!("{what}: the request could not be built"));
    }
    let detail = if err.is_timeout() {
        "timed out"
    } else if let Some(io) = find_io_error(err) {
        describe_io(io)
    } else if err.is_connect() {
        "connection failed"
    } else {
        "connection lost"
    };
    FetchError::transient(format!("{what}: {detail}"))
}

/// A server's `Retry-After` in seconds, if it gave one.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// An error code taken from a response, reduced to a short token of `[A-Za-z0-9_.]` so that
/// nothing else from a body can reach a message.
pub fn sanitize_code(s: &str) -> Option<String> {
    let c: String = s
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
        .take(64)
        .collect();
    (!c.is_empty()).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_reduced_to_a_token() {
        assert_eq!(
            sanitize_code("invalid_request").as_deref(),
            Some("invalid_request")
        );
        assert_eq!(
            sanitize_code("ForbiddenByRbac: caller x").as_deref(),
            Some("ForbiddenByRbac")
        );
        assert_eq!(sanitize_code(" leading"), None);
        assert_eq!(sanitize_code(&"a".repeat(100)).unwrap().len(), 64);
    }
}
