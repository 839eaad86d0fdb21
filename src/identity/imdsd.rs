//! The way through a locked metadata service: systemd-imdsd (systemd 261+).
//!
//! On a cloud machine booted with `systemd.imds.network=locked` (systemd 261+; the default is
//! `unlocked`), systemd installs a `prohibit` route to 169.254.169.254: a `connect()` there fails at once with `EACCES`, for root
//! too, unless the socket carries systemd's firewall mark (`SO_MARK`, which needs
//! `CAP_NET_ADMIN`). `systemd-imdsd` reaches the service itself and serves its data over Varlink
//! (`io.systemd.InstanceMetadata.Get` at [`SOCKET`]): a `key` appended to the vendor's data URL
//! (AWS: `http://169.254.169.254/latest`, GCE: `http://169.254.169.254/computeMetadata/v1`), the
//! answer's body in base64. The identity modules ask it only when the route is locked
//! ([`prohibited`]) and their endpoint is the metadata service's own address; with the route open
//! they speak HTTP as before.
//!
//! The reply carries credentials: it is read into a zeroizing buffer sized before it is filled,
//! and decoded without an intermediate `serde_json::Value` (`extract::json_key`,
//! `extract::base64_decode`, both zeroizing).

use crate::error::FetchError;
use crate::extract::{base64_decode, json_key};
use crate::secret::Secret;
use crate::varlink::{self, CallError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where systemd-imdsd listens (`systemd-imdsd.socket`).
pub const SOCKET: &str = "/run/systemd/io.systemd.InstanceMetadata";
const GET: &str = "io.systemd.InstanceMetadata.Get";
const ERROR_PREFIX: &str = "io.systemd.InstanceMetadata.";
/// The largest reply read: a role's credentials or an access token, in base64, are a few KiB.
const MAX_REPLY: usize = 256 * 1024;

/// The address the cloud vendors' metadata services share, which the lock closes.
pub const METADATA_IPV4: &str = "169.254.169.254";

pub use crate::error::connect_prohibited as prohibited;

/// True when `endpoint` (a URL) is the metadata service's own address, which systemd-imdsd
/// serves; a test double or a proxy elsewhere is never replaced by it.
pub fn serves(endpoint: &str) -> bool {
    url::Url::parse(endpoint).is_ok_and(|u| {
        matches!(
            u.host_str(),
            Some(METADATA_IPV4 | "[fd00:ec2::254]" | "metadata.google.internal")
        )
    })
}

/// What a `connect()` to the metadata address meets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Connected, refused or no answer: the route is not locked.
    Open(String),
    /// `EACCES`: a prohibit route (systemd-imdsd's lock).
    Locked,
}

/// Probes the route to the metadata address with one TCP connection (closed at once, nothing
/// sent), waiting at most `timeout`.
pub fn probe_route(timeout: Duration) -> Route {
    let addr = std::net::SocketAddr::from(([169, 254, 169, 254], 80));
    match std::net::TcpStream::connect_timeout(&addr, timeout) {
        Ok(_) => Route::Open("it accepts connections".into()),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EACCES as i32) => Route::Locked,
        Err(e) => Route::Open(format!("not locked ({})", crate::error::describe_io(&e))),
    }
}

/// systemd-imdsd's `GetVendorInfo`: the vendor it detected (`None` when it names none), or
/// why it could not be asked.
pub fn vendor(socket: &Path, timeout: Duration) -> Result<Option<String>, String> {
    match varlink::call(
        socket,
        "io.systemd.InstanceMetadata.GetVendorInfo",
        serde_json::json!({}),
        timeout,
    ) {
        Ok(varlink::Reply::Ok(p)) => Ok(p.get("vendor").and_then(|v| v.as_str()).map(|v| {
            v.chars()
                .filter(|c| c.is_ascii_graphic())
                .take(40)
                .collect()
        })),
        Ok(varlink::Reply::Error(e)) => Err(format!("it answered {e}")),
        Err(CallError::Absent(_)) => Err(format!("nothing answers at {}", socket.display())),
        Err(CallError::Failed(m)) => Err(m),
    }
}

/// The daemon's socket: [`SOCKET`].
pub fn socket() -> PathBuf {
    PathBuf::from(SOCKET)
}

/// Says once per run (at info, so it is in the journal at the default verbosity) that the
/// metadata service at `endpoint` is locked and systemd-imdsd is asked instead: what a person
/// debugging the node wants to know first.
pub fn note_asking(endpoint: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        log::info!(
            "metadata server at {endpoint}: the route is locked (systemd-imdsd); asking systemd-imdsd at {}",
            socket().display()
        );
    }
}

/// What a run says when the route is locked and systemd-imdsd is not there to ask.
pub fn locked_without_daemon(endpoint: &str, what: &str) -> FetchError {
    FetchError::permanent(format!(
        "cannot fetch {what}: {endpoint} is closed by a prohibit route (systemd-imdsd's lock, \
         systemd.imds.network=locked, systemd 261+), and systemd-imdsd does not \
         answer at {SOCKET}: enable systemd-imdsd.socket (bootsecrets then asks it), or boot \
         with systemd.imds.network=unlocked (every process on the node may then reach the \
         metadata service)"
    ))
}

/// The route is locked, but the endpoint is not the metadata service's own address (a proxy or
/// a relay the manifest names), which systemd-imdsd does not serve.
pub fn locked_elsewhere(endpoint: &str, what: &str) -> FetchError {
    FetchError::permanent(format!(
        "cannot fetch {what}: {endpoint} is closed by a prohibit route (systemd-imdsd's \
         systemd.imds.network=locked), and systemd-imdsd serves only the metadata service's own \
         address: remove the manifest's metadata endpoint, or boot with \
         systemd.imds.network=unlocked"
    ))
}

/// `Get` of `key` (a path below the vendor's data URL, beginning with `/`), one attempt: the
/// body the metadata service answered, decoded. `endpoint` and `what` name the request in errors.
pub async fn get(
    socket: &Path,
    key: &str,
    timeout: Duration,
    endpoint: &str,
    what: &str,
) -> Result<Secret, FetchError> {
    let socket = socket.to_path_buf();
    let params = serde_json::json!({ "key": key, "cache": false });
    let call = tokio::task::spawn_blocking(move || {
        varlink::call_raw(&socket, GET, &params, timeout, MAX_REPLY)
    })
    .await
    .map_err(|_| FetchError::transient(format!("the systemd-imdsd call for {what} was lost")))?;
    let reply = match call {
        Ok(r) => Secret::from_zeroizing(r),
        Err(CallError::Absent(_)) => return Err(locked_without_daemon(endpoint, what)),
        Err(CallError::Failed(m)) => {
            return Err(FetchError::transient(format!(
                "systemd-imdsd (the route to {endpoint} is locked) while fetching {what}: {m}"
            )));
        }
    };
    decode(&reply, key, what)
}

/// A `Get` reply: `{"parameters": {"data": BASE64, ...}}` or `{"error": NAME, ...}`.
fn decode(reply: &Secret, key: &str, what: &str) -> Result<Secret, FetchError> {
    if let Ok(name) = json_key(reply, "error") {
        let name = String::from_utf8_lossy(name.expose())
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
            .take(100)
            .collect::<String>();
        return Err(classify(&name, key, what));
    }
    let not_a_reply = || {
        FetchError::permanent(format!(
            "systemd-imdsd answered the request for {what} with a message that is not a Get reply"
        ))
    };
    let params = json_key(reply, "parameters").map_err(|_| not_a_reply())?;
    let data = json_key(&params, "data").map_err(|_| not_a_reply())?;
    base64_decode(&data).map_err(|_| not_a_reply())
}

/// An error reply, by its name (systemd's interface definition names five).
fn classify(name: &str, key: &str, what: &str) -> FetchError {
    let short = name.strip_prefix(ERROR_PREFIX).unwrap_or(name);
    match short {
        "KeyNotFound" => FetchError::permanent(format!(
            "systemd-imdsd: the metadata service has no `{key}` ({what}; KeyNotFound)"
        )),
        "CommunicationFailure" | "NotAvailable" => FetchError::transient(format!(
            "systemd-imdsd could not reach the metadata service for {what} yet ({short})"
        )),
        "NotSupported" => FetchError::permanent(format!(
            "systemd-imdsd does not support this machine's metadata service (NotSupported) while \
             fetching {what}: it found no cloud vendor for it in hwdb"
        )),
        _ if name.ends_with("PermissionDenied")
            || name.ends_with("InteractiveAuthorizationRequired") =>
        {
            FetchError::permanent(format!(
                "systemd-imdsd refused the request for {what} ({name}): bootsecrets runs as root; \
                 check the polkit rules of io.systemd.imds"
            ))
        }
        _ => FetchError::permanent(format!(
            "systemd-imdsd answered the request for {what} with the error {name}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Class;

    #[test]
    fn replies_are_decoded_and_errors_classified() {
        let ok = Secret::new(br#"{"parameters":{"data":"aGVsbG8=","interface":2}}"#.to_vec());
        assert_eq!(decode(&ok, "/k", "x").unwrap().expose(), b"hello");
        let err = |n: &str| {
            let r = Secret::new(format!(r#"{{"error":"{n}","parameters":{{}}}}"#).into_bytes());
            decode(
                &r,
                "/meta-data/iam/security-credentials/",
                "the IAM role name",
            )
            .unwrap_err()
        };
        let e = err("io.systemd.InstanceMetadata.KeyNotFound");
        assert_eq!(e.class, Class::Permanent);
        assert!(
            e.message
                .contains("has no `/meta-data/iam/security-credentials/`"),
            "{e:?}"
        );
        assert_eq!(
            err("io.systemd.InstanceMetadata.CommunicationFailure").class,
            Class::Transient
        );
        assert_eq!(
            err("io.systemd.InstanceMetadata.NotAvailable").class,
            Class::Transient
        );
        assert_eq!(
            err("io.systemd.InstanceMetadata.NotSupported").class,
            Class::Permanent
        );
        assert!(
            err("org.varlink.service.PermissionDenied")
                .message
                .contains("polkit")
        );
        let junk = Secret::new(br#"{"parameters":{"data":"not base64!"}}"#.to_vec());
        assert!(
            decode(&junk, "/k", "x")
                .unwrap_err()
                .message
                .contains("not a Get reply")
        );
        assert!(serves("http://169.254.169.254") && serves("http://[fd00:ec2::254]"));
        assert!(serves("http://metadata.google.internal/computeMetadata/v1"));
        assert!(!serves("http://127.0.0.1:8080"));
    }
}
