//! The output root: walked from `/` without following links, checked (tmpfs, owner, mode, no
//! ACL), locked, and the home of the status file.

use super::{OutputRoot, RootSpec, STATUS_FILE, dir_flags, open_dir, set_owner_mode};
use crate::names::{LINK_TMP_PREFIX, LOCK_FILE};
use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{Flock, FlockArg, OFlag, openat, renameat};
use nix::sys::stat::{Mode, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// The refusal of a root that is not in memory.
fn not_in_memory(root: &Path, fstype: i64) -> String {
    format!(
        "output root {} is not on tmpfs or ramfs (filesystem type {fstype:#x}); secrets must not \
         reach a disk. Mount a tmpfs there or choose a root under /run (--allow-non-tmpfs exists \
         for development only)",
        root.display()
    )
}

/// True for a `statfs` filesystem type that keeps files in memory only (tmpfs, ramfs).
pub fn in_memory(fstype: i64) -> bool {
    fstype == TMPFS_MAGIC || fstype == RAMFS_MAGIC
}

/// The extended attributes that hold a POSIX ACL beyond the mode bits.
const ACL_XATTRS: [&str; 2] = ["system.posix_acl_access", "system.posix_acl_default"];

/// The ACL attribute `fd` carries, if any. A filesystem without ACL support has none.
fn acl_on(fd: BorrowedFd<'_>) -> Result<Option<&'static str>, Errno> {
    for name in ACL_XATTRS {
        let c = std::ffi::CString::new(name).expect("no NUL in a constant");
        // SAFETY: a size query (null buffer, size 0) on a valid descriptor and C string.
        let n =
            unsafe { nix::libc::fgetxattr(fd.as_raw_fd(), c.as_ptr(), std::ptr::null_mut(), 0) };
        if n >= 0 {
            return Ok(Some(name));
        }
        match Errno::last() {
            Errno::ENODATA | Errno::EOPNOTSUPP => {}
            e => return Err(e),
        }
    }
    Ok(None)
}

/// Opens (creating if needed) the root's lock file: a regular file of the running user's (root on
/// a node) with mode 0600, so that only root can open it, and so lock it. A link there is refused.
fn lock_file(root: BorrowedFd<'_>, shown: &Path) -> Result<OwnedFd> {
    let path = shown.join(LOCK_FILE);
    let fd = openat(
        root,
        LOCK_FILE,
        OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    let st = nix::sys::stat::fstat(fd.as_fd())
        .with_context(|| format!("cannot stat {}", path.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if nix::sys::stat::SFlag::from_bits_truncate(st.st_mode) & nix::sys::stat::SFlag::S_IFMT
        != nix::sys::stat::SFlag::S_IFREG
        || st.st_uid != me
    {
        bail!(
            "{} is not a regular file of uid {me}: someone else put it there; remove it",
            path.display()
        );
    }
    set_owner_mode(fd.as_fd(), me, st.st_gid, 0o600, &path)?;
    Ok(fd)
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
        let stat = |fd: BorrowedFd<'_>, shown: &Path| {
            nix::sys::stat::fstat(fd).with_context(|| format!("cannot stat {}", shown.display()))
        };
        let st = stat(dir.as_fd(), &shown)?;
        crate::credfile::check_dir(&st, "/").map_err(|e| anyhow!("/ {e}"))?;
        for c in ancestors {
            shown.push(c);
            dir = open_dir(dir.as_fd(), c, &shown, false)?.0;
            // A directory someone else controls could swap the root for another between runs.
            let st = stat(dir.as_fd(), &shown)?;
            crate::credfile::check_dir(&st, &shown.display().to_string()).map_err(|e| {
                anyhow!(
                    "output root {}: its ancestor {} {e}",
                    spec.path.display(),
                    shown.display()
                )
            })?;
        }
        shown.push(last);
        // A root that does not exist yet would be made on its parent's filesystem: refused
        // before the `mkdir`, so that a refusal leaves nothing behind on the disk.
        if !spec.allow_non_tmpfs {
            let parent = nix::sys::statfs::fstatfs(dir.as_fd()).with_context(|| {
                format!(
                    "cannot statfs {}",
                    shown.parent().unwrap_or(&shown).display()
                )
            })?;
            let fstype = parent.filesystem_type().0 as i64;
            let missing = matches!(
                fstatat(dir.as_fd(), last.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW),
                Err(Errno::ENOENT)
            );
            if missing && !in_memory(fstype) {
                bail!("{}", not_in_memory(&shown, fstype));
            }
        }
        let (root, created) = open_dir(dir.as_fd(), last, &shown, true)?;
        if !created {
            // Found, not made by this run (even if it appeared a moment ago): someone may have
            // prepared it, so it must already look like a root bootsecrets would make.
            let st = stat(root.as_fd(), &shown)?;
            let me = nix::unistd::geteuid().as_raw();
            if st.st_uid != 0 && st.st_uid != spec.uid && st.st_uid != me {
                bail!(
                    "output root {} exists and is owned by uid {}, not by root or root_owner: \
                     someone else may have prepared it; remove it",
                    shown.display(),
                    st.st_uid
                );
            }
            if st.st_mode & 0o022 != 0 {
                bail!(
                    "output root {} exists and is writable by group or others (mode {:04o}): \
                     someone else may have prepared it; remove it",
                    shown.display(),
                    st.st_mode & 0o7777
                );
            }
        }
        match acl_on(root.as_fd()) {
            Ok(None) => {}
            Ok(Some(attr)) => bail!(
                "output root {} carries a POSIX ACL ({attr}); it would give the secrets to users \
                 their modes do not name. Remove it (setfacl -b {0}) or choose another root",
                shown.display()
            ),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read the ACL of {}", shown.display()));
            }
        }

        let fs = nix::sys::statfs::fstatfs(root.as_fd())
            .with_context(|| format!("cannot statfs {}", shown.display()))?;
        let fstype = fs.filesystem_type().0 as i64;
        if !in_memory(fstype) {
            if !spec.allow_non_tmpfs {
                bail!("{}", not_in_memory(&shown, fstype));
            }
            log::warn!(
                "output root {} is not on tmpfs or ramfs; allowed by --allow-non-tmpfs",
                shown.display()
            );
        }
        set_owner_mode(root.as_fd(), spec.uid, spec.gid, spec.mode, &shown)?;
        let lock = lock_file(root.as_fd(), &shown)?;
        // Another run (a refresh, a manual run) may hold the lock for a while: wait for it, up
        // to `lock_wait`, rather than fail the boot.
        let until = std::time::Instant::now() + spec.lock_wait;
        let mut lock = lock;
        let lock = loop {
            match Flock::lock(lock, FlockArg::LockExclusiveNonblock) {
                Ok(fd) => break fd,
                Err((back, Errno::EWOULDBLOCK)) if std::time::Instant::now() < until => {
                    lock = back;
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err((_, e)) => bail!(
                    "output root {} is locked by another bootsecrets run ({e}; waited {} s for \
                     {}/{LOCK_FILE})",
                    shown.display(),
                    spec.lock_wait.as_secs(),
                    shown.display()
                ),
            }
        };
        Ok(OutputRoot {
            fd: root,
            _lock: lock,
            spec: spec.clone(),
        })
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

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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

    #[test]
    fn a_root_someone_else_prepared_is_refused() {
        let root = scratch("prepared");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = OutputRoot::open(&spec(&root)).err().unwrap();
        assert!(
            format!("{e:#}").contains("writable by group or others"),
            "{e:#}"
        );
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        OutputRoot::open(&spec(&root)).unwrap();
        assert_eq!(mode(&root), 0o700, "a root it accepts gets the root mode");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_root_with_an_acl_is_refused_even_when_inherited() {
        let parent = scratch("acl");
        std::fs::create_dir(&parent).unwrap();
        let c = std::ffi::CString::new(parent.to_str().unwrap()).unwrap();
        let attr = std::ffi::CString::new("system.posix_acl_default").unwrap();
        // A default ACL granting user 65534 read: header, USER_OBJ, USER 65534, GROUP_OBJ, MASK,
        // OTHER (the kernel's xattr format, version 2).
        let mut acl = vec![2u8, 0, 0, 0];
        for (tag, perm, id) in [
            (0x01u16, 7u16, u32::MAX),
            (0x02, 4, 65534),
            (0x04, 0, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        // SAFETY: valid C strings and buffer.
        let rc = unsafe {
            nix::libc::setxattr(c.as_ptr(), attr.as_ptr(), acl.as_ptr().cast(), acl.len(), 0)
        };
        if rc != 0 {
            eprintln!("skipped: this tmpfs takes no ACL ({})", Errno::last());
            return;
        }
        // The root bootsecrets creates inherits the parent's default ACL: refused all the same.
        let e = OutputRoot::open(&spec(&parent.join("root"))).err().unwrap();
        assert!(format!("{e:#}").contains("POSIX ACL"), "{e:#}");
        let e = OutputRoot::open(&spec(&parent)).err().unwrap();
        assert!(format!("{e:#}").contains("POSIX ACL"), "{e:#}");
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn the_status_file_is_private_and_replaced_atomically() {
        let root = scratch("status");
        let r = OutputRoot::open(&spec(&root)).unwrap();
        r.write_status(b"{\"a\":1}").unwrap();
        r.write_status(b"{\"a\":2}").unwrap();
        assert_eq!(std::fs::read(root.join(STATUS_FILE)).unwrap(), b"{\"a\":2}");
        assert_eq!(mode(&root.join(STATUS_FILE)), 0o600);
        assert_eq!(
            names(&root),
            vec![LOCK_FILE.to_string(), STATUS_FILE.to_string()]
        );
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
