//! The output writer: a tmpfs root, walked with `openat(O_NOFOLLOW)`, and atomic secret sets.
//!
//! * The root's path is opened component by component from `/` with `O_NOFOLLOW | O_DIRECTORY`:
//!   a symlink anywhere on the way is refused by the kernel, not by a path check.
//! * The root must be on tmpfs or ramfs (`fstatfs`) unless the caller explicitly allows otherwise,
//!   and it must carry no POSIX ACL (a default ACL would hand the files to users the modes do not
//!   name). A root found already there, even one that appeared between our check and our
//!   `mkdir`, is checked like any pre-existing directory: it is never adopted as "created".
//! * **Atomic sets**, after Kubernetes' atomic writer. A run writes the whole set into a fresh
//!   version directory `..v-<random>` (each file created with mode 0000, `fchmod`ed and `fchown`ed
//!   to its final mode and owner before the first byte, written, `fsync`ed), then publishes it
//!   with one `rename` of a symlink: `..data -> ..v-<random>`. Every top-level name of the set is
//!   a symlink `NAME -> ..data/NAME`, so `<root>/NAME` (and `<root>/dir/file`) resolve through
//!   `..data`; names a new set adds are linked *before* the flip (they dangle until then, which
//!   reads exactly like "absent"), names it drops are unlinked *after* it. At every instant, and
//!   after a crash at any point, a reader sees exactly the old set or exactly the new one. A
//!   failed run never touches `..data`: the previous set stays intact and readable.
//! * **Unchanged sets are recognised without reading a published file back.** The caller hands
//!   in what it recorded about the published set ([`KnownSet`]: the version directory, and per
//!   file the SHA-256, size, mode, owner, inode and ctime); a file is unchanged when its record
//!   matches the new value's digest and `fstatat` of the published file matches the record. A
//!   consumer-owned file (`0440 nobody:nogroup`) is compared as well as a root-owned one, with
//!   `CAP_CHOWN` alone, and any doubt (no record, another version, a file touched since: a new
//!   ctime) counts as changed. An unchanged set is not written again.
//! * Names bootsecrets manages are reserved (see [`crate::names`]): `..data`, `..v-*`, `..tmp-*`
//!   and `.status.json`; an existing top-level entry that is not a symlink into `..data` is
//!   refused, never replaced.
//! * An exclusive `flock` on `..lock`, a root-only file (0600) in the root, serialises concurrent
//!   runs (boot and refresh): not on the root directory itself, which a `root_group` member can
//!   open and lock. Leftovers of a killed run (version directories not in use, temporary links)
//!   are removed.
//!
//! One file per concern: [`root`] opens and checks the root and keeps the status file,
//! [`publish`] decides what changed and publishes a set, [`cleanup`] removes what is no longer
//! published.

mod cleanup;
mod publish;
mod root;

use crate::names::RelPath;
use crate::secret::Secret;
use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, fchown};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

pub use crate::names::{DATA_LINK, LINK_TMP_PREFIX, LOCK_FILE, STATUS_FILE, VERSION_PREFIX};
pub use root::in_memory;

/// How the output root must look.
#[derive(Debug, Clone)]
pub struct RootSpec {
    pub path: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// Development only: accept a root that is not on tmpfs or ramfs.
    pub allow_non_tmpfs: bool,
    /// How long to wait for another run's lock on the root.
    pub lock_wait: std::time::Duration,
}

/// One file to publish. Holds a borrowed value: the writer never copies it.
pub struct Output<'a> {
    pub path: &'a RelPath,
    pub value: &'a Secret,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What bootsecrets recorded about one file it published: the value's digest and size, and the
/// published inode's mode, owner, number and change time as `fstat` saw them after the write.
/// No content: the record is compared with `fstatat` of the file, which needs no read access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub inode: u64,
    /// `st_ctime` seconds and nanoseconds: any write, chmod, chown or link changes it.
    pub ctime: (i64, i64),
}

/// The set a previous run recorded as published: its version directory (the `..data` target)
/// and one record per file path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownSet {
    pub version: String,
    pub files: BTreeMap<String, FileRecord>,
}

/// An opened, locked, checked output root.
pub struct OutputRoot {
    /// The root directory.
    fd: OwnedFd,
    /// `..lock`, held with `LOCK_EX` for as long as this value lives.
    _lock: Flock<OwnedFd>,
    spec: RootSpec,
}

/// Points in [`OutputRoot::publish_with`] where a test may inject a failure or a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// One file of the new version was written.
    Wrote,
    /// Every top-level name is linked; the flip is next.
    Linked,
    /// `..data` points to the new version; clean-up is next.
    Flipped,
}

/// What a publication did (or, handed to the `before_flip` callback, is about to do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// A set was published before this one.
    pub previous: bool,
    /// Per output, in order: new, or different from the published file (bytes, mode or owner).
    pub changed: Vec<bool>,
    /// Paths of the previous set that the new one no longer has.
    pub removed: Vec<String>,
    /// The version directory `..data` points to once published.
    pub version: String,
    /// Per output, in order: what to record about the published file.
    pub records: Vec<FileRecord>,
    /// Files of the previous set kept as they are (no new value), with their records.
    pub kept: Vec<(RelPath, FileRecord)>,
}

impl Publication {
    /// True when the set on disk changed.
    pub fn any_change(&self) -> bool {
        self.changed.contains(&true) || !self.removed.is_empty()
    }
}

impl OutputRoot {
    pub fn path(&self) -> &Path {
        &self.spec.path
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn is_symlink(parent: BorrowedFd<'_>, name: &str) -> bool {
    fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK)
        .unwrap_or(false)
}

/// Opens a directory with `open`, creating it with `mkdir` first if `create` and it is missing.
/// Returns the descriptor and whether this call created the directory: one that appears between
/// the failed open and `mkdir` (`EEXIST`) was made by someone else and is reported as found, never
/// as created. Errors say which step failed (`true`: the `mkdir`).
fn open_or_create(
    mut open: impl FnMut() -> nix::Result<OwnedFd>,
    mut mkdir: impl FnMut() -> nix::Result<()>,
    create: bool,
) -> std::result::Result<(OwnedFd, bool), (Errno, bool)> {
    match open() {
        Ok(fd) => Ok((fd, false)),
        Err(Errno::ENOENT) if create => {
            let created = match mkdir() {
                Ok(()) => true,
                Err(Errno::EEXIST) => false,
                Err(e) => return Err((e, true)),
            };
            open().map(|fd| (fd, created)).map_err(|e| (e, false))
        }
        Err(e) => Err((e, false)),
    }
}

/// Opens `name` in `parent` as a directory, refusing symlinks, creating it (mode 0700) if
/// `create` and it is missing. Returns the fd and whether it was created (see
/// [`open_or_create`]).
fn open_dir(
    parent: BorrowedFd<'_>,
    name: &str,
    shown: &Path,
    create: bool,
) -> Result<(OwnedFd, bool)> {
    let opened = open_or_create(
        || openat(parent, name, dir_flags(), Mode::empty()),
        || mkdirat(parent, name, Mode::from_bits_truncate(0o700)),
        create,
    );
    match opened {
        Ok(r) => Ok(r),
        Err((e, true)) => {
            Err(e).with_context(|| format!("cannot create directory {}", shown.display()))
        }
        Err((Errno::ELOOP | Errno::ENOTDIR, false)) => {
            if is_symlink(parent, name) {
                bail!(
                    "{} is a symbolic link; bootsecrets refuses symlinks on the way to and under the output root",
                    shown.display()
                );
            }
            bail!("{} is not a directory", shown.display())
        }
        Err((e, false)) => {
            Err(e).with_context(|| format!("cannot open directory {}", shown.display()))
        }
    }
}

/// Mode first, then owner: while bootsecrets still owns the inode, `fchmod` needs no capability,
/// so the unit can run with CAP_CHOWN alone (no CAP_FOWNER). Both happen before any content.
fn set_owner_mode(fd: BorrowedFd<'_>, uid: u32, gid: u32, mode: u32, shown: &Path) -> Result<()> {
    let st =
        nix::sys::stat::fstat(fd).with_context(|| format!("cannot stat {}", shown.display()))?;
    if st.st_mode & 0o7777 != mode {
        fchmod(fd, Mode::from_bits_truncate(mode))
            .with_context(|| format!("cannot set mode {mode:04o} on {}", shown.display()))?;
    }
    if (st.st_uid, st.st_gid) != (uid, gid) {
        fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .with_context(|| format!("cannot set owner {uid}:{gid} on {}", shown.display()))?;
    }
    Ok(())
}

/// Every entry name of a directory except `.` and `..`.
fn entries(dir: BorrowedFd<'_>) -> Result<Vec<String>> {
    let mut d = nix::dir::Dir::openat(dir, ".", dir_flags(), Mode::empty())
        .context("cannot list an output directory")?;
    Ok(d.iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .collect())
}

/// Every non-directory entry below `dir`, as relative paths.
fn list_files(dir: BorrowedFd<'_>, prefix: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for name in entries(dir)? {
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        match openat(dir, name.as_str(), dir_flags(), Mode::empty()) {
            Ok(sub) => out.extend(list_files(sub.as_fd(), &rel)?),
            Err(_) => out.push(rel),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod testutil {
    use super::*;

    pub fn scratch(name: &str) -> PathBuf {
        let p = PathBuf::from(format!(
            "/dev/shm/bootsecrets-unit-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    /// An output owned by the test's own user.
    pub fn out<'a>(path: &'a RelPath, value: &'a Secret, mode: u32) -> Output<'a> {
        Output {
            path,
            value,
            mode,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    pub fn spec(path: &Path) -> RootSpec {
        RootSpec {
            lock_wait: std::time::Duration::ZERO,
            path: path.to_path_buf(),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            mode: 0o700,
            allow_non_tmpfs: false,
        }
    }

    pub fn names(root: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    pub fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    pub fn data_target(root: &Path) -> String {
        std::fs::read_link(root.join(DATA_LINK))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// What a caller records after a publication, as the runner does through the status file.
    pub fn known(p: &Publication, outputs: &[Output<'_>]) -> KnownSet {
        KnownSet {
            version: p.version.clone(),
            files: outputs
                .iter()
                .zip(&p.records)
                .map(|(o, r)| (o.path.to_string(), r.clone()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_appears_before_our_mkdir_is_found_not_created() {
        // Missing at first, then there: what a mkdir in between (ours or someone else's) leaves.
        let appearing = || {
            let mut first = true;
            move || {
                if std::mem::take(&mut first) {
                    Err(Errno::ENOENT)
                } else {
                    openat(nix::fcntl::AT_FDCWD, ".", dir_flags(), Mode::empty())
                }
            }
        };
        // Someone else's mkdir wins the race (EEXIST).
        let (_, created) = open_or_create(appearing(), || Err(Errno::EEXIST), true).unwrap();
        assert!(
            !created,
            "a directory made by someone else is never adopted as created"
        );
        // Our own mkdir: created.
        assert!(open_or_create(appearing(), || Ok(()), true).unwrap().1);
        // Not asked to create: the ENOENT stands.
        let e = open_or_create(|| Err(Errno::ENOENT), || Ok(()), false).unwrap_err();
        assert_eq!(e, (Errno::ENOENT, false));
    }
}
