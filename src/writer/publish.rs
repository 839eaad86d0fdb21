//! Publishing a set: what changed (from records and `fstatat`, never by reading a file back), the
//! new version directory, the links, and the one `rename` that makes it visible.

use super::cleanup::{prune_tree, remove_tree};
use super::{
    DATA_LINK, FileRecord, KnownSet, LINK_TMP_PREFIX, Output, OutputRoot, Publication, Step,
    VERSION_PREFIX, dir_flags, entries, list_files, open_dir, set_owner_mode,
};
use crate::names::RelPath;
use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat, renameat};
use nix::sys::stat::{Mode, SFlag, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, fsync, symlinkat, unlinkat};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// Called with the publication about to happen, after the new version is complete and linked and
/// before the flip; an error cancels the publication. The runner records the set and the
/// `on_change` actions it will owe here, so a crash right after the flip forgets neither.
pub type BeforeFlip<'a> = &'a mut dyn FnMut(&Publication) -> Result<()>;

impl OutputRoot {
    /// Publishes `outputs` as one set (see the module documentation) and reports what changed.
    /// `known` is what the caller recorded about the published set, if anything.
    pub fn publish(
        &self,
        outputs: &[Output<'_>],
        known: Option<&KnownSet>,
        before_flip: BeforeFlip<'_>,
    ) -> Result<Publication> {
        self.publish_keeping(outputs, &[], known, before_flip)
    }

    /// [`OutputRoot::publish`], keeping the published files of `keep` (paths with no new value:
    /// an optional secret whose fetch failed transiently) in the new set as they are. A kept
    /// file is not copied or read: the new version holds a relative link to it in the version
    /// that holds it, which stays until no published set refers to it. Only paths the published
    /// set has, with a record, are kept ([`Publication::kept`]); the others are dropped.
    pub fn publish_keeping(
        &self,
        outputs: &[Output<'_>],
        keep: &[&RelPath],
        known: Option<&KnownSet>,
        before_flip: BeforeFlip<'_>,
    ) -> Result<Publication> {
        self.publish_with(outputs, keep, known, before_flip, &mut |_| Ok(()))
    }

    /// [`OutputRoot::publish_keeping`] with a hook called at each step, for crash tests.
    pub fn publish_with(
        &self,
        outputs: &[Output<'_>],
        keep: &[&RelPath],
        known: Option<&KnownSet>,
        before_flip: BeforeFlip<'_>,
        hook: &mut dyn FnMut(Step) -> Result<()>,
    ) -> Result<Publication> {
        let root = self.fd.as_fd();
        let current = self.current()?;
        let mut referenced = match &current {
            Some((_, dir)) => kept_versions(dir.as_fd())?,
            None => BTreeSet::new(),
        };
        if let Some((v, _)) = &current {
            referenced.insert(v.clone());
        }
        self.remove_leftovers(&referenced)?;
        let digests: Vec<String> = outputs.iter().map(|o| o.value.sha256_hex()).collect();
        // Records describe the version they were taken of, and no other.
        let known = match (&current, known) {
            (Some((v, _)), Some(k)) if *v == k.version => Some(k),
            _ => None,
        };
        // A directory whose owner or mode no longer matches (root_owner/root_group changed) makes
        // every file count as changed, so the set is rewritten with the right directories.
        let dirs_ok = match &current {
            Some((_, dir)) => self.same_dirs(dir.as_fd(), outputs),
            None => false,
        };
        // What is kept: a path of the published set, recorded, with no new value.
        let kept: Vec<(RelPath, FileRecord, String)> = match (&current, known) {
            (Some((version, dir)), Some(k)) => keep
                .iter()
                .filter(|p| !outputs.iter().any(|o| o.path == **p))
                .filter_map(|p| {
                    let record = k.files.get(&p.to_string())?.clone();
                    let target = kept_target(dir.as_fd(), version, p)?;
                    Some(((*p).clone(), record, target))
                })
                .collect(),
            _ => Vec::new(),
        };
        let changed: Vec<bool> = outputs
            .iter()
            .zip(&digests)
            .map(|(o, digest)| match (&current, known) {
                (Some((_, dir)), Some(k)) => {
                    !dirs_ok || !unchanged(dir.as_fd(), o, digest, k.files.get(&o.path.to_string()))
                }
                _ => true,
            })
            .collect();
        // A file its owner may write, when the owner is not the writer (root), is never taken as
        // unchanged from its record: the owner can change the content within the timestamp tick
        // of the record, or through a mapping, and leave the ctime as recorded. Such a file is
        // written again on every run (a new inode in a new version); it counts as changed only
        // when its value, mode or owner did.
        let me = nix::unistd::geteuid().as_raw();
        let untrusted = outputs.iter().any(|o| o.mode & 0o200 != 0 && o.uid != me);
        let top: BTreeSet<String> = outputs
            .iter()
            .map(|o| o.path.components()[0].clone())
            .chain(kept.iter().map(|(p, _, _)| p.components()[0].clone()))
            .collect();
        let removed: Vec<String> = match &current {
            Some((_, dir)) => {
                let wanted: BTreeSet<String> = outputs
                    .iter()
                    .map(|o| o.path.to_string())
                    .chain(kept.iter().map(|(p, _, _)| p.to_string()))
                    .collect();
                list_files(dir.as_fd(), "")?
                    .into_iter()
                    .filter(|f| !wanted.contains(f))
                    .collect()
            }
            None => Vec::new(),
        };
        if let (Some((version, _)), Some(k)) = (&current, known)
            && !changed.contains(&true)
            && removed.is_empty()
            && !untrusted
        {
            // Same set: nothing to write. Repair the links in case one was removed by hand.
            self.link_names(&top)?;
            self.unlink_names_except(&top)?;
            let records = outputs
                .iter()
                .map(|o| k.files[&o.path.to_string()].clone())
                .collect();
            return Ok(Publication {
                previous: true,
                changed,
                removed,
                version: version.clone(),
                records,
                kept: kept.into_iter().map(|(p, r, _)| (p, r)).collect(),
            });
        }

        if untrusted && !changed.contains(&true) && removed.is_empty() {
            log::debug!(
                "the set is unchanged, but written again: a file's owner may write it, so its \
                 record cannot prove it untouched"
            );
        }
        let version = format!("{VERSION_PREFIX}{:016x}", fastrand::u64(..));
        let prepared = self
            .build_version(&version, outputs, &kept, &digests, hook)
            .and_then(|records| {
                self.link_names(&top)?;
                hook(Step::Linked)?;
                let publication = Publication {
                    previous: current.is_some(),
                    changed,
                    removed,
                    version: version.clone(),
                    records,
                    kept: kept
                        .iter()
                        .map(|(p, r, _)| (p.clone(), r.clone()))
                        .collect(),
                };
                before_flip(&publication)?;
                Ok(publication)
            });
        let publication = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.roll_back(&version, current.as_ref().map(|c| c.1.as_fd()));
                return Err(e);
            }
        };

        // The flip: one rename makes the whole new set visible.
        let tmp = format!("{LINK_TMP_PREFIX}{:016x}", fastrand::u64(..));
        let flipped = symlinkat(version.as_str(), root, tmp.as_str())
            .context("cannot create the new `..data` link")
            .and_then(|()| {
                renameat(root, tmp.as_str(), root, DATA_LINK).map_err(|e| {
                    let _ = unlinkat(root, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
                    anyhow::Error::new(e).context("cannot switch `..data` to the new set")
                })
            });
        if let Err(e) = flipped {
            self.roll_back(&version, current.as_ref().map(|c| c.1.as_fd()));
            return Err(e);
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
        // The previous version goes, unless the new set keeps a file of it (or of one it kept):
        // then only the kept files stay in it (a rotated value does not linger there).
        let still = openat(root, version.as_str(), dir_flags(), Mode::empty())
            .context("cannot open the new version")
            .and_then(|fd| kept_links(fd.as_fd()));
        match still {
            Ok(still) => {
                for old in &referenced {
                    let result = match still.get(old) {
                        Some(files) => prune_tree(root, old, "", files),
                        None => remove_tree(root, old),
                    };
                    if let Err(e) = result {
                        log::warn!("cannot remove the previous version {old}: {e:#}");
                    }
                }
            }
            Err(e) => log::warn!("cannot tell which files the new set keeps: {e:#}"),
        }
        if let Err(e) = fsync(root) {
            log::warn!("cannot fsync the output root: {e}");
        }
        Ok(publication)
    }

    /// Undoes an unpublished version: removes it, and the links made for names only it has. If
    /// the published set cannot be listed, those links stay (a dangling link reads as "absent")
    /// rather than risk removing a live one.
    fn roll_back(&self, version: &str, current: Option<BorrowedFd<'_>>) {
        if let Err(c) = remove_tree(self.fd.as_fd(), version) {
            log::warn!("cannot remove the unpublished version {version}: {c:#}");
        }
        let keep: Option<BTreeSet<String>> = match current {
            Some(dir) => entries(dir).ok().map(|v| v.into_iter().collect()),
            None => Some(BTreeSet::new()),
        };
        if let Some(keep) = keep {
            let _ = self.unlink_names_except(&keep);
        }
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

    /// Writes every output into a new version directory and returns what to record about each
    /// file. Nothing is visible yet.
    fn build_version(
        &self,
        version: &str,
        outputs: &[Output<'_>],
        kept: &[(RelPath, FileRecord, String)],
        digests: &[String],
        hook: &mut dyn FnMut(Step) -> Result<()>,
    ) -> Result<Vec<FileRecord>> {
        let root = self.fd.as_fd();
        let shown_root = self.spec.path.join(version);
        mkdirat(root, version, Mode::from_bits_truncate(0o700))
            .with_context(|| format!("cannot create {}", shown_root.display()))?;
        let vdir = open_dir(root, version, &shown_root, false)?.0;
        self.own_dir(vdir.as_fd(), &shown_root)?;
        let mut dirs: BTreeMap<Vec<String>, OwnedFd> = BTreeMap::new();
        let mut records = Vec::with_capacity(outputs.len());
        for (out, digest) in outputs.iter().zip(digests) {
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
            let st = nix::sys::stat::fstat(file.as_fd())
                .with_context(|| format!("cannot stat {}", shown.display()))?;
            records.push(FileRecord {
                sha256: digest.clone(),
                size: out.value.len() as u64,
                mode: out.mode,
                uid: out.uid,
                gid: out.gid,
                inode: st.st_ino,
                ctime: (st.st_ctime, st.st_ctime_nsec),
            });
            hook(Step::Wrote)?;
        }
        for (path, _, target) in kept {
            let (parents, name) = path.split();
            let mut dir: Option<OwnedFd> = None;
            let mut shown_dir = shown_root.clone();
            for c in parents {
                shown_dir.push(c);
                let parent = dir.as_ref().map(|f| f.as_fd()).unwrap_or(vdir.as_fd());
                let (fd, created) = open_dir(parent, c, &shown_dir, true)?;
                if created {
                    self.own_dir(fd.as_fd(), &shown_dir)?;
                }
                dir = Some(fd);
            }
            let parent = dir.as_ref().map(|f| f.as_fd()).unwrap_or(vdir.as_fd());
            symlinkat(target.as_str(), parent, name).with_context(|| {
                format!(
                    "cannot keep {} in the new set",
                    self.spec.path.join(path.to_string()).display()
                )
            })?;
            if let Some(fd) = dir {
                fsync(fd.as_fd()).context("cannot fsync an output directory")?;
            }
        }
        for fd in dirs.values() {
            fsync(fd.as_fd()).context("cannot fsync an output directory")?;
        }
        fsync(vdir.as_fd()).context("cannot fsync the new version directory")?;
        Ok(records)
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
    pub(super) fn link_names(&self, names: &BTreeSet<String>) -> Result<()> {
        let root = self.fd.as_fd();
        for name in names {
            let target = format!("{DATA_LINK}/{name}");
            let shown = self.spec.path.join(name);
            match readlinkat(root, name.as_str()) {
                Ok(t) if t.as_encoded_bytes() == target.as_bytes() => continue,
                Ok(_) | Err(Errno::ENOENT) => {}
                Err(Errno::EINVAL) => bail!(
                    "{} exists and bootsecrets did not write it: it neither replaces nor \
                     removes another program's file (in /run/credstore, systemd-imds-import \
                     writes the credentials it imports from the user data); give the secret \
                     another path, or remove the file if it is a leftover of another layout",
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
}

/// The link that keeps `path` of the published `version` in a new set: relative, from the new
/// version's directory of `path` up to the root and down into the version that holds the file
/// (the published one, or the one a kept link there already points to). `None` when the
/// published set has no such regular file.
fn kept_target(vdir: BorrowedFd<'_>, version: &str, path: &RelPath) -> Option<String> {
    let (parents, name) = path.split();
    let mut cur: Option<OwnedFd> = None;
    for c in parents {
        let parent = cur.as_ref().map(|f| f.as_fd()).unwrap_or(vdir);
        cur = Some(openat(parent, c.as_str(), dir_flags(), Mode::empty()).ok()?);
    }
    let dir = cur.as_ref().map(|f| f.as_fd()).unwrap_or(vdir);
    let st = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => Some(format!(
            "{}{version}/{path}",
            "../".repeat(parents.len() + 1)
        )),
        // Kept already: the same depth, so the same relative target.
        SFlag::S_IFLNK => {
            let t = readlinkat(dir, name).ok()?.to_string_lossy().into_owned();
            kept_version_of(&t).is_some().then_some(t)
        }
        _ => None,
    }
}

/// The version directory a kept link points into and the file's path in it
/// (`../../..v-X/a/b` -> `(..v-X, a/b)`), if it is one.
fn kept_version_of(target: &str) -> Option<(&str, &str)> {
    let mut rest = target;
    let mut ups = 0;
    while let Some(r) = rest.strip_prefix("../") {
        rest = r;
        ups += 1;
    }
    let (version, path) = rest.split_once('/')?;
    (ups >= 1 && version.starts_with(VERSION_PREFIX) && !path.is_empty()).then_some((version, path))
}

/// The files the kept links under `dir` (a version directory) point to, by the version that
/// holds them.
fn kept_links(dir: BorrowedFd<'_>) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for name in entries(dir)? {
        if let Ok(t) = readlinkat(dir, name.as_str()) {
            if let Some((v, p)) = kept_version_of(&t.to_string_lossy()) {
                out.entry(v.to_string()).or_default().insert(p.to_string());
            }
            continue;
        }
        if let Ok(sub) = openat(dir, name.as_str(), dir_flags(), Mode::empty()) {
            for (v, paths) in kept_links(sub.as_fd())? {
                out.entry(v).or_default().extend(paths);
            }
        }
    }
    Ok(out)
}

/// The versions the kept links under `dir` (a version directory) point into.
fn kept_versions(dir: BorrowedFd<'_>) -> Result<BTreeSet<String>> {
    Ok(kept_links(dir)?.into_keys().collect())
}

/// True when the published file is exactly what `record` says and the record matches the output:
/// same digest, size, mode and owner, and the file still the same inode with the same ctime (so
/// untouched since bootsecrets wrote it: a write, chmod, chown or link would have moved the
/// ctime). Only `fstatat`: the file is never opened, so a file readable by its consumer alone is
/// compared as well as any other. Any doubt counts as changed.
fn unchanged(
    vdir: BorrowedFd<'_>,
    o: &Output<'_>,
    digest: &str,
    record: Option<&FileRecord>,
) -> bool {
    let Some(r) = record else {
        return false;
    };
    if r.sha256 != digest
        || r.size != o.value.len() as u64
        || r.mode != o.mode
        || (r.uid, r.gid) != (o.uid, o.gid)
    {
        return false;
    }
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
    // A kept file is looked at through its link (into the version that holds it).
    let kept = readlinkat(dir, name).is_ok_and(|t| kept_version_of(&t.to_string_lossy()).is_some());
    let flags = if kept {
        AtFlags::empty()
    } else {
        AtFlags::AT_SYMLINK_NOFOLLOW
    };
    let Ok(st) = fstatat(dir, name, flags) else {
        return false;
    };
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
        && st.st_mode & 0o7777 == r.mode
        && (st.st_uid, st.st_gid) == (r.uid, r.gid)
        && st.st_size as u64 == r.size
        && st.st_ino == r.inode
        && (st.st_ctime, st.st_ctime_nsec) == r.ctime
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::names::LOCK_FILE;
    use crate::names::RelPath;
    use crate::secret::Secret;
    use std::os::unix::fs::PermissionsExt;

    fn publish(r: &OutputRoot, outputs: &[Output<'_>], known: Option<&KnownSet>) -> Publication {
        r.publish(outputs, known, &mut |_| Ok(())).unwrap()
    }

    #[test]
    fn a_kept_file_stays_as_it_was_until_a_value_replaces_it() {
        use std::os::unix::fs::MetadataExt;
        let root = scratch("keep");
        let r = OutputRoot::open(&spec(&root)).unwrap();
        let (a, b) = (RelPath::parse("a").unwrap(), RelPath::parse("d/b").unwrap());
        let (one, two) = (Secret::new(b"one".to_vec()), Secret::new(b"two".to_vec()));
        let first = [out(&a, &one, 0o400), out(&b, &one, 0o440)];
        let p1 = publish(&r, &first, None);
        let k1 = known(&p1, &first);
        let b_inode = std::fs::metadata(root.join("d/b")).unwrap().ino();
        // `b` has no new value: kept, through a link into the first version.
        let second = [out(&a, &two, 0o400)];
        let p2 = r
            .publish_keeping(&second, &[&b], Some(&k1), &mut |_| Ok(()))
            .unwrap();
        assert!(p2.removed.is_empty(), "{:?}", p2.removed);
        assert_eq!(p2.kept.len(), 1);
        assert_eq!(p2.kept[0].1, k1.files["d/b"]);
        assert_eq!(std::fs::read(root.join("d/b")).unwrap(), b"one");
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"two");
        assert_eq!(std::fs::metadata(root.join("d/b")).unwrap().ino(), b_inode);
        assert!(
            root.join(&p1.version).is_dir(),
            "the version holding `b` stays"
        );
        // Kept again by a third run: the link still leads to the first version.
        let mut k2 = known(&p2, &second);
        k2.files.insert("d/b".into(), p2.kept[0].1.clone());
        let third = [out(&a, &one, 0o400)];
        let p3 = r
            .publish_keeping(&third, &[&b], Some(&k2), &mut |_| Ok(()))
            .unwrap();
        assert_eq!(std::fs::read(root.join("d/b")).unwrap(), b"one");
        assert!(!root.join(&p2.version).exists() && root.join(&p1.version).is_dir());
        // Its value is back: written, and the first version goes.
        let mut k3 = known(&p3, &third);
        k3.files.insert("d/b".into(), p3.kept[0].1.clone());
        let fourth = [out(&a, &one, 0o400), out(&b, &two, 0o440)];
        let p4 = publish(&r, &fourth, Some(&k3));
        assert_eq!(std::fs::read(root.join("d/b")).unwrap(), b"two");
        assert!(!root.join(&p1.version).exists() && !root.join(&p3.version).exists());
        assert_eq!(p4.kept.len(), 0);
        // A path the published set does not have is not kept.
        let k4 = known(&p4, &fourth);
        let c = RelPath::parse("c").unwrap();
        let p5 = r
            .publish_keeping(&fourth, &[&c], Some(&k4), &mut |_| Ok(()))
            .unwrap();
        assert!(p5.kept.is_empty() && !root.join("c").exists());
        drop(r);
        std::fs::remove_dir_all(&root).unwrap();
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
        let p = publish(&r, &[out(&a, &va, 0o400), out(&b, &vb, 0o640)], None);
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
        assert_eq!(p.version, v);
        assert_eq!(mode(&root.join(&v)), 0o700);
        assert_eq!(
            names(&root),
            vec![
                DATA_LINK.to_string(),
                LOCK_FILE.to_string(),
                v,
                "a".into(),
                "sub".into()
            ]
        );
        assert_eq!(
            std::fs::read_link(root.join("a")).unwrap(),
            Path::new("..data/a")
        );
        // The records describe the files as written.
        let st = std::fs::metadata(root.join("sub/dir/b")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(p.records[1].inode, st.ino());
        assert_eq!(p.records[1].ctime, (st.ctime(), st.ctime_nsec()));
        assert_eq!(p.records[1].sha256, vb.sha256_hex());
        assert_eq!((p.records[1].size, p.records[1].mode), (3, 0o640));
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
        let set = [
            out(&a, &one, 0o400),
            out(&b, &one, 0o400),
            out(&c, &one, 0o400),
        ];
        let p = publish(&r, &set, None);
        let k = known(&p, &set);
        let v1 = data_target(&root);
        let p = publish(&r, &set, Some(&k));
        assert!(p.previous && !p.any_change(), "{p:?}");
        assert_eq!(p.version, v1);
        assert_eq!(known(&p, &set), k, "an unchanged set keeps its records");
        assert_eq!(
            data_target(&root),
            v1,
            "an unchanged set must not be flipped"
        );
        // A new value, a new mode, and a dropped file are each a change.
        let p = publish(&r, &[out(&a, &two, 0o400), out(&b, &one, 0o440)], Some(&k));
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
    fn without_a_matching_record_every_file_counts_as_changed() {
        let root = scratch("records");
        let r = OutputRoot::open(&spec(&root)).unwrap();
        let (a, b) = (RelPath::parse("a").unwrap(), RelPath::parse("b").unwrap());
        let v = Secret::new(b"same".to_vec());
        let set = [out(&a, &v, 0o440), out(&b, &v, 0o440)];
        let p = publish(&r, &set, None);
        let k = known(&p, &set);
        // No record at all (a status file lost or from an older format).
        assert_eq!(publish(&r, &set, None).changed, [true, true]);
        let k2 = known(&publish(&r, &set, Some(&k)), &set);
        // A record of another version directory.
        let mut other = k2.clone();
        other.version = "..v-0000000000000000".into();
        let p = publish(&r, &set, Some(&other));
        assert_eq!(p.changed, [true, true]);
        let k3 = known(&p, &set);
        assert_eq!(publish(&r, &set, Some(&k3)).changed, [false, false]);
        // A file touched since it was written (the owner may chmod it, write, chmod it back):
        // same size, mode and owner, a new ctime.
        let f = root.join("b");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::write(&f, b"evil").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o440)).unwrap();
        let p = publish(&r, &set, Some(&k3));
        assert_eq!(p.changed, [false, true]);
        assert_eq!(std::fs::read(&f).unwrap(), b"same", "repaired");
        // A record whose digest is another value's.
        let mut wrong = known(&p, &set);
        wrong.files.get_mut("a").unwrap().sha256 = Secret::new(b"x".to_vec()).sha256_hex();
        assert_eq!(publish(&r, &set, Some(&wrong)).changed, [true, false]);
        drop(r);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn before_flip_sees_the_coming_set_and_can_cancel_it() {
        let root = scratch("before-flip");
        let r = OutputRoot::open(&spec(&root)).unwrap();
        let a = RelPath::parse("a").unwrap();
        let (old, new) = (Secret::new(b"old".to_vec()), Secret::new(b"new".to_vec()));
        let p = publish(&r, &[out(&a, &old, 0o400)], None);
        let k = known(&p, &[out(&a, &old, 0o400)]);
        let before = names(&root);
        let err = r
            .publish(&[out(&a, &new, 0o400)], Some(&k), &mut |p| {
                assert!(p.previous && p.changed == [true]);
                assert!(root.join(&p.version).is_dir(), "built before the callback");
                assert_eq!(
                    std::fs::read(root.join("a")).unwrap(),
                    b"old",
                    "not flipped yet"
                );
                bail!("cannot record")
            })
            .unwrap_err();
        assert!(format!("{err:#}").contains("cannot record"));
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"old");
        assert_eq!(names(&root), before, "the unpublished version is removed");
        let mut seen = None;
        let p = r
            .publish(&[out(&a, &new, 0o400)], Some(&k), &mut |p| {
                seen = Some(p.version.clone());
                Ok(())
            })
            .unwrap();
        assert_eq!(seen.as_deref(), Some(p.version.as_str()));
        assert_eq!(data_target(&root), p.version);
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
        publish(&r, &[out(&a, &old, 0o400), out(&b, &old, 0o400)], None);
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
                    &[],
                    None,
                    &mut |_| Ok(()),
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
    fn planted_entries_are_never_written_through() {
        let root = scratch("planted");
        let victim = scratch("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let r = OutputRoot::open(&spec(&root)).unwrap();
        let a = RelPath::parse("a").unwrap();
        let v = Secret::new(b"x".to_vec());
        // A symlink planted under an output name is replaced by our link, never followed.
        std::os::unix::fs::symlink(&victim, root.join("a")).unwrap();
        publish(&r, &[out(&a, &v, 0o400)], None);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"x");
        // A regular file or a hard link under an output name is refused, and nothing changes.
        let b = RelPath::parse("b").unwrap();
        std::fs::hard_link(&victim, root.join("b")).unwrap();
        let before = data_target(&root);
        let err = r
            .publish(&[out(&a, &v, 0o400), out(&b, &v, 0o400)], None, &mut |_| {
                Ok(())
            })
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("exists and bootsecrets did not write it"),
            "{err:#}"
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(data_target(&root), before);
        // `..data` replaced by a link elsewhere is refused.
        std::fs::remove_file(root.join("b")).unwrap();
        std::fs::remove_file(root.join(DATA_LINK)).unwrap();
        std::os::unix::fs::symlink("/etc", root.join(DATA_LINK)).unwrap();
        let err = r
            .publish(&[out(&a, &v, 0o400)], None, &mut |_| Ok(()))
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("not to a version directory"),
            "{err:#}"
        );
        drop(r);
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_file(&victim).unwrap();
    }
}
