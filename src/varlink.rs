//! A Varlink client, as small as the protocol: JSON messages over a Unix stream socket, each
//! ended by a NUL byte (<https://varlink.org>). systemd serves its user database
//! (`io.systemd.UserDatabase`) and its instance metadata (`io.systemd.InstanceMetadata`) this
//! way; one call, one reply, bounded in time and size.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The largest reply read: a user record is a few KiB.
pub const MAX_REPLY: usize = 1 << 20;

/// How a call ended, when the service answered.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// The reply's `parameters` (an empty object when it has none).
    Ok(serde_json::Value),
    /// An error reply: its qualified name, such as `io.systemd.UserDatabase.NoRecordFound`.
    Error(String),
}

/// Why a call got no reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing listens there (no socket, or connection refused): the service is not running.
    #[error("no service at {0}")]
    Absent(String),
    #[error("{0}")]
    Failed(String),
}

/// Calls `method` with `parameters` on the service at `socket`, waiting at most `timeout` in all.
pub fn call(
    socket: &Path,
    method: &str,
    parameters: serde_json::Value,
    timeout: Duration,
) -> Result<Reply, CallError> {
    let reply = call_raw(socket, method, &parameters, timeout, MAX_REPLY)?;
    parse_reply(&reply).ok_or_else(|| {
        CallError::Failed(format!(
            "Varlink call {method} at {}: the reply is not a Varlink message",
            socket.display()
        ))
    })
}

/// [`call`], returning the reply message as it came (without its NUL), at most `max` bytes, in
/// a buffer sized before it is filled and zeroed on drop: for replies that carry a credential
/// (the read buffer is zeroed too).
pub fn call_raw(
    socket: &Path,
    method: &str,
    parameters: &serde_json::Value,
    timeout: Duration,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, CallError> {
    let shown = socket.display().to_string();
    let failed = |what: &str, e: std::io::Error| {
        CallError::Failed(format!(
            "Varlink call {method} at {shown}: {what}: {}",
            crate::error::describe_io(&e)
        ))
    };
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(CallError::Absent(shown));
        }
        Err(e) => return Err(failed("cannot connect", e)),
    };
    let end = Instant::now() + timeout;
    let left = || {
        end.checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                CallError::Failed(format!(
                    "Varlink call {method} at {shown}: no reply within {} ms",
                    timeout.as_millis()
                ))
            })
    };
    let mut msg = serde_json::to_vec(&serde_json::json!({
        "method": method,
        "parameters": parameters,
    }))
    .map_err(|e| CallError::Failed(format!("Varlink call {method}: cannot encode: {e}")))?;
    msg.push(0);
    stream
        .set_write_timeout(Some(left()?))
        .map_err(|e| failed("cannot set a timeout", e))?;
    stream
        .write_all(&msg)
        .map_err(|e| failed("cannot send", e))?;
    let mut reply = Zeroizing::new(Vec::with_capacity(max));
    let mut buf = Zeroizing::new([0u8; 4096]);
    loop {
        stream
            .set_read_timeout(Some(left()?))
            .map_err(|e| failed("cannot set a timeout", e))?;
        let n = match stream.read(&mut buf[..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                left()?;
                continue;
            }
            Err(e) => return Err(failed("cannot read the reply", e)),
        };
        if n == 0 {
            return Err(CallError::Failed(format!(
                "Varlink call {method} at {shown}: the service closed the connection without a reply"
            )));
        }
        let (chunk, done) = match buf[..n].iter().position(|&b| b == 0) {
            Some(i) => (&buf[..i], true),
            None => (&buf[..n], false),
        };
        if reply.len() + chunk.len() > max {
            return Err(CallError::Failed(format!(
                "Varlink call {method} at {shown}: the reply is larger than {max} bytes"
            )));
        }
        reply.extend_from_slice(chunk);
        if done {
            return Ok(reply);
        }
    }
}

/// A reply message: `{"parameters": {...}}` or `{"error": "NAME", "parameters": {...}}`.
fn parse_reply(bytes: &[u8]) -> Option<Reply> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let obj = v.as_object()?;
    match obj.get("error") {
        Some(e) => Some(Reply::Error(e.as_str()?.to_string())),
        None => Some(Reply::Ok(
            obj.get("parameters")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({})),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn replies_are_read_up_to_the_nul_and_errors_named() {
        assert_eq!(
            parse_reply(br#"{"parameters":{"record":{"uid":7}}}"#),
            Some(Reply::Ok(serde_json::json!({"record":{"uid":7}})))
        );
        assert_eq!(
            parse_reply(br#"{"error":"io.systemd.UserDatabase.NoRecordFound"}"#),
            Some(Reply::Error("io.systemd.UserDatabase.NoRecordFound".into()))
        );
        assert_eq!(parse_reply(b"[]"), None);
        assert_eq!(parse_reply(b"not json"), None);
    }

    #[test]
    fn a_call_sends_one_message_and_reads_one_reply() {
        let dir = std::path::PathBuf::from(format!(
            "/dev/shm/bootsecrets-unit-{}-varlink",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("io.example.Test");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).unwrap() == 1 && b[0] != 0 {
                got.push(b[0]);
            }
            // The reply in two writes: the client reads until the NUL.
            s.write_all(br#"{"parameters":{"ok":"#).unwrap();
            s.write_all(b"true}}\0").unwrap();
            String::from_utf8(got).unwrap()
        });
        let r = call(
            &sock,
            "io.example.Test.Ping",
            serde_json::json!({"x": 1}),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(r, Reply::Ok(serde_json::json!({"ok": true})));
        let sent: serde_json::Value = serde_json::from_str(&server.join().unwrap()).unwrap();
        assert_eq!(
            sent,
            serde_json::json!({"method": "io.example.Test.Ping", "parameters": {"x": 1}})
        );

        // A service that never answers: the call ends at its timeout.
        let _silent = UnixListener::bind(dir.join("silent")).unwrap();
        let e = call(
            &dir.join("silent"),
            "io.example.Test.Ping",
            serde_json::json!({}),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no reply within 200 ms"), "{e}");
        assert!(matches!(
            call(
                &dir.join("absent"),
                "x.y",
                serde_json::json!({}),
                Duration::from_secs(1)
            ),
            Err(CallError::Absent(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
