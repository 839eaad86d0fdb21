//! Error classes the retry loop and the exit code branch on.

use std::time::Duration;

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Connection refused or reset, timeouts, 5xx, throttling, metadata service not up yet,
    /// Vault sealed or standby: retried with backoff inside the run's deadline.
    Transient,
    /// Denied, not found, invalid request, bad configuration: fails the run at once.
    Permanent,
}

/// A failed attempt to talk to an identity source or a backend.
///
/// The message is always composed by bootsecrets itself from status codes, error codes and its
/// own words: never from a response body, and never containing a secret or token.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    pub class: Class,
    pub message: String,
    /// A server's own hint (for example `Retry-After`), honoured by the backoff.
    pub retry_after: Option<Duration>,
    /// The service asked to slow down (throttling, HTTP 429): the node's whole request rate to
    /// that backend adapts (see `crate::governor`), not only this request's next attempt.
    pub throttled: bool,
}

impl FetchError {
    pub fn transient(message: impl Into<String>) -> Self {
        FetchError {
            class: Class::Transient,
            message: message.into(),
            retry_after: None,
            throttled: false,
        }
    }

    /// A transient error that asks the client to slow down.
    pub fn throttled(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        FetchError {
            retry_after,
            throttled: true,
            ..FetchError::transient(message)
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        FetchError {
            class: Class::Permanent,
            message: message.into(),
            retry_after: None,
            throttled: false,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.class == Class::Transient
    }
}

/// A response refused because of its size (see `settings.max_response_bytes`).
#[derive(Debug, thiserror::Error)]
#[error("the response is larger than {0} bytes (settings.max_response_bytes)")]
pub struct TooLarge(pub u64);

/// The size limit hit somewhere in an error chain, if that is what happened.
pub fn find_too_large(err: &(dyn std::error::Error + 'static)) -> Option<u64> {
    find_in_chain(err, &mut |e| e.downcast_ref::<TooLarge>().map(|t| t.0))
}

/// Why a whole run failed; decides the process exit code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The manifest or the command line is invalid (exit 2).
    #[error("{0:#}")]
    Invalid(anyhow::Error),
    /// A permanent error, or the output could not be written (exit 1).
    #[error("{0:#}")]
    Failed(anyhow::Error),
    /// Transient errors did not clear before the deadline (exit 3).
    #[error("{0:#}")]
    DeadlineExceeded(anyhow::Error),
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Failed(_) => 1,
            RunError::Invalid(_) => 2,
            RunError::DeadlineExceeded(_) => 3,
        }
    }

    pub fn inner(&self) -> &anyhow::Error {
        match self {
            RunError::Invalid(e) | RunError::Failed(e) | RunError::DeadlineExceeded(e) => e,
        }
    }
}

/// The first error in a chain for which `f` returns something, visiting `source()` links and
/// also the payloads of `io::Error`s, which `io::Error::source()` skips. Outermost first.
fn find_in_chain<'a, T>(
    err: &'a (dyn std::error::Error + 'static),
    f: &mut dyn FnMut(&'a (dyn std::error::Error + 'static)) -> Option<T>,
) -> Option<T> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = f(e) {
            return Some(found);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            let inner: &'a (dyn std::error::Error + 'static) = inner;
            if let Some(found) = find_in_chain(inner, f) {
                return Some(found);
            }
        }
        cur = e.source();
    }
    None
}

/// The outermost I/O error in the chain, so that connection refused, reset and timeouts buried
/// inside SDK error types can be told apart from everything else.
/// True when the chain of `err` holds what a `prohibit` route answers `connect()`: `EACCES`
/// (connecting a TCP socket has no other cause for it). systemd 261+ locks the metadata
/// service's address this way (see `identity::imdsd`).
pub fn connect_prohibited(err: &(dyn std::error::Error + 'static)) -> bool {
    find_io_error(err).is_some_and(|e| e.raw_os_error() == Some(nix::errno::Errno::EACCES as i32))
}

pub fn find_io_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    find_in_chain(err, &mut |e| e.downcast_ref::<std::io::Error>())
}

/// True when the chain holds a TLS failure (certificate, protocol): retrying cannot help. Seen
/// from the SDK's HTTPS client as `io::Error(Other, io::Error(InvalidData, rustls::Error))`.
#[cfg(any(feature = "aws", feature = "vault", feature = "azure", feature = "gcp"))]
pub fn is_tls_error(err: &(dyn std::error::Error + 'static)) -> bool {
    find_in_chain(err, &mut |e| e.downcast_ref::<rustls::Error>().map(|_| ())).is_some()
}

/// True when TLS failed because a certificate is expired or not yet valid *by our clock*: at boot,
/// before the clock is synced, that clears by itself, so it is retried (within the deadline)
/// rather than failing the node at once.
#[cfg(any(feature = "aws", feature = "vault", feature = "azure", feature = "gcp"))]
pub fn is_tls_clock_error(err: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::CertificateError as C;
    find_in_chain(err, &mut |e| match e.downcast_ref::<rustls::Error>() {
        Some(rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        )) => Some(()),
        _ => None,
    })
    .is_some()
}

/// The one classification of a TLS failure, shared by every backend and metadata client: a
/// certificate not valid at this time (expired, or not yet valid: the node's clock is behind
/// before NTP has synced, at boot) is transient, so the run retries within its deadline; any
/// other certificate or protocol failure is permanent. `peer` names the service (if the caller
/// does not), `fix` is added
/// to a permanent failure's message. `None` when `err` holds no TLS failure.
pub fn classify_tls(
    err: &(dyn std::error::Error + 'static),
    peer: Option<&str>,
    fix: &str,
) -> Option<FetchError> {
    let (of, with) = match peer {
        Some(p) => (format!(" of {p}"), format!(" with {p}")),
        None => (String::new(), String::new()),
    };
    if is_tls_clock_error(err) {
        Some(FetchError::transient(format!(
            "TLS: the certificate{of} is not valid at this time (is the clock set?)"
        )))
    } else if is_tls_error(err) {
        Some(FetchError::permanent(format!(
            "TLS handshake{with} failed (certificate or protocol error{fix})"
        )))
    } else {
        None
    }
}

/// A short, fixed description of a transport-level failure, for messages.
pub fn describe_io(err: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    // getaddrinfo failures (std's `lookup_host`, which the HTTP clients' resolvers use) carry no
    // ErrorKind of their own; their text is fixed by std, not by a server.
    if err
        .to_string()
        .starts_with("failed to lookup address information")
    {
        return "the host name did not resolve (DNS)";
    }
    match err.kind() {
        ConnectionRefused => "connection refused",
        ConnectionReset => "connection reset",
        ConnectionAborted => "connection aborted",
        TimedOut => "timed out",
        NotConnected => "not connected",
        AddrNotAvailable => "address not available",
        NetworkUnreachable => "network unreachable",
        HostUnreachable => "host unreachable",
        UnexpectedEof => "connection closed early",
        BrokenPipe => "broken pipe",
        NotFound => "no such file or directory",
        PermissionDenied => "permission denied",
        _ => "I/O error",
    }
}
