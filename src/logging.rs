//! Logs for the journal, and for a terminal.
//!
//! * Run by systemd (`$JOURNAL_STREAM` names stderr), each record goes to the journal through its
//!   native protocol (a datagram to `/run/systemd/journal/socket`, `systemd.journal-fields(7)`),
//!   with `PRIORITY=`, `SYSLOG_IDENTIFIER=bootsecrets` and the record's structured fields in
//!   upper case: `SECRET_PATH=`, `BACKEND=`, `ERROR_CLASS=` (never a value), so
//!   `journalctl -u bootsecrets SECRET_PATH=kubelet/ca.crt` finds a secret's lines. A field whose
//!   value holds several lines becomes that many fields (a backend's failure names every secret it
//!   concerns). A multi-line message is one entry, at one priority.
//! * If the socket cannot take a record, it goes to stderr with an `sd-daemon(3)` priority prefix
//!   on every line, so `journalctl -p` still files each line where it belongs.
//! * Elsewhere, plain `bootsecrets: LEVEL: ...` lines on stderr, no timestamps.
//!
//! Only bootsecrets' own records are printed; the SDKs' internal diagnostics are never forwarded,
//! because they are not reviewed for secret hygiene.

use log::kv::{Key, Value, VisitSource};
use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;

/// Where journald listens for native-protocol datagrams.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

struct Logger {
    /// Connected to the journal when stderr is the journal stream and the socket answered.
    journal: Option<UnixDatagram>,
    /// stderr is the journal stream: prefix every line with its priority.
    prefixed: bool,
}

fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// The record's key-value pairs, keys upper-cased for the journal.
struct Fields(Vec<(String, String)>);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let name: String = key
            .as_str()
            .chars()
            .map(|c| c.to_ascii_uppercase())
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && !name.starts_with('_') {
            for v in value.to_string().split('\n') {
                self.0.push((name.clone(), v.to_string()));
            }
        }
        Ok(())
    }
}

/// One journal entry in the native format: `KEY=value\n`, or for a value with a newline
/// `KEY\n`, its length as a little-endian u64, the value, `\n`.
pub fn journal_entry(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        out.extend_from_slice(k.as_bytes());
        if v.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
    out
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.target().starts_with("bootsecrets")
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let message = r.args().to_string();
        let prio = priority(r.level());
        if let Some(sock) = &self.journal {
            let mut extra = Fields(Vec::new());
            let _ = r.key_values().visit(&mut extra);
            let prio_text = prio.to_string();
            let mut fields: Vec<(&str, &str)> = vec![
                ("PRIORITY", &prio_text),
                ("SYSLOG_IDENTIFIER", "bootsecrets"),
                ("MESSAGE", &message),
            ];
            fields.extend(extra.0.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            if sock.send(&journal_entry(&fields)).is_ok() {
                return;
            }
        }
        let mut text = String::with_capacity(message.len() + 16);
        if self.prefixed {
            for line in message.split('\n') {
                text.push_str(&format!("<{prio}>{line}\n"));
            }
        } else {
            let word = match r.level() {
                Level::Error => "error",
                Level::Warn => "warning",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            text.push_str(&format!("bootsecrets: {word}: {message}\n"));
        }
        // One write per record so concurrent tasks do not interleave within it.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }

    fn flush(&self) {}
}

/// True when stderr is the stream systemd connected to the journal.
fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// Installs the logger. `verbosity`: 0 = info, 1 = debug, 2+ = trace; `quiet` = warnings only.
pub fn init(verbosity: u8, quiet: bool) {
    let level = match (quiet, verbosity) {
        (true, _) => LevelFilter::Warn,
        (false, 0) => LevelFilter::Info,
        (false, 1) => LevelFilter::Debug,
        (false, _) => LevelFilter::Trace,
    };
    let prefixed = stderr_is_journal();
    let journal = prefixed
        .then(|| {
            let s = UnixDatagram::unbound().ok()?;
            s.connect(JOURNAL_SOCKET).ok()?;
            Some(s)
        })
        .flatten();
    if log::set_boxed_logger(Box::new(Logger { journal, prefixed })).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_use_the_binary_safe_form_for_multi_line_values() {
        let e = journal_entry(&[
            ("PRIORITY", "3"),
            ("MESSAGE", "a\nb"),
            ("SECRET_PATH", "x/y"),
        ]);
        let mut want = b"PRIORITY=3\nMESSAGE\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"a\nb\nSECRET_PATH=x/y\n");
        assert_eq!(e, want);
    }
}
