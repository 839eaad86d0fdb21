//! The output writer: a tmpfs root, walked with `openat(O_NOFOLLOW)`, and atomic secret sets.
//!
//! * The root's path is opened component by component from `/` with `O_NOFOLLOW | O_DIRECTORY`:
//!   a symlink anywhere on the way is refused by the kernel, not by a path check.
//! * The root must be on tmpfs or ramfs (`fstatfs`) unless the caller explicitly allows otherwise.
//! * **Atomic sets**, after Kubernetes' atomic writer. A run writes the whole set into a fresh
//!   version directory `..v-<random>` (each file created with mode 0000, `fchmod`ed and `fchown`ed
//!   to its final mode and owner before the first byte, written, `fsync`ed), then publishes it
//!   with one `rename` of a symlink: `..data -> ..v-<random>`. Every top-level name of the set is
//!   a symlink `NAME -> ..data/NAME`, so `<root>/NAME` (and `<root>/dir/file`) resolve through
//!   `..data`; names a new set adds are linked *before* the flip (they dangle until then, which
//!   reads exactly like "absent"), names it drops are unlinked *after* it. At every instant, and
//!   after a crash at any point, a reader sees exactly the old set or exactly the new one. A
//!   failed run never touches `..data`: the previous set stays intact and readable.
//! * A set identical to the published one (same names, bytes, modes and owners) is not written
//!   again: nothing changes on disk and the caller learns which secrets changed.
//! * Names bootsecrets manages are reserved: `..data`, `..v-*`, `..tmp-*` and `.status.json`; an
//!   existing top-level entry that is not a symlink into `..data` is refused, never replaced.
//! * An exclusive `flock` on the root serialises concurrent runs (boot and refresh); leftovers of
//!   a killed run (version directories not in use, temporary links) are removed.

use crate::plan::{RelPath, TEMP_PREFIX};
use crate::secret::Secret;
use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag, openat, readlinkat, renameat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fsync, symlinkat, unlinkat};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The symlink whose target is the published version directory.
pub const DATA_LINK: &str = "..data";
/// Version directories are named `..v-<16 hex digits>`.
pub const VERSION_PREFIX: &str = "..v-";
/// Temporary links and files, renamed into place or removed.
pub const LINK_TMP_PREFIX: &str = "..tmp-";
/// The status of the last run, in the root (see docs/manifest.md).
pub const STATUS_FILE: &str = ".status.json";

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

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

/// An opened, locked, checked output root.
pub struct OutputRoot {
    fd: Flock<OwnedFd>,
    spec: RootSpec,
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Opens `name` in `parent` as a directory, refusing symlinks, creating it (mode 0700) if
/// `create` and it is missing. Returns the fd and whether it was created.
fn open_dir(
    parent: BorrowedFd<'_>,
    name: &str,
    shown: &Path,
    create: bool,
) -> Result<(OwnedFd, bool)> {
    let mut created = false;
    loop {
        match openat(parent, name, dir_flags(), Mode::empty()) {
            Ok(fd) => return Ok((fd, created)),
            Err(Errno::ENOENT) if create && !created => {
                match mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => created = true,
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("cannot create directory {}", shown.display())
                        });
                    }
                }
            }
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                let is_link = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map(|st| {
                        SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
                    })
                    .unwrap_or(false);
                if is_link {
                    bail!(
                        "{} is a symbolic link; bootsecrets refuses symlinks on the way to and under the output root",
                        shown.display()
                    );
                }
                bail!("{} is not a directory", shown.display())
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot open directory {}", shown.display()));
            }
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

impl OutputRoot {
    /// Opens (creating if needed) and checks the output root, then takes its lock.
    pub fn open(spec: &RootSpec) -> Result<OutputRoot> {
        let comps: Vec<String> = spec
            .path
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        let (last, ancestors) = comps
            .split_last()
            .ok_or_else(|| anyhow!("output root {} has no name", spec.path.display()))?;
        let mut dir = openat(nix::fcntl::AT_FDCWD, "/", dir_flags(), Mode::empty())
            .context("cannot open /")?;
        let mut shown = PathBuf::from("/");
        let check = |fd: BorrowedFd<'_>, shown: &Path| -> Result<nix::sys::stat::FileStat> {
            let st = nix::sys::stat::fstat(fd)
                .with_context(|| format!("cannot stat {}", shown.display()))?;
            Ok(st)
        };
        let st = check(dir.as_fd(), &shown)?;
        crate::credfile::check_dir(&st, "/").map_err(|e| anyhow!("/ {e}"))?;
        for c in ancestors {
            shown.push(c);
            dir = open_dir(dir.as_fd(), c, &shown, false)?.0;
            // A directory someone else controls could swap the root for another between runs.
            let st = check(dir.as_fd(), &shown)?;
            crate::credfile::check_dir(&st, &shown.display().to_string()).map_err(|e| {
                anyhow!(
                    "output root {}: its ancestor {} {e}",
                    spec.path.display(),
                    shown.display()
                )
            })?;
        }
        shown.push(last);
        let (root, created) = open_dir(dir.as_fd(), last, &shown, true)?;
        if !created {
            let st = check(root.as_fd(), &shown)?;
            let me = nix::unistd::geteuid().as_raw();
            if st.st_uid != 0 && st.st_uid != spec.uid && st.st_uid != me {
                bail!(
                    "output root {} exists and is owned by uid {}, not by root or root_owner: \
                     someone else may have prepared it; remove it",
                    shown.display(),
                    st.st_uid
                );
            }
        }

        let fs = nix::sys::statfs::fstatfs(root.as_fd())
            .with_context(|| format!("cannot statfs {}", shown.display()))?;
        let fstype = fs.filesystem_type().0 as i64;
        if fstype != TMPFS_MAGIC && fstype != RAMFS_MAGIC {
            if !spec.allow_non_tmpfs {
                bail!(
                    "output root {} is not on tmpfs or ramfs (filesystem type {fstype:#x}); secrets \
                     must not reach a disk. Mount a tmpfs there or choose a root under /run \
                     (--allow-non-tmpfs exists for development only)",
                    shown.display()
                );
            }
            log::warn!(
                "output root {} is not on tmpfs or ramfs; allowed by --allow-non-tmpfs",
                shown.display()
            );
        }
        set_owner_mode(root.as_fd(), spec.uid, spec.gid, spec.mode, &shown)?;
        // Another run (a refresh, a manual run) may hold the lock for a while: wait for it, up
        // to `lock_wait`, rather than fail the boot.
        let until = std::time::Instant::now() + spec.lock_wait;
        let mut root = root;
        let fd = loop {
            match Flock::lock(root, FlockArg::LockExclusiveNonblock) {
                Ok(fd) => break fd,
                Err((back, Errno::EWOULDBLOCK)) if std::time::Instant::now() < until => {
                    root = back;
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err((_, e)) => bail!(
                    "output root {} is locked by another bootsecrets run ({e}; waited {} s)",
                    shown.display(),
                    spec.lock_wait.as_secs()
                ),
            }
        };
        Ok(OutputRoot {
            fd,
            spec: spec.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.spec.path
    }

    /// Publishes `outputs` as one set (see the module documentation) and reports what changed.
    pub fn publish(&self, outputs: &[Output<'_>]) -> Result<Publication> {
        self.publish_with(outputs, &mut |_| Ok(()))
    }

    /// [`OutputRoot::publish`] with a hook called at each step, for crash tests.
    pub fn publish_with(
        &self,
        outputs: &[Output<'_>],
        hook: &mut dyn FnMut(Step) -> Result<()>,
    ) -> Result<Publication> {
        let root = self.fd.as_fd();
        let current = self.current()?;
        self.remove_leftovers(current.as_ref().map(|c| c.0.as_str()))?;
        // A directory whose owner or mode no longer matches (root_owner/root_group changed) makes
        // every file count as changed, so the set is rewritten with the right directories.
        let dirs_ok = match &current {
            Some((_, dir)) => self.same_dirs(dir.as_fd(), outputs),
            None => false,
        };
        let changed: Vec<bool> = outputs
            .iter()
            .map(|o| match &current {
                Some((_, dir)) => !dirs_ok || !same_file(dir.as_fd(), o),
                None => true,
            })
            .collect();
        let top: BTreeSet<String> = outputs
            .iter()
            .map(|o| o.path.components()[0].clone())
            .collect();
        let removed: Vec<String> = match &current {
            Some((_, dir)) => {
                let wanted: BTreeSet<String> = outputs.iter().map(|o| o.path.to_string()).collect();
                list_files(dir.as_fd(), "")?
                    .into_iter()
                    .filter(|f| !wanted.contains(f))
                    .collect()
            }
            None => Vec::new(),
        };
        if current.is_some() && !changed.contains(&true) && removed.is_empty() {
            // Same set: nothing to write. Repair the links in case one was removed by hand.
            self.link_names(&top)?;
            self.unlink_names_except(&top)?;
            return Ok(Publication {
                previous: true,
                changed,
                removed,
            });
        }

        let version = format!("{VERSION_PREFIX}{:016x}", fastrand::u64(..));
        let built = self.build_version(&version, outputs, hook);
        let built = built.and_then(|dir| {
            self.link_names(&top)?;
            hook(Step::Linked)?;
            Ok(dir)
        });
        if let Err(e) = built {
            if let Err(c) = remove_tree(root, &version) {
                log::warn!("cannot remove the unpublished version {version}: {c:#}");
            }
            // Links made for names only the new set has would dangle: remove them. If the
            // published set cannot be listed, leave them (a dangling link reads as "absent")
            // rather than risk removing a live one.
            let keep: Option<BTreeSet<String>> = match &current {
                Some((_, dir)) => entries(dir.as_fd()).ok().map(|v| v.into_iter().collect()),
                None => Some(BTreeSet::new()),
            };
            if let Some(keep) = keep {
                let _ = self.unlink_names_except(&keep);
            }
            return Err(e);
        }

        // The flip: one rename makes the whole new set visible.
        let tmp = format!("{LINK_TMP_PREFIX}{:016x}", fastrand::u64(..));
        symlinkat(version.as_str(), root, tmp.as_str())
            .context("cannot create the new `..data` link")?;
        if let Err(e) = renameat(root, tmp.as_str(), root, DATA_LINK) {
            let _ = unlinkat(root, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            let _ = remove_tree(root, &version);
            return Err(e).context("cannot switch `..data` to the new set");
        }
        if let Err(e) = fsync(root) {
            log::warn!("cannot fsync the output root: {e}");
        }
        hook(Step::Flipped)?;

        // Clean-up: links the new set does not have, then the previous version. The set is
        // published: nothing from here on may fail the run (a leftover is removed next time).
        if let Err(e) = self.unlink_names_except(&top) {
            log::warn!("cannot remove the links of dropped names: {e:#}");
        }
        if let Some((old, _)) = &current
            && let Err(e) = remove_tree(root, old)
        {
            log::warn!("cannot remove the previous version {old}: {e:#}");
        }
        if let Err(e) = fsync(root) {
            log::warn!("cannot fsync the output root: {e}");
        }
        Ok(Publication {
            previous: current.is_some(),
            changed,
            removed,
        })
    }

    /// The published version: the target of `..data`, opened without following links.
    fn current(&self) -> Result<Option<(String, OwnedFd)>> {
        let root = self.fd.as_fd();
        let target = match readlinkat(root, DATA_LINK) {
            Ok(t) => t.to_string_lossy().into_owned(),
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::EINVAL) => bail!(
                "{} exists and is not a symbolic link; remove it",
                self.spec.path.join(DATA_LINK).display()
            ),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read {}", self.spec.path.join(DATA_LINK).display())
                });
            }
        };
        if !target.starts_with(VERSION_PREFIX) || target.contains('/') {
            bail!(
                "{} points to `{target}`, not to a version directory bootsecrets made",
                self.spec.path.join(DATA_LINK).display()
            );
        }
        let shown = self.spec.path.join(&target);
        match openat(root, target.as_str(), dir_flags(), Mode::empty()) {
            Ok(fd) => Ok(Some((target, fd))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot open {}", shown.display())),
        }
    }

    /// Writes every output into a new version directory. Nothing is visible yet.
    fn build_version(
        &self,
        version: &str,
        outputs: &[Output<'_>],
        hook: &mut dyn FnMut(Step) -> Result<()>,
    ) -> Result<OwnedFd> {
        let root = self.fd.as_fd();
        let shown_root = self.spec.path.join(version);
        mkdirat(root, version, Mode::from_bits_truncate(0o700))
            .with_context(|| format!("cannot create {}", shown_root.display()))?;
        let vdir = open_dir(root, version, &shown_root, false)?.0;
        self.own_dir(vdir.as_fd(), &shown_root)?;
        let mut dirs: BTreeMap<Vec<String>, OwnedFd> = BTreeMap::new();
        for out in outputs {
            let (parents, name) = out.path.split();
            let shown = self.spec.path.join(out.path.to_string());
            if !parents.is_empty() && !dirs.contains_key(parents) {
                let mut cur: Option<OwnedFd> = None;
                let mut shown_dir = shown_root.clone();
                for (i, c) in parents.iter().enumerate() {
                    shown_dir.push(c);
                    let parent = cur.as_ref().map(|f| f.as_fd()).unwrap_or(vdir.as_fd());
                    let fd = match dirs.get(&parents[..=i]) {
                        Some(fd) => fd.try_clone().context("cannot duplicate a descriptor")?,
                        None => {
                            let (fd, _) = open_dir(parent, c, &shown_dir, true)?;
                            self.own_dir(fd.as_fd(), &shown_dir)?;
                            dirs.insert(
                                parents[..=i].to_vec(),
                                fd.try_clone().context("cannot duplicate a descriptor")?,
                            );
                            fd
                        }
                    };
                    cur = Some(fd);
                }
            }
            let dir = match dirs.get(parents) {
                Some(fd) => fd.as_fd(),
                None => vdir.as_fd(),
            };
            let fd = openat(
                dir,
                name,
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .with_context(|| format!("cannot create {}", shown.display()))?;
            set_owner_mode(fd.as_fd(), out.uid, out.gid, out.mode, &shown)?;
            let mut file = std::fs::File::from(fd);
            file.write_all(out.value.expose())
                .with_context(|| format!("cannot write {}", shown.display()))?;
            file.sync_all()
                .with_context(|| format!("cannot fsync {}", shown.display()))?;
            hook(Step::Wrote)?;
        }
        for fd in dirs.values() {
            fsync(fd.as_fd()).context("cannot fsync an output directory")?;
        }
        fsync(vdir.as_fd()).context("cannot fsync the new version directory")?;
        Ok(vdir)
    }

    /// True when the version directory and every subdirectory the outputs use have the root's
    /// owner and mode.
    fn same_dirs(&self, vdir: BorrowedFd<'_>, outputs: &[Output<'_>]) -> bool {
        let want = |fd: BorrowedFd<'_>| {
            nix::sys::stat::fstat(fd).is_ok_and(|st| {
                st.st_mode & 0o7777 == self.spec.mode
                    && (st.st_uid, st.st_gid) == (self.spec.uid, self.spec.gid)
            })
        };
        if !want(vdir) {
            return false;
        }
        outputs.iter().all(|o| {
            let (parents, _) = o.path.split();
            let mut cur: Option<OwnedFd> = None;
            for c in parents {
                let parent = cur.as_ref().map(|f| f.as_fd()).unwrap_or(vdir);
                match openat(parent, c.as_str(), dir_flags(), Mode::empty()) {
                    Ok(fd) if want(fd.as_fd()) => cur = Some(fd),
                    _ => return false,
                }
            }
            true
        })
    }

    fn own_dir(&self, fd: BorrowedFd<'_>, shown: &Path) -> Result<()> {
        set_owner_mode(fd, self.spec.uid, self.spec.gid, self.spec.mode, shown)
    }

    /// Makes `NAME -> ..data/NAME` exist for every name, replacing a link with another target
    /// atomically and refusing any entry that is not a symbolic link.
    fn link_names(&self, names: &BTreeSet<String>) -> Result<()> {
        let root = self.fd.as_fd();
        for name in names {
            let target = format!("{DATA_LINK}/{name}");
            let shown = self.spec.path.join(name);
            match readlinkat(root, name.as_str()) {
                Ok(t) if t.as_encoded_bytes() == target.as_bytes() => continue,
                Ok(_) | Err(Errno::ENOENT) => {}
                Err(Errno::EINVAL) => bail!(
                    "{} exists and is not a link bootsecrets manages (a leftover of another                      layout, or planted); remove it",
                    shown.display()
                ),
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot read {}", shown.display()));
                }
            }
            let tmp = format!("{LINK_TMP_PREFIX}{:016x}", fastrand::u64(..));
            symlinkat(target.as_str(), root, tmp.as_str())
                .with_context(|| format!("cannot create the link for {}", shown.display()))?;
            if let Err(e) = renameat(root, tmp.as_str(), root, name.as_str()) {
                let _ = unlinkat(root, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
                return Err(e).with_context(|| format!("cannot link {}", shown.display()));
            }
        }
        Ok(())
    }

    /// Removes the links into `..data` whose names are not in `keep`. Other entries are left.
    fn unlink_names_except(&self, keep: &BTreeSet<String>) -> Result<()> {
        let root = self.fd.as_fd();
        for name in entries(root)? {
            if keep.contains(&name) || is_reserved(&name) {
                continue;
            }
            if let Ok(t) = readlinkat(root, name.as_str())
                && t.as_encoded_bytes()
                    .starts_with(format!("{DATA_LINK}/").as_bytes())
            {
                unlinkat(root, name.as_str(), UnlinkatFlags::NoRemoveDir).with_context(|| {
                    format!("cannot remove {}", self.spec.path.join(&name).display())
                })?;
            }
        }
        Ok(())
    }

    /// Removes what a killed run can leave: version directories other than the published one,
    /// temporary links, and temporary files of the status writer.
    fn remove_leftovers(&self, current: Option<&str>) -> Result<()> {
        let root = self.fd.as_fd();
        for name in entries(root)? {
            if Some(name.as_str()) == current {
                continue;
            }
            if name.starts_with(VERSION_PREFIX) {
                log::debug!("removing the leftover version {name}");
                remove_tree(root, &name)?;
            } else if name.starts_with(LINK_TMP_PREFIX) || name.starts_with(TEMP_PREFIX) {
                unlinkat(root, name.as_str(), UnlinkatFlags::NoRemoveDir)
                    .with_context(|| format!("cannot remove the leftover {name}"))?;
            }
        }
        Ok(())
    }

    /// The current status file, if there is a readable one (at most 16 MiB).
    pub fn read_status(&self) -> Option<Vec<u8>> {
        let fd = openat(
            self.fd.as_fd(),
            STATUS_FILE,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .ok()?;
        let mut buf = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::fs::File::from(fd), 16 << 20),
            &mut buf,
        )
        .ok()?;
        Some(buf)
    }

    /// Writes the status file atomically: a temporary file with mode 0600 and the root's owner,
    /// written and synced, then renamed over `.status.json`.
    pub fn write_status(&self, content: &[u8]) -> Result<()> {
        let root = self.fd.as_fd();
        let shown = self.spec.path.join(STATUS_FILE);
        let tmp = format!("{LINK_TMP_PREFIX}status-{:016x}", fastrand::u64(..));
        let fd = openat(
            root,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("cannot create a temporary file for {}", shown.display()))?;
        let result = (|| {
            set_owner_mode(fd.as_fd(), self.spec.uid, self.spec.gid, 0o600, &shown)?;
            let mut f = std::fs::File::from(fd);
            f.write_all(content)
                .with_context(|| format!("cannot write {}", shown.display()))?;
            f.sync_all()
                .with_context(|| format!("cannot fsync {}", shown.display()))?;
            renameat(root, tmp.as_str(), root, STATUS_FILE)
                .with_context(|| format!("cannot move {} into place", shown.display()))
        })();
        if result.is_err() {
            let _ = unlinkat(root, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        result
    }
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

/// What a publication did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// A set was published before this one.
    pub previous: bool,
    /// Per output, in order: new, or different from the published file (bytes, mode or owner).
    pub changed: Vec<bool>,
    /// Paths of the previous set that the new one no longer has.
    pub removed: Vec<String>,
}

impl Publication {
    /// True when the set on disk changed.
    pub fn any_change(&self) -> bool {
        self.changed.contains(&true) || !self.removed.is_empty()
    }
}

/// Names bootsecrets manages in the root, never used by an output.
fn is_reserved(name: &str) -> bool {
    name.starts_with("..") || name == STATUS_FILE || name.starts_with(TEMP_PREFIX)
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

/// True when the published file equals the output: a regular file with the same mode, owner and
/// bytes. Any doubt (missing, unreadable, a link) counts as different.
fn same_file(vdir: BorrowedFd<'_>, o: &Output<'_>) -> bool {
    let (parents, name) = o.path.split();
    let mut cur: Option<OwnedFd> = None;
    for c in parents {
        let parent = cur.as_ref().map(|f| f.as_fd()).unwrap_or(vdir);
        match openat(parent, c.as_str(), dir_flags(), Mode::empty()) {
            Ok(fd) => cur = Some(fd),
            Err(_) => return false,
        }
    }
    let dir = cur.as_ref().map(|f| f.as_fd()).unwrap_or(vdir);
    let Ok(fd) = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    ) else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(fd.as_fd()) else {
        return false;
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG
        || st.st_mode & 0o7777 != o.mode
        || (st.st_uid, st.st_gid) != (o.uid, o.gid)
        || st.st_size as u64 != o.value.len() as u64
    {
        return false;
    }
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(o.value.len()));
    let mut f = std::fs::File::from(fd);
    if std::io::Read::read_to_end(&mut f, &mut buf).is_err() {
        return false;
    }
    buf.as_slice() == o.value.expose()
}

/// Removes `name` in `parent` and everything below it, never following a symbolic link.
fn remove_tree(parent: BorrowedFd<'_>, name: &str) -> Result<()> {
    match openat(parent, name, dir_flags(), Mode::empty()) {
        Ok(fd) => {
            for e in entries(fd.as_fd())? {
                remove_tree(fd.as_fd(), &e)?;
            }
            match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(e).with_context(|| format!("cannot remove directory {name}")),
            }
        }
        Err(Errno::ENOENT) => Ok(()),
        Err(_) => match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {name}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let p = PathBuf::from(format!(
            "/dev/shm/bootsecrets-unit-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    /// An output owned by the test's own user.
    fn out<'a>(path: &'a RelPath, value: &'a Secret, mode: u32) -> Output<'a> {
        Output {
            path,
            value,
            mode,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    fn spec(path: &Path) -> RootSpec {
        RootSpec {
            lock_wait: std::time::Duration::ZERO,
            path: path.to_path_buf(),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            mode: 0o700,
            allow_non_tmpfs: false,
        }
    }

    #[test]
    fn a_symlinked_root_or_ancestor_is_refused() {
        let real = scratch("real");
        std::fs::create_dir(&real).unwrap();
        let link = scratch("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e1 = OutputRoot::open(&spec(&link)).err().unwrap();
        let e2 = OutputRoot::open(&spec(&link.join("below"))).err().unwrap();
        for e in [e1, e2] {
            assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
        }
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&real).unwrap();
    }

    #[test]
    fn a_disk_root_is_refused_unless_allowed() {
        let dir = std::env::current_dir()
            .unwrap()
            .join("target")
            .join(format!("unit-disk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = spec(&dir);
        let fstype = nix::sys::statfs::statfs("target")
            .unwrap()
            .filesystem_type()
            .0 as i64;
        if fstype == TMPFS_MAGIC || fstype == RAMFS_MAGIC {
            return; // the build directory itself is on tmpfs: nothing to prove here
        }
        let e = OutputRoot::open(&s).err().unwrap();
        assert!(format!("{e:#}").contains("not on tmpfs"), "{e:#}");
        s.allow_non_tmpfs = true;
        OutputRoot::open(&s).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn names(root: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn data_target(root: &Path) -> String {
        std::fs::read_link(root.join(DATA_LINK))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn writes_a_set_through_one_data_link() {
        let root = scratch("set");
        let r = OutputRoot::open(&spec(&root)).unwrap();
        let (a, b) = (
            RelPath::parse("a").unwrap(),
            RelPath::parse("sub/dir/b").unwrap(),
        );
        let (va, vb) = (Secret::new(b"one".to_vec()), Secret::new(b"two".to_vec()));
        let p = r
            .publish(&[out(&a, &va, 0o400), out(&b, &vb, 0o640)])
            .unwrap();
        assert_eq!(p.changed, [true, true]);
        assert!(!p.previous);
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"one");
        assert_eq!(std::fs::read(root.join("sub/dir/b")).unwrap(), b"two");
        assert_eq!(mode(&root.join("a")), 0o400);
        assert_eq!(mode(&root.join("sub/dir/b")), 0o640);
        assert_eq!(mode(&root.join("sub")), 0o700);
        assert_eq!(mode(&root), 0o700);
        let v = data_target(&root);
        assert!(v.starts_with(VERSION_PREFIX), "{v}");
        assert_eq!(mode(&root.join(&v)), 0o700);
        assert_eq!(
            names(&root),
            vec![DATA_LINK.to_string(), v, "a".into(), "sub".into()]
        );
        assert_eq!(
            std::fs::read_link(root.join("a")).unwrap(),
            Path::new("..data/a")
        );
        drop(r);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_unchanged_set_is_not_rewritten_and_changes_are_reported() {
        let root = scratch("unchanged");
        let r = OutputRoot::open(&spec(&root)).unwrap();
        let (a, b, c) = (
            RelPath::parse("a").unwrap(),
            RelPath::parse("b").unwrap(),
            RelPath::parse("c/d").unwrap(),
        );
        let (one, two) = (Secret::new(b"1".to_vec()), Secret::new(b"2".to_vec()));
        r.publish(&[
            out(&a, &one, 0o400),
            out(&b, &one, 0o400),
            out(&c, &one, 0o400),
        ])
        .unwrap();
        let v1 = data_target(&root);
        let p = r
            .publish(&[
                out(&a, &one, 0o400),
                out(&b, &one, 0o400),
                out(&c, &one, 0o400),
            ])
            .unwrap();
        assert!(p.previous && !p.any_change(), "{p:?}");
        assert_eq!(
            data_target(&root),
            v1,
            "an unchanged set must not be flipped"
        );
        // A new value, a new mode, and a dropped file are each a change.
        let p = r
            .publish(&[out(&a, &two, 0o400), out(&b, &one, 0o440)])
            .unwrap();
        assert_eq!(p.changed, [true, true]);
        assert_eq!(p.removed, ["c/d"]);
        assert_ne!(data_target(&root), v1);
        assert!(!root.join(&v1).exists(), "the previous version is removed");
        assert!(
            std::fs::symlink_metadata(root.join("c")).is_err(),
            "the dropped name is unlinked"
        );
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"2");
        drop(r);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_failed_run_leaves_the_previous_set_intact() {
        let root = scratch("rollback");
        let r = OutputRoot::open(&spec(&root)).unwrap();
        let (a, b, c) = (
            RelPath::parse("a").unwrap(),
            RelPath::parse("b").unwrap(),
            RelPath::parse("c").unwrap(),
        );
        let old = Secret::new(b"old".to_vec());
        r.publish(&[out(&a, &old, 0o400), out(&b, &old, 0o400)])
            .unwrap();
        let before = names(&root);
        let new = Secret::new(b"new".to_vec());
        for fail_at in [Step::Wrote, Step::Linked] {
            let mut n = 0;
            let err = r
                .publish_with(
                    &[
                        out(&a, &new, 0o440),
                        out(&b, &new, 0o440),
                        out(&c, &new, 0o440),
                    ],
                    &mut |s| {
                        n += 1;
                        if s == fail_at && n >= 2 {
                            bail!("injected failure at {s:?}")
                        }
                        Ok(())
                    },
                )
                .unwrap_err();
            assert!(format!("{err:#}").contains("injected"), "{err:#}");
            assert_eq!(std::fs::read(root.join("a")).unwrap(), b"old");
            assert_eq!(std::fs::read(root.join("b")).unwrap(), b"old");
            assert_eq!(mode(&root.join("a")), 0o400);
            assert_eq!(names(&root), before, "no new version, no link for `c`");
        }
        drop(r);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_crash_after_the_flip_is_cleaned_up_by_the_next_run() {
        let root = scratch("crash");
        let r = OutputRoot::open(&spec(&root)).unwrap();
        let (a, b) = (RelPath::parse("a").unwrap(), RelPath::parse("b").unwrap());
        let (old, new) = (Secret::new(b"old".to_vec()), Secret::new(b"new".to_vec()));
        r.publish(&[out(&a, &old, 0o400), out(&b, &old, 0o400)])
            .unwrap();
        let v1 = data_target(&root);
        // "Crash" right after the flip: the old version and the link for `b` stay behind.
        r.publish_with(&[out(&a, &new, 0o400)], &mut |s| {
            if s == Step::Flipped {
                bail!("killed")
            }
            Ok(())
        })
        .unwrap_err();
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"new");
        assert!(root.join(&v1).exists());
        assert!(
            std::fs::read(root.join("b")).is_err(),
            "`b` is not in the new set"
        );
        let p = r.publish(&[out(&a, &new, 0o400)]).unwrap();
        assert!(!p.any_change());
        assert!(!root.join(&v1).exists(), "the leftover version is removed");
        assert_eq!(names(&root).len(), 3, "{:?}", names(&root));
        drop(r);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn planted_entries_are_never_written_through() {
        let root = scratch("planted");
        let victim = scratch("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let r = OutputRoot::open(&spec(&root)).unwrap();
        let a = RelPath::parse("a").unwrap();
        let v = Secret::new(b"x".to_vec());
        // A symlink planted under an output name is replaced by our link, never followed.
        std::os::unix::fs::symlink(&victim, root.join("a")).unwrap();
        r.publish(&[out(&a, &v, 0o400)]).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"x");
        // A regular file or a hard link under an output name is refused, and nothing changes.
        let b = RelPath::parse("b").unwrap();
        std::fs::hard_link(&victim, root.join("b")).unwrap();
        let before = data_target(&root);
        let err = r
            .publish(&[out(&a, &v, 0o400), out(&b, &v, 0o400)])
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("not a link bootsecrets manages"),
            "{err:#}"
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(data_target(&root), before);
        // `..data` replaced by a link elsewhere is refused.
        std::fs::remove_file(root.join("b")).unwrap();
        std::fs::remove_file(root.join(DATA_LINK)).unwrap();
        std::os::unix::fs::symlink("/etc", root.join(DATA_LINK)).unwrap();
        let err = r.publish(&[out(&a, &v, 0o400)]).unwrap_err();
        assert!(
            format!("{err:#}").contains("not to a version directory"),
            "{err:#}"
        );
        drop(r);
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_file(&victim).unwrap();
    }

    #[test]
    fn the_status_file_is_private_and_replaced_atomically() {
        let root = scratch("status");
        let r = OutputRoot::open(&spec(&root)).unwrap();
        r.write_status(b"{\"a\":1}").unwrap();
        r.write_status(b"{\"a\":2}").unwrap();
        assert_eq!(std::fs::read(root.join(STATUS_FILE)).unwrap(), b"{\"a\":2}");
        assert_eq!(mode(&root.join(STATUS_FILE)), 0o600);
        assert_eq!(names(&root), vec![STATUS_FILE.to_string()]);
        drop(r);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_second_run_is_locked_out() {
        let root = scratch("lock");
        let r = OutputRoot::open(&spec(&root)).unwrap();
        let e = OutputRoot::open(&spec(&root)).err().unwrap();
        assert!(format!("{e:#}").contains("locked"), "{e:#}");
        drop(r);
        OutputRoot::open(&spec(&root)).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }
}
