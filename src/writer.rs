//! The output writer: a tmpfs root, walked with `openat(O_NOFOLLOW)`, and a set of files
//! published only once every one of them has been written in full.
//!
//! * The root's path is opened component by component from `/` with `O_NOFOLLOW | O_DIRECTORY`:
//!   a symlink anywhere on the way is refused by the kernel, not by a path check.
//! * The root must be on tmpfs or ramfs (`fstatfs`) unless the caller explicitly allows otherwise.
//! * The root (and any subdirectory bootsecrets creates in it) gets the plan's mode and owner.
//! * Each file is staged as `.bootsecrets-tmp.*` in its final directory: created with mode 0000,
//!   `fchmod`ed and `fchown`ed to its final mode and owner before the first byte, written,
//!   `fsync`ed. Only when every file of the set is staged are they moved into place (existing
//!   targets swapped with `RENAME_EXCHANGE`, new ones created with `RENAME_NOREPLACE`), then each
//!   directory is `fsync`ed. If anything fails, every file already moved is swapped back and every
//!   staged file removed: a failed run leaves the previous set exactly as it was.
//! * An existing target that is a symlink, a directory or anything but a regular file is refused.
//!   A rename replaces the directory entry and never writes through it.
//! * An exclusive `flock` on the root serialises concurrent runs; stale temporary files left by a
//!   killed run are removed.

use crate::plan::{RelPath, TEMP_PREFIX};
use crate::secret::Secret;
use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::{Mode, SFlag, fchmod, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fsync, unlinkat};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

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
        for c in ancestors {
            shown.push(c);
            dir = open_dir(dir.as_fd(), c, &shown, false)?.0;
        }
        shown.push(last);
        let (root, _) = open_dir(dir.as_fd(), last, &shown, true)?;

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
        let fd = Flock::lock(root, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            anyhow!(
                "output root {} is locked by another bootsecrets run ({e})",
                shown.display()
            )
        })?;
        Ok(OutputRoot {
            fd,
            spec: spec.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.spec.path
    }

    /// Opens (creating as needed) the directory `comps` below the root.
    fn subdir(&self, comps: &[String]) -> Result<Option<OwnedFd>> {
        if comps.is_empty() {
            return Ok(None);
        }
        let mut shown = self.spec.path.clone();
        let mut cur: Option<OwnedFd> = None;
        for c in comps {
            shown.push(c);
            let parent = cur.as_ref().map(|f| f.as_fd()).unwrap_or(self.fd.as_fd());
            let (fd, _) = open_dir(parent, c, &shown, true)?;
            set_owner_mode(
                fd.as_fd(),
                self.spec.uid,
                self.spec.gid,
                self.spec.mode,
                &shown,
            )?;
            cur = Some(fd);
        }
        Ok(cur)
    }

    /// Publishes `outputs` as one set: [`OutputRoot::stage`] then [`StagedSet::commit`].
    pub fn publish(&self, outputs: &[Output<'_>]) -> Result<()> {
        self.stage(outputs)?.commit()
    }

    /// Writes every output to a temporary file next to its target, with its final owner and mode
    /// set before the first byte. Nothing is visible under a target name yet. If this fails, or
    /// the returned set is dropped without [`StagedSet::commit`], every staged file is removed.
    pub fn stage(&self, outputs: &[Output<'_>]) -> Result<StagedSet<'_>> {
        let mut set = StagedSet {
            root: self,
            dirs: Vec::new(),
            files: Vec::new(),
        };
        let mut dir_index: BTreeMap<Vec<String>, usize> = BTreeMap::new();
        for out in outputs {
            let (parents, name) = out.path.split();
            let idx = match dir_index.get(parents) {
                Some(&i) => i,
                None => {
                    set.dirs.push(self.subdir(parents)?);
                    let i = set.dirs.len() - 1;
                    dir_index.insert(parents.to_vec(), i);
                    self.remove_stale(self.dir_fd(&set.dirs[i]), parents)?;
                    i
                }
            };
            let dir = self.dir_fd(&set.dirs[idx]);
            let shown = self.spec.path.join(out.path.to_string());
            let replaces = check_target(dir, name, &shown)?;
            let tmp = format!(
                "{TEMP_PREFIX}{}.{:016x}",
                std::process::id(),
                fastrand::u64(..)
            );
            let fd = openat(
                dir,
                tmp.as_str(),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .with_context(|| {
                format!("cannot create a temporary file next to {}", shown.display())
            })?;
            set.files.push(Staged {
                dir: idx,
                tmp,
                name: name.to_string(),
                shown: shown.clone(),
                replaces,
                state: State::Staged,
            });
            set_owner_mode(fd.as_fd(), out.uid, out.gid, out.mode, &shown)?;
            let mut file = std::fs::File::from(fd);
            file.write_all(out.value.expose())
                .with_context(|| format!("cannot write {}", shown.display()))?;
            file.sync_all()
                .with_context(|| format!("cannot fsync {}", shown.display()))?;
        }
        Ok(set)
    }
    fn dir_fd<'a>(&'a self, d: &'a Option<OwnedFd>) -> BorrowedFd<'a> {
        d.as_ref().map(|f| f.as_fd()).unwrap_or(self.fd.as_fd())
    }

    /// Removes temporary files a killed run left behind (we hold the lock: none is in use).
    fn remove_stale(&self, dir: BorrowedFd<'_>, comps: &[String]) -> Result<()> {
        let mut d = nix::dir::Dir::openat(dir, ".", dir_flags(), Mode::empty())
            .context("cannot list an output directory")?;
        let stale: Vec<std::ffi::CString> = d
            .iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_bytes().starts_with(TEMP_PREFIX.as_bytes()))
            .map(|e| e.file_name().to_owned())
            .collect();
        for name in stale {
            log::debug!(
                "removing stale temporary file {}/{}",
                self.spec.path.join(comps.join("/")).display(),
                name.to_string_lossy()
            );
            unlinkat(dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir)
                .context("cannot remove a stale temporary file")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The new content is under the temporary name.
    Staged,
    /// Swapped into place; the temporary name holds the previous file if `replaces`.
    Committed,
    /// Nothing is left under the temporary name.
    Gone,
}

struct Staged {
    dir: usize,
    tmp: String,
    name: String,
    shown: PathBuf,
    /// A regular file existed under `name` when staging checked it.
    replaces: bool,
    state: State,
}

/// A set of staged files, not yet visible. Dropping it without committing removes them.
pub struct StagedSet<'r> {
    root: &'r OutputRoot,
    dirs: Vec<Option<OwnedFd>>,
    files: Vec<Staged>,
}

impl StagedSet<'_> {
    fn dir(&self, i: usize) -> BorrowedFd<'_> {
        self.root.dir_fd(&self.dirs[i])
    }

    /// Moves every staged file into place. A target that existed is swapped with its new version
    /// (`renameat2(RENAME_EXCHANGE)`), so the previous file stays under the temporary name until
    /// the whole set is in; a new target is created with `RENAME_NOREPLACE`, so a file that
    /// appeared since staging is never clobbered. If any step fails, the files already moved are
    /// swapped back (or moved back), leaving the previous set exactly as it was.
    pub fn commit(mut self) -> Result<()> {
        let mut failure = None;
        for i in 0..self.files.len() {
            let f = &self.files[i];
            let flags = if f.replaces {
                RenameFlags::RENAME_EXCHANGE
            } else {
                RenameFlags::RENAME_NOREPLACE
            };
            let dir = self.dir(f.dir);
            match renameat2(dir, f.tmp.as_str(), dir, f.name.as_str(), flags) {
                Ok(()) => self.files[i].state = State::Committed,
                Err(e) => {
                    failure = Some(anyhow::Error::new(e).context(format!(
                        "cannot move {} into place{}",
                        f.shown.display(),
                        if f.replaces {
                            ""
                        } else {
                            " (a file appeared there since staging?)"
                        }
                    )));
                    break;
                }
            }
        }
        if let Some(err) = failure {
            let mut unrestored = Vec::new();
            for i in (0..self.files.len()).rev() {
                let f = &self.files[i];
                if f.state != State::Committed {
                    continue;
                }
                let dir = self.dir(f.dir);
                let back = if f.replaces {
                    renameat2(
                        dir,
                        f.tmp.as_str(),
                        dir,
                        f.name.as_str(),
                        RenameFlags::RENAME_EXCHANGE,
                    )
                } else {
                    renameat2(
                        dir,
                        f.name.as_str(),
                        dir,
                        f.tmp.as_str(),
                        RenameFlags::RENAME_NOREPLACE,
                    )
                };
                match back {
                    Ok(()) => self.files[i].state = State::Staged,
                    Err(e) => unrestored.push(format!("{} ({e})", f.shown.display())),
                }
            }
            if !unrestored.is_empty() {
                return Err(err.context(format!(
                    "and restoring the previous version failed for: {}",
                    unrestored.join(", ")
                )));
            }
            return Err(err); // Drop removes the staged files
        }
        // The whole set is in place. Remove the previous versions and sync the directories.
        for i in 0..self.files.len() {
            let f = &self.files[i];
            if f.replaces
                && let Err(e) =
                    unlinkat(self.dir(f.dir), f.tmp.as_str(), UnlinkatFlags::NoRemoveDir)
            {
                log::warn!(
                    "cannot remove the previous version of {}: {e}",
                    f.shown.display()
                );
            }
            self.files[i].state = State::Gone;
        }
        for i in 0..self.dirs.len() {
            if let Err(e) = fsync(self.dir(i)) {
                log::warn!("cannot fsync an output directory: {e}");
            }
        }
        if let Err(e) = fsync(self.root.fd.as_fd()) {
            log::warn!("cannot fsync the output root: {e}");
        }
        Ok(())
    }
}

impl Drop for StagedSet<'_> {
    fn drop(&mut self) {
        for f in &self.files {
            if f.state != State::Gone {
                let _ = unlinkat(self.dir(f.dir), f.tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            }
        }
    }
}

/// The target may be absent (false) or a regular file (true); anything else is refused.
fn check_target(dir: BorrowedFd<'_>, name: &str, shown: &Path) -> Result<bool> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot stat {}", shown.display())),
        Ok(st) => {
            let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            if kind == SFlag::S_IFREG {
                Ok(true)
            } else if kind == SFlag::S_IFLNK {
                bail!(
                    "{} is a symbolic link; bootsecrets refuses symlinks under the output root",
                    shown.display()
                )
            } else if kind == SFlag::S_IFDIR {
                bail!("{} is a directory", shown.display())
            } else {
                bail!("{} exists and is not a regular file", shown.display())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

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
            path: path.to_path_buf(),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            mode: 0o700,
            allow_non_tmpfs: false,
        }
    }

    #[test]
    fn writes_a_set_with_modes_and_leaves_no_temp_files() {
        let root = scratch("set");
        let r = OutputRoot::open(&spec(&root)).unwrap();
        let (a, b) = (
            RelPath::parse("a").unwrap(),
            RelPath::parse("sub/dir/b").unwrap(),
        );
        let (va, vb) = (Secret::new(b"one".to_vec()), Secret::new(b"two".to_vec()));
        r.publish(&[out(&a, &va, 0o400), out(&b, &vb, 0o640)])
            .unwrap();
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"one");
        assert_eq!(std::fs::read(root.join("sub/dir/b")).unwrap(), b"two");
        let m = |p: &str| {
            std::fs::metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(m("a"), 0o400);
        assert_eq!(m("sub/dir/b"), 0o640);
        assert_eq!(m("sub"), 0o700);
        assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o7777, 0o700);
        let names: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        drop(r);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_planted_symlink_fails_the_set_and_removes_staged_files() {
        let root = scratch("symlink");
        let r = OutputRoot::open(&spec(&root)).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", root.join("b")).unwrap();
        let (a, b) = (RelPath::parse("a").unwrap(), RelPath::parse("b").unwrap());
        let v = Secret::new(b"x".to_vec());
        let err = r
            .publish(&[
                Output {
                    path: &a,
                    value: &v,
                    mode: 0o400,
                    uid: 0,
                    gid: 0,
                },
                Output {
                    path: &b,
                    value: &v,
                    mode: 0o400,
                    uid: 0,
                    gid: 0,
                },
            ])
            .unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        let names: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("b")]);
        drop(r);
        std::fs::remove_dir_all(&root).unwrap();
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

    #[test]
    fn a_failed_commit_restores_the_previous_set() {
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
        let new = Secret::new(b"new".to_vec());
        let staged = r
            .stage(&[
                out(&a, &new, 0o440),
                out(&b, &new, 0o440),
                out(&c, &new, 0o440),
            ])
            .unwrap();
        // Something creates `c` between staging and commit: RENAME_NOREPLACE refuses to clobber it,
        // after `a` and `b` were already swapped in; they must be swapped back.
        std::fs::write(root.join("c"), b"foreign").unwrap();
        let err = staged.commit().unwrap_err();
        assert!(format!("{err:#}").contains("cannot move"), "{err:#}");
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"old");
        assert_eq!(std::fs::read(root.join("b")).unwrap(), b"old");
        assert_eq!(std::fs::read(root.join("c")).unwrap(), b"foreign");
        assert_eq!(
            std::fs::metadata(root.join("a"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o400
        );
        assert_eq!(names(&root), vec!["a", "b", "c"]);
        // And a successful commit replaces both and leaves no previous versions behind.
        std::fs::remove_file(root.join("c")).unwrap();
        r.publish(&[out(&a, &new, 0o440), out(&b, &new, 0o440)])
            .unwrap();
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"new");
        assert_eq!(names(&root), vec!["a", "b"]);
        drop(r);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_dropped_staged_set_leaves_nothing() {
        let root = scratch("drop");
        let r = OutputRoot::open(&spec(&root)).unwrap();
        let a = RelPath::parse("x/a").unwrap();
        let v = Secret::new(b"v".to_vec());
        let staged = r.stage(&[out(&a, &v, 0o400)]).unwrap();
        assert_eq!(names(&root.join("x")).len(), 1);
        drop(staged);
        assert!(names(&root.join("x")).is_empty());
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
