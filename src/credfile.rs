//! Files the manifest points to that hold credentials (a Vault token, an AppRole secret_id, a JWT)
//! or decide whom to trust (a CA bundle).
//!
//! Like sshd's StrictModes: such a file, and the manifest itself, must be a regular file owned by
//! root and writable by nobody else, in directories owned by root that nobody else can write to
//! (a sticky world-writable directory such as /tmp is accepted: nobody else can rename or replace
//! an entry in it); a credential must also not be readable by other users. The checks run when
//! the manifest is validated (`check`, and before every `run`) and again on the opened file
//! descriptor when it is read, so a file swapped in between is caught.
//!
//! `--allow-insecure-permissions` (development only) also accepts files and directories owned by
//! the user running bootsecrets, and turns refusals of group- or world-writable ones into
//! warnings.

use crate::error::FetchError;
use crate::secret::SecretString;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag, fstat};
use nix::unistd::{Uid, geteuid};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use zeroize::Zeroizing;

static ALLOW_INSECURE: AtomicBool = AtomicBool::new(false);

/// Development only: relax the ownership and mode checks (see the module documentation).
pub fn allow_insecure_permissions() {
    ALLOW_INSECURE.store(true, Ordering::Relaxed);
}

fn insecure_allowed() -> bool {
    ALLOW_INSECURE.load(Ordering::Relaxed)
}

const HINT: &str = "(--allow-insecure-permissions accepts it, for development only)";

/// Owner rule: root, or with the development option also the running user.
fn owner_ok(uid: u32) -> Result<(), String> {
    if uid == 0 || (insecure_allowed() && Uid::from_raw(uid) == geteuid()) {
        return Ok(());
    }
    Err(format!("is owned by uid {uid}, not by root {HINT}"))
}

/// Writable by group or others: refused, or with the development option a warning.
fn writable_ok(mode: u32, what: &str, sticky_ok: bool) -> Result<(), String> {
    let m = Mode::from_bits_truncate(mode);
    if !m.intersects(Mode::S_IWGRP | Mode::S_IWOTH) || (sticky_ok && m.contains(Mode::S_ISVTX)) {
        return Ok(());
    }
    if insecure_allowed() {
        log::warn!(
            "{what} is writable by group or others (mode {:04o}); allowed by --allow-insecure-permissions",
            mode & 0o7777
        );
        return Ok(());
    }
    Err(format!(
        "is writable by group or others (mode {:04o}); chmod go-w it {HINT}",
        mode & 0o7777
    ))
}

/// A directory on the way to something bootsecrets trusts: owned by root, not writable by group
/// or others unless sticky.
pub fn check_dir(st: &nix::sys::stat::FileStat, shown: &str) -> Result<(), String> {
    owner_ok(st.st_uid)?;
    writable_ok(st.st_mode, shown, true)
}

/// Every directory from `/` down to `path`'s parent must be owned by root and not writable by
/// group or others, unless sticky.
pub fn check_ancestors(what: &str, path: &Path) -> Result<(), String> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| format!("{what}: cannot resolve the current directory: {e}"))?
            .join(path)
    };
    let mut dir = abs.clone();
    let mut chain = Vec::new();
    while dir.pop() {
        chain.push(dir.clone());
    }
    for d in chain.iter().rev() {
        let st = nix::sys::stat::stat(d.as_path())
            .map_err(|e| format!("{what}: cannot examine {}: {e}", d.display()))?;
        owner_ok(st.st_uid).map_err(|e| format!("{what}: directory {} {e}", d.display()))?;
        writable_ok(st.st_mode, &format!("directory {}", d.display()), true)
            .map_err(|e| format!("{what}: directory {} {e}", d.display()))?;
    }
    Ok(())
}

/// Opens `path` the careful way: resolved to its real path first (symlinks on the way are
/// allowed, e.g. /var/run -> /run, but the directories that are then checked are the real
/// ones), every directory of the real path checked, the file's owner and type checked before it
/// is opened (the unit runs without `CAP_DAC_OVERRIDE`: a file of another user's would otherwise
/// surface as a bare "permission denied"), then the file itself opened with `O_NOFOLLOW` (a link
/// swapped in after resolving is refused), `O_NONBLOCK` and `O_NOCTTY` (a FIFO or a terminal
/// cannot block or capture the run). Returns the real path, the file and its `fstat`.
fn open_checked(
    what: &str,
    path: &Path,
) -> Result<(PathBuf, File, nix::sys::stat::FileStat), String> {
    let shown = path.display();
    let real = std::fs::canonicalize(path).map_err(|e| {
        format!(
            "{what} `{shown}` cannot be opened: {}",
            crate::error::describe_io(&e)
        )
    })?;
    check_ancestors(&format!("{what} `{shown}`"), &real)?;
    if let Ok(st) = nix::sys::stat::lstat(&real) {
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(format!("{what} `{shown}` is not a regular file"));
        }
        owner_ok(st.st_uid).map_err(|e| format!("{what} `{shown}` {e}"))?;
    }
    let fd = nix::fcntl::open(
        &real,
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("{what} `{shown}` cannot be opened: {e}"))?;
    let f = File::from(fd);
    let st = fstat(f.as_fd()).map_err(|e| format!("{what} `{shown}` cannot be examined: {e}"))?;
    Ok((real, f, st))
}

/// Reads a file that decides what bootsecrets does (the manifest): regular, owned by root, not
/// writable by others, in safe directories. Checked on the opened descriptor.
pub fn read_trusted(what: &str, path: &Path) -> Result<String, String> {
    let bytes = read_trusted_bytes(what, path, MAX_MANIFEST)?;
    String::from_utf8(bytes).map_err(|_| format!("{what} {} is not UTF-8 text", path.display()))
}

/// [`read_trusted`] for binary content (a CA bundle), at most `max` bytes.
pub fn read_trusted_bytes(what: &str, path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let (_, f, st) = open_checked(what, path)?;
    check_stat(&st, Kind::Trusted, &format!("{what} {}", path.display()))
        .map_err(|e| format!("{what} `{}` {e}", path.display()))?;
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {what} `{}`: {e}", path.display()))?;
    if buf.len() as u64 > max {
        return Err(format!(
            "{what} `{}` is larger than {max} bytes",
            path.display()
        ));
    }
    Ok(buf)
}

/// An `on_change` program: a regular file owned by root, not writable by others, executable, in
/// safe directories. Checked when the manifest is validated and again just before it runs, since
/// it runs as root. Returns the resolved real path that was checked: that path, not the one the
/// manifest wrote, is what runs, so a symbolic link swapped after the check changes nothing (every
/// directory on the resolved path is root's alone).
pub fn check_executable(what: &str, path: &str) -> Result<PathBuf, String> {
    if !Path::new(path).is_absolute() {
        return Err(format!("{what} `{path}` must be an absolute path"));
    }
    if crate::settings::offline() {
        return Ok(PathBuf::from(path));
    }
    let (real, _, st) = open_checked(what, Path::new(path))?;
    check_stat(&st, Kind::Trusted, path).map_err(|e| format!("{what} `{path}` {e}"))?;
    if st.st_mode & 0o111 == 0 {
        return Err(format!("{what} `{path}` is not executable"));
    }
    Ok(real)
}

/// The `PATH` handed to programs bootsecrets runs as root: the `candidates` that exist and whose
/// whole real path is root's alone (owned by root, not writable by group or others; the
/// directory itself not even when sticky). Never relaxed by `--allow-insecure-permissions`: a
/// writable directory in root's `PATH` lets its writers choose what runs.
pub fn safe_search_path(candidates: &[&str]) -> String {
    let safe = |dir: &str| -> bool {
        let Ok(real) = std::fs::canonicalize(dir) else {
            return false;
        };
        let mut chain = vec![real.clone()];
        let mut d = real;
        while d.pop() {
            chain.push(d.clone());
        }
        chain.iter().enumerate().all(|(i, d)| {
            nix::sys::stat::stat(d.as_path()).is_ok_and(|st| {
                let m = Mode::from_bits_truncate(st.st_mode);
                let writable = m.intersects(Mode::S_IWGRP | Mode::S_IWOTH);
                st.st_uid == 0 && (!writable || (i > 0 && m.contains(Mode::S_ISVTX)))
            })
        })
    };
    let kept: Vec<&str> = candidates.iter().copied().filter(|d| safe(d)).collect();
    for d in candidates.iter().filter(|d| !kept.contains(d)) {
        log::debug!(
            "{d} is left out of the PATH of on_change commands: missing, or not root's alone"
        );
    }
    kept.join(":")
}

/// Reads a credential that is not one printable word (a PEM private key), at most `max` bytes,
/// into a zeroizing buffer allocated once; the file must pass the credential checks.
pub fn read_credential_bytes(
    what: &str,
    path: &str,
    max: u64,
) -> Result<Zeroizing<Vec<u8>>, FetchError> {
    let (_, mut f, st) = open_checked(what, Path::new(path)).map_err(FetchError::permanent)?;
    check_stat(&st, Kind::Credential, path)
        .map_err(|e| FetchError::permanent(format!("{what} `{path}` {e}")))?;
    let mut buf = Zeroizing::new(vec![0u8; max as usize + 1]);
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(FetchError::permanent(format!(
                    "{what} `{path}` cannot be read: {e}"
                )));
            }
        }
    }
    if n as u64 > max {
        return Err(FetchError::permanent(format!(
            "{what} `{path}` is larger than {max} bytes"
        )));
    }
    buf.truncate(n);
    Ok(buf)
}

/// Largest CA bundle read.
pub const MAX_CA_BUNDLE: u64 = 1024 * 1024;

/// Largest manifest read.
pub const MAX_MANIFEST: u64 = 4 * 1024 * 1024;

/// What a file holds, which decides how strict its mode must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Secret material: not readable, nor writable, by other users.
    Credential,
    /// Public but trusted material (a CA bundle, an AppRole role_id): not writable by others.
    Trusted,
}

/// Largest credential file read (a Kubernetes service-account JWT is a few KiB).
pub const MAX_LEN: u64 = 64 * 1024;

fn check_stat(st: &nix::sys::stat::FileStat, kind: Kind, shown: &str) -> Result<(), String> {
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err("is not a regular file".into());
    }
    owner_ok(st.st_uid)?;
    writable_ok(st.st_mode, shown, false)?;
    let mode = Mode::from_bits_truncate(st.st_mode);
    if kind == Kind::Credential && mode.intersects(Mode::S_IROTH) {
        return Err(format!(
            "holds a credential but is readable by others (mode {:04o}); chmod o-r it",
            st.st_mode & 0o7777
        ));
    }
    Ok(())
}

fn check_size(st: &nix::sys::stat::FileStat) -> Result<(), String> {
    if st.st_size as u64 > MAX_LEN {
        return Err(format!("is larger than {MAX_LEN} bytes"));
    }
    Ok(())
}

/// A file a backend reads on the node when it connects: the manifest key that names it, the path
/// and how strict its mode must be. Planning checks only its form ([`check_form`]); whether it
/// exists and is safe is checked when this run needs the backend ([`check`]), so a backend used
/// only by a skipped or optional secret never fails the whole run for a file it does not need.
#[derive(Debug, Clone)]
pub struct NodeFile {
    pub key: String,
    pub path: String,
    pub kind: Kind,
}

impl NodeFile {
    pub fn new(key: impl Into<String>, path: &str, kind: Kind) -> NodeFile {
        NodeFile {
            key: key.into(),
            path: path.to_string(),
            kind,
        }
    }

    /// [`check`] of this file.
    pub fn check(&self) -> Result<(), String> {
        check(&self.key, &self.path, self.kind)
    }
}

/// The form of a path the manifest names for the node: absolute, no NUL.
pub fn check_form(what: &str, path: &str) -> Result<(), String> {
    if !Path::new(path).is_absolute() {
        return Err(format!("{what} `{path}` must be an absolute path"));
    }
    if path.contains('\0') {
        return Err(format!("{what} must not contain NUL"));
    }
    Ok(())
}

/// Check on the node: the file exists, is absolute, and has safe ownership and mode.
/// `what` names the manifest key in messages. With `check --offline` only the path's form is
/// checked (the file belongs to the node, not to the machine validating).
pub fn check(what: &str, path: &str, kind: Kind) -> Result<(), String> {
    if !Path::new(path).is_absolute() {
        return Err(format!("{what} `{path}` must be an absolute path"));
    }
    if crate::settings::offline() {
        return Ok(());
    }
    let (_, _, st) = open_checked(what, Path::new(path))?;
    check_stat(&st, kind, path)
        .and_then(|_| check_size(&st))
        .map_err(|e| format!("{what} `{path}` {e}"))
}

/// Reads a credential file, re-checking the opened descriptor. Surrounding whitespace (a trailing
/// newline) is removed. The content must be non-empty printable ASCII: it becomes an HTTP header
/// or a JSON string, and an invalid byte there must be an error, never a panic.
pub fn read_credential(what: &str, path: &str) -> Result<SecretString, FetchError> {
    let (_, mut f, st) = open_checked(what, Path::new(path)).map_err(FetchError::permanent)?;
    check_stat(&st, Kind::Credential, path)
        .and_then(|_| check_size(&st))
        .map_err(|e| FetchError::permanent(format!("{what} `{path}` {e}")))?;
    // One buffer of the limit and one byte more, allocated once: reading never reallocates (which
    // would leave an unzeroed copy behind), and never reads past the limit even if the file grew
    // after the size check.
    let mut buf = Zeroizing::new(vec![0u8; MAX_LEN as usize + 1]);
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(FetchError::permanent(format!(
                    "{what} `{path}` cannot be read: {e}"
                )));
            }
        }
    }
    if n as u64 > MAX_LEN {
        return Err(FetchError::permanent(format!(
            "{what} `{path}` is larger than {MAX_LEN} bytes"
        )));
    }
    let text = buf[..n].trim_ascii();
    if text.is_empty() {
        return Err(FetchError::permanent(format!("{what} `{path}` is empty")));
    }
    if !text.iter().all(|b| b.is_ascii_graphic()) {
        return Err(FetchError::permanent(format!(
            "{what} `{path}` holds characters other than printable ASCII (one value, no spaces)"
        )));
    }
    let mut s = String::with_capacity(text.len());
    s.extend(text.iter().map(|&b| b as char));
    Ok(SecretString::new(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &Path, name: &str, content: &str, mode: u32) -> String {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p.to_str().unwrap().to_string()
    }

    #[test]
    fn modes_and_content() {
        let dir = std::env::temp_dir().join(format!("bs-credfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = file(&dir, "ok", "s.abc123\n", 0o640);
        assert!(check("token_file", &ok, Kind::Credential).is_ok());
        assert_eq!(
            read_credential("token_file", &ok).unwrap().expose(),
            "s.abc123"
        );

        let world = file(&dir, "world", "x", 0o644);
        assert!(check("t", &world, Kind::Trusted).is_ok());
        let e = check("t", &world, Kind::Credential).unwrap_err();
        assert!(e.contains("readable by others"), "{e}");
        assert!(read_credential("t", &world).is_err());

        let gw = file(&dir, "gw", "x", 0o620);
        assert!(
            check("t", &gw, Kind::Trusted)
                .unwrap_err()
                .contains("writable")
        );

        let spaced = file(&dir, "spaced", "two words", 0o600);
        let e = read_credential("t", &spaced).unwrap_err().message;
        assert!(!e.contains("words"), "{e}");
        let empty = file(&dir, "empty", "\n", 0o600);
        assert!(
            read_credential("t", &empty)
                .unwrap_err()
                .message
                .contains("empty")
        );

        assert!(
            check("t", "relative/path", Kind::Trusted)
                .unwrap_err()
                .contains("absolute")
        );
        assert!(
            check("t", dir.to_str().unwrap(), Kind::Trusted)
                .unwrap_err()
                .contains("regular")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_credential_is_read_up_to_its_limit_and_no_further() {
        let dir = std::env::temp_dir().join(format!("bs-credlimit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let at = file(&dir, "at", &"a".repeat(MAX_LEN as usize), 0o600);
        assert_eq!(
            read_credential("t", &at).unwrap().expose().len(),
            MAX_LEN as usize
        );
        let over = file(&dir, "over", &"a".repeat(MAX_LEN as usize + 1), 0o600);
        assert!(
            read_credential("t", &over)
                .unwrap_err()
                .message
                .contains("larger")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_search_path_keeps_only_root_only_directories() {
        if !geteuid().is_root() {
            return;
        }
        let base = PathBuf::from(format!("/dev/shm/bs-path-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (ok, open, other) = (base.join("ok"), base.join("open"), base.join("other"));
        for d in [&ok, &open, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        nix::unistd::chown(&other, Some(Uid::from_raw(65534)), None).unwrap();
        let p = safe_search_path(&[
            ok.to_str().unwrap(),
            open.to_str().unwrap(),
            other.to_str().unwrap(),
            "/nonexistent-bootsecrets",
        ]);
        assert_eq!(p, ok.to_str().unwrap());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
