//! Removing what is no longer published: links of dropped names, version directories a killed
//! run left behind, temporary links and files. Never follows a symbolic link.

use super::{DATA_LINK, LINK_TMP_PREFIX, OutputRoot, VERSION_PREFIX, dir_flags, entries};
use crate::names::{TEMP_PREFIX, is_reserved};
use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};
use std::collections::BTreeSet;
use std::os::fd::{AsFd, BorrowedFd};

impl OutputRoot {
    /// Removes the links into `..data` whose names are not in `keep`. Other entries are left.
    pub(super) fn unlink_names_except(&self, keep: &BTreeSet<String>) -> Result<()> {
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

    /// Removes what a killed run can leave: version directories other than the published one
    /// and those it keeps files of (`keep`), temporary links, and temporary files of the status
    /// writer.
    pub(super) fn remove_leftovers(&self, keep: &BTreeSet<String>) -> Result<()> {
        let root = self.fd.as_fd();
        for name in entries(root)? {
            if keep.contains(&name) {
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
}

/// Removes `name` in `parent` and everything below it, never following a symbolic link.
/// Removes from the directory `name` under `parent` every entry but the files `keep` names
/// (paths relative to it, below `prefix`), and the directories left empty.
pub(super) fn prune_tree(
    parent: BorrowedFd<'_>,
    name: &str,
    prefix: &str,
    keep: &BTreeSet<String>,
) -> Result<()> {
    let fd = openat(parent, name, dir_flags(), Mode::empty())
        .with_context(|| format!("cannot open {name}"))?;
    for e in entries(fd.as_fd())? {
        let rel = if prefix.is_empty() {
            e.clone()
        } else {
            format!("{prefix}/{e}")
        };
        if keep.contains(&rel) {
            continue;
        }
        if keep.iter().any(|k| k.starts_with(&format!("{rel}/"))) {
            prune_tree(fd.as_fd(), &e, &rel, keep)?;
        } else {
            remove_tree(fd.as_fd(), &e)?;
        }
    }
    Ok(())
}

pub(super) fn remove_tree(parent: BorrowedFd<'_>, name: &str) -> Result<()> {
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
    use super::super::testutil::*;
    use super::super::{OutputRoot, Step};
    use crate::names::RelPath;
    use crate::secret::Secret;
    use anyhow::bail;

    #[test]
    fn a_crash_after_the_flip_is_cleaned_up_by_the_next_run() {
        let root = scratch("crash");
        let r = OutputRoot::open(&spec(&root)).unwrap();
        let (a, b) = (RelPath::parse("a").unwrap(), RelPath::parse("b").unwrap());
        let (old, new) = (Secret::new(b"old".to_vec()), Secret::new(b"new".to_vec()));
        r.publish(
            &[out(&a, &old, 0o400), out(&b, &old, 0o400)],
            None,
            &mut |_| Ok(()),
        )
        .unwrap();
        let v1 = data_target(&root);
        // "Crash" right after the flip: the old version and the link for `b` stay behind. What
        // the caller recorded before the flip describes the new set.
        let mut recorded = None;
        r.publish_with(
            &[out(&a, &new, 0o400)],
            &[],
            None,
            &mut |p| {
                recorded = Some(known(p, &[out(&a, &new, 0o400)]));
                Ok(())
            },
            &mut |s| {
                if s == Step::Flipped {
                    bail!("killed")
                }
                Ok(())
            },
        )
        .unwrap_err();
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"new");
        assert!(root.join(&v1).exists());
        assert!(
            std::fs::read(root.join("b")).is_err(),
            "`b` is not in the new set"
        );
        let p = r
            .publish(&[out(&a, &new, 0o400)], recorded.as_ref(), &mut |_| Ok(()))
            .unwrap();
        assert!(!p.any_change(), "the record taken before the flip holds");
        assert!(!root.join(&v1).exists(), "the leftover version is removed");
        assert_eq!(names(&root).len(), 4, "{:?}", names(&root));
        drop(r);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
