//! Output paths and the names bootsecrets reserves in the output root.
//!
//! The plan validates paths with [`RelPath`] and the writer lays them out; both take the reserved
//! names from here, so neither imports the other.

use std::fmt;

/// The symlink whose target is the published version directory.
pub const DATA_LINK: &str = "..data";
/// Version directories are named `..v-<16 hex digits>`.
pub const VERSION_PREFIX: &str = "..v-";
/// Temporary links and files, renamed into place or removed.
pub const LINK_TMP_PREFIX: &str = "..tmp-";
/// The file whose `flock` serialises runs: root's own (mode 0600), so that no consumer who may
/// open the root itself (a `root_group` member) can hold the lock and stall every later run.
pub const LOCK_FILE: &str = "..lock";
/// The status of the last run, in the root (see docs/manifest.md).
pub const STATUS_FILE: &str = ".status.json";
/// Names starting with this are bootsecrets' own temporary files; outputs may not use it.
pub const TEMP_PREFIX: &str = ".bootsecrets-tmp.";

/// Names bootsecrets manages in the root, never used by an output.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with("..") || name == STATUS_FILE || name.starts_with(TEMP_PREFIX)
}

/// A validated output path: one or more normal components, relative to the output root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RelPath(Vec<String>);

impl RelPath {
    pub fn parse(s: &str) -> Result<RelPath, String> {
        if s.is_empty() {
            return Err("is empty".into());
        }
        if s.starts_with('/') {
            return Err("is absolute; output paths are relative to output_root".into());
        }
        if s.contains('\0') {
            return Err("contains a NUL byte".into());
        }
        let mut parts = Vec::new();
        for c in s.split('/') {
            match c {
                "" => return Err("has an empty component (`//` or a trailing `/`)".into()),
                "." | ".." => return Err(format!("has a `{c}` component")),
                _ if c.len() > 255 => return Err("has a component longer than 255 bytes".into()),
                _ if c.starts_with(TEMP_PREFIX) => {
                    return Err(format!("uses the reserved prefix `{TEMP_PREFIX}`"));
                }
                _ if c.starts_with("..") => {
                    return Err(
                        "has a component starting with `..` (reserved for `..data` and the \
                         version directories)"
                            .into(),
                    );
                }
                STATUS_FILE if parts.is_empty() => {
                    return Err(format!("`{}` is reserved for the status file", STATUS_FILE));
                }
                _ => parts.push(c.to_string()),
            }
        }
        Ok(RelPath(parts))
    }

    pub fn components(&self) -> &[String] {
        &self.0
    }

    /// Parent directories (possibly none) and the file name.
    pub fn split(&self) -> (&[String], &str) {
        let (last, dirs) = self.0.split_last().expect("RelPath is never empty");
        (dirs, last)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("/"))
    }
}
