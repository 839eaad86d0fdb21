//! Users and groups by name and by id, resolved the way the node's OS defines them, without
//! glibc's NSS.
//!
//! The release binary is static, and a static glibc loads NSS modules (`libnss_systemd.so.2`,
//! `libnss_usrfiles.so.2`, ...) built for the system's shared glibc: calling into one can crash
//! the process (seen: SIGSEGV on `group: files systemd` for a name not in `/etc/group`). So
//! bootsecrets never asks NSS. It reads `/etc/nsswitch.conf`'s `passwd:` and `group:` lines and
//! looks in the sources they name, in order, itself:
//!
//! * `files` (and `compat`, without its `+`/`-` entries): `/etc/passwd`, `/etc/group`;
//! * `usrfiles` (Flatcar): `/usr/share/baselayout/passwd` and `/group`, then `/usr/etc/` (openSUSE);
//! * `altfiles` (Fedora CoreOS, RHEL for Edge): `/usr/lib/passwd`, `/usr/lib/group`;
//! * `systemd` (systemd's user database): the JSON drop-in records (`NAME.user`, `NAME.group`,
//!   `ID.user`, `ID.group` in `/etc/userdb`, `/run/userdb`, `/run/host/userdb`,
//!   `/usr/local/lib/userdb`, `/usr/lib/userdb`), then `io.systemd.UserDatabase` over Varlink at
//!   the multiplexer socket of `systemd-userdbd` (dynamic users, homed, machined), then the two
//!   records nss-systemd synthesises, `root` (0) and `nobody` (65534).
//!
//! Any other source (`sss`, `ldap`, `winbind`, ...) is not queried, and a name not found
//! elsewhere is refused with a message that names it and says to use the numeric id. A
//! `[NOTFOUND=return]` action after a source ends the search there, as glibc does.

use crate::varlink::{self, Reply};
use std::path::PathBuf;
use std::time::Duration;

/// How long the user database's Varlink service may take to answer one lookup.
pub const USERDB_TIMEOUT: Duration = Duration::from_secs(2);

/// The multiplexer socket of `systemd-userdbd`, relative to the root.
const USERDB_MULTIPLEXER: &str = "run/systemd/userdb/io.systemd.Multiplexer";

/// The directories of userdb drop-in records, in systemd's order of precedence.
const USERDB_DIRS: [&str; 5] = [
    "etc/userdb",
    "run/userdb",
    "run/host/userdb",
    "usr/local/lib/userdb",
    "usr/lib/userdb",
];

/// The database: users (`passwd`) or groups (`group`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Passwd,
    Group,
}

impl Db {
    fn nss_name(self) -> &'static str {
        match self {
            Db::Passwd => "passwd",
            Db::Group => "group",
        }
    }

    /// `user` or `group`, as messages say it.
    pub fn what(self) -> &'static str {
        match self {
            Db::Passwd => "user",
            Db::Group => "group",
        }
    }

    /// The userdb drop-in extension and the record's name and id fields.
    fn userdb(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Db::Passwd => ("user", "userName", "uid"),
            Db::Group => ("group", "groupName", "gid"),
        }
    }
}

/// What to look for.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    Name(&'a str),
    Id(u32),
}

/// A user or group found: its name and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub id: u32,
}

/// Where lookups look: the root of the file system (`/` on a node; a directory in tests).
#[derive(Debug, Clone)]
pub struct Places {
    pub root: PathBuf,
}

impl Places {
    pub fn system() -> Places {
        Places { root: "/".into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

/// One source named in nsswitch.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// Files in the `passwd`/`group` format, relative to the root.
    Files(Vec<String>),
    /// `compat`: the files, without NIS's `+`/`-` entries.
    Compat,
    Systemd,
    /// A module bootsecrets does not read.
    Other(String),
}

/// The sources `db` is looked up in, each with whether a `[NOTFOUND=return]` follows it.
fn sources(places: &Places, db: Db) -> Result<Vec<(Source, bool)>, String> {
    let conf = places.path("etc/nsswitch.conf");
    let text = match std::fs::read_to_string(&conf) {
        Ok(t) => t,
        // glibc's default without the file (or without the line): files.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(format!(
                "cannot read {}: {}",
                conf.display(),
                crate::error::describe_io(&e)
            ));
        }
    };
    Ok(parse_sources(&text, db))
}

fn parse_sources(text: &str, db: Db) -> Vec<(Source, bool)> {
    let line = text.lines().find_map(|l| {
        let l = l.split('#').next().unwrap_or("");
        let (k, v) = l.split_once(':')?;
        (k.trim() == db.nss_name()).then(|| v.to_string())
    });
    let Some(line) = line else {
        return vec![(files_of("files", db), false)];
    };
    let mut out: Vec<(Source, bool)> = Vec::new();
    let mut rest = line.as_str();
    while let Some(c) = rest.trim_start().chars().next() {
        rest = rest.trim_start();
        if c == '[' {
            let end = rest.find(']').map_or(rest.len(), |i| i + 1);
            let action = rest[1..end.saturating_sub(1).max(1)].to_ascii_lowercase();
            // `[NOTFOUND=return]` (and `[!SUCCESS=return]`, which includes it) after a source.
            let returns = action.split_whitespace().any(|a| {
                let a = a.replace(' ', "");
                a == "notfound=return" || a == "!success=return"
            });
            if returns && let Some(last) = out.last_mut() {
                last.1 = true;
            }
            rest = &rest[end..];
            continue;
        }
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '[')
            .unwrap_or(rest.len());
        let name = &rest[..end];
        rest = &rest[end..];
        out.push((files_of(name, db), false));
    }
    out
}

fn files_of(module: &str, db: Db) -> Source {
    let f = db.nss_name();
    match module {
        "files" => Source::Files(vec![format!("etc/{f}")]),
        "compat" => Source::Compat,
        "usrfiles" => Source::Files(vec![
            format!("usr/share/baselayout/{f}"),
            format!("usr/etc/{f}"),
        ]),
        "altfiles" => Source::Files(vec![format!("usr/lib/{f}")]),
        "systemd" => Source::Systemd,
        other => Source::Other(other.to_string()),
    }
}

/// What a lookup found, and where it looked.
#[derive(Debug)]
pub struct Lookup {
    pub found: Option<Entry>,
    /// The places searched, as shown in messages.
    pub searched: Vec<String>,
    /// Sources nsswitch.conf names that bootsecrets does not read (`sss`, `ldap`, ...).
    pub unread: Vec<String>,
}

impl Lookup {
    /// The refusal of a name that was not found, naming where it was looked for.
    pub fn not_found(&self, db: Db, name: &str) -> String {
        let mut m = format!(
            "{} `{name}` does not exist (looked in {})",
            db.what(),
            self.searched.join(", ")
        );
        if !self.unread.is_empty() {
            m += &format!(
                "; /etc/nsswitch.conf also names {}, which bootsecrets does not query (it loads \
                 no NSS module): give the numeric id instead",
                self.unread
                    .iter()
                    .map(|u| format!("`{u}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        m
    }
}

/// Looks `key` up in `db`, in the sources nsswitch.conf names, in order.
pub fn lookup(places: &Places, db: Db, key: Key<'_>) -> Result<Lookup, String> {
    let mut l = Lookup {
        found: None,
        searched: Vec::new(),
        unread: Vec::new(),
    };
    for (source, returns) in sources(places, db)? {
        let found = match &source {
            Source::Files(files) => {
                let mut hit = None;
                for f in files {
                    if let Some(e) = in_file(places, f, key, false, &mut l)? {
                        hit = Some(e);
                        break;
                    }
                }
                hit
            }
            Source::Compat => {
                in_file(places, &format!("etc/{}", db.nss_name()), key, true, &mut l)?
            }
            Source::Systemd => in_userdb(places, db, key, &mut l)?,
            Source::Other(m) => {
                if !l.unread.contains(m) {
                    l.unread.push(m.clone());
                }
                None
            }
        };
        if found.is_some() {
            l.found = found;
            return Ok(l);
        }
        if returns {
            break;
        }
    }
    Ok(l)
}

/// Searches one file in the `passwd`/`group` format (`name:x:id:...`).
fn in_file(
    places: &Places,
    rel: &str,
    key: Key<'_>,
    compat: bool,
    l: &mut Lookup,
) -> Result<Option<Entry>, String> {
    let path = places.path(rel);
    l.searched.push(format!("/{rel}"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read /{rel}: {}",
                crate::error::describe_io(&e)
            ));
        }
    };
    for line in text.lines() {
        if line.starts_with('#') || (compat && (line.starts_with('+') || line.starts_with('-'))) {
            continue;
        }
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let Ok(id) = id.trim().parse::<u32>() else {
            continue;
        };
        let hit = match key {
            Key::Name(n) => name == n,
            Key::Id(i) => id == i,
        };
        if hit && !name.is_empty() {
            return Ok(Some(Entry {
                name: name.to_string(),
                id,
            }));
        }
    }
    Ok(None)
}

/// systemd's user database: drop-in records, then the Varlink multiplexer, then the records
/// nss-systemd synthesises.
fn in_userdb(
    places: &Places,
    db: Db,
    key: Key<'_>,
    l: &mut Lookup,
) -> Result<Option<Entry>, String> {
    let (ext, name_field, id_field) = db.userdb();
    let stem = match key {
        Key::Name(n) if valid_record_name(n) => n.to_string(),
        Key::Name(_) => String::new(),
        Key::Id(i) => i.to_string(),
    };
    let matches = |e: &Entry| match key {
        Key::Name(n) => e.name == n,
        Key::Id(i) => e.id == i,
    };
    for dir in USERDB_DIRS {
        if stem.is_empty() {
            break;
        }
        let rel = format!("{dir}/{stem}.{ext}");
        let path = places.path(&rel);
        match std::fs::read(&path) {
            Ok(bytes) => {
                if let Some(e) = record_entry(
                    &serde_json::from_slice(&bytes).unwrap_or_default(),
                    name_field,
                    id_field,
                ) && matches(&e)
                {
                    return Ok(Some(e));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "cannot read /{rel}: {}",
                    crate::error::describe_io(&e)
                ));
            }
        }
    }
    l.searched
        .push("systemd's user database (userdb records, systemd-userdbd)".to_string());
    let (method, mut params) = match db {
        Db::Passwd => (
            "io.systemd.UserDatabase.GetUserRecord",
            serde_json::Map::new(),
        ),
        Db::Group => (
            "io.systemd.UserDatabase.GetGroupRecord",
            serde_json::Map::new(),
        ),
    };
    match key {
        Key::Name(n) => params.insert(name_field.into(), n.into()),
        Key::Id(i) => params.insert(id_field.into(), i.into()),
    };
    params.insert("service".into(), "io.systemd.Multiplexer".into());
    match varlink::call(
        &places.path(USERDB_MULTIPLEXER),
        method,
        serde_json::Value::Object(params),
        USERDB_TIMEOUT,
    ) {
        Ok(Reply::Ok(p)) => {
            if let Some(e) = p
                .get("record")
                .and_then(|r| record_entry(r, name_field, id_field))
                && matches(&e)
            {
                return Ok(Some(e));
            }
        }
        // NoRecordFound, or a service that cannot answer: not there.
        Ok(Reply::Error(_)) | Err(varlink::CallError::Absent(_)) => {}
        Err(varlink::CallError::Failed(m)) => log::debug!("{m}; counted as not found"),
    }
    // nss-systemd's own: root and nobody exist even where no file names them.
    let synthesised = [("root", 0), ("nobody", 65534)];
    Ok(synthesised
        .iter()
        .map(|(n, i)| Entry {
            name: n.to_string(),
            id: *i,
        })
        .find(|e| matches(e)))
}

/// A user record's name and id (`userName`/`uid`, `groupName`/`gid`).
fn record_entry(v: &serde_json::Value, name_field: &str, id_field: &str) -> Option<Entry> {
    Some(Entry {
        name: v.get(name_field)?.as_str()?.to_string(),
        id: u32::try_from(v.get(id_field)?.as_u64()?).ok()?,
    })
}

/// A name that can be a drop-in file's stem: no `/`, not `.` or `..`, not empty.
fn valid_record_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains('/') && !n.contains('\0')
}

/// The id of user or group `name`, or the refusal: `user `x` does not exist (looked in ...)`.
pub fn id_of(db: Db, name: &str) -> Result<u32, String> {
    let l = lookup(&Places::system(), db, Key::Name(name))
        .map_err(|e| format!("cannot look up {} `{name}`: {e}", db.what()))?;
    match l.found {
        Some(e) => Ok(e.id),
        None => Err(l.not_found(db, name)),
    }
}

/// The name of user or group `id`, if any source has one.
pub fn name_of(db: Db, id: u32) -> Option<String> {
    lookup(&Places::system(), db, Key::Id(id))
        .ok()?
        .found
        .map(|e| e.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(name: &str, files: &[(&str, &str)]) -> Places {
        let root = PathBuf::from(format!(
            "/dev/shm/bootsecrets-unit-{}-accounts-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        for (rel, text) in files {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        Places { root }
    }

    fn find(p: &Places, db: Db, key: Key<'_>) -> Option<Entry> {
        lookup(p, db, key).unwrap().found
    }

    fn e(name: &str, id: u32) -> Option<Entry> {
        Some(Entry {
            name: name.into(),
            id,
        })
    }

    #[test]
    fn nsswitch_lines_are_read_as_glibc_reads_them() {
        let s = parse_sources(
            "# comment\npasswd: files usrfiles\ngroup:  files [NOTFOUND=return] sss systemd # x\n",
            Db::Group,
        );
        assert_eq!(
            s,
            vec![
                (Source::Files(vec!["etc/group".into()]), true),
                (Source::Other("sss".into()), false),
                (Source::Systemd, false),
            ]
        );
        assert_eq!(
            parse_sources("hosts: files dns\n", Db::Passwd),
            vec![(Source::Files(vec!["etc/passwd".into()]), false)]
        );
    }

    #[test]
    fn flatcar_base_users_come_from_the_baselayout() {
        let p = tree(
            "flatcar",
            &[
                (
                    "etc/nsswitch.conf",
                    "passwd: files usrfiles\ngroup: files usrfiles\n",
                ),
                ("etc/passwd", "core:x:500:500::/home/core:/bin/bash\n"),
                ("etc/group", "kube:x:1001:\n"),
                (
                    "usr/share/baselayout/passwd",
                    "root:x:0:0::/root:/bin/bash\netcd:x:232:232::/:/sbin/nologin\n",
                ),
                (
                    "usr/share/baselayout/group",
                    "root:x:0:\nsystemd-journal:x:190:\n",
                ),
            ],
        );
        assert_eq!(find(&p, Db::Passwd, Key::Name("etcd")), e("etcd", 232));
        assert_eq!(find(&p, Db::Passwd, Key::Name("core")), e("core", 500));
        assert_eq!(find(&p, Db::Group, Key::Name("kube")), e("kube", 1001));
        assert_eq!(find(&p, Db::Group, Key::Id(190)), e("systemd-journal", 190));
        let l = lookup(&p, Db::Group, Key::Name("nope")).unwrap();
        assert_eq!(
            l.not_found(Db::Group, "nope"),
            "group `nope` does not exist (looked in /etc/group, /usr/share/baselayout/group, \
             /usr/etc/group)"
        );
        std::fs::remove_dir_all(&p.root).unwrap();
    }

    #[test]
    fn fedora_coreos_users_come_from_altfiles_and_systemd() {
        let p = tree(
            "fcos",
            &[
                (
                    "etc/nsswitch.conf",
                    "passwd: files altfiles systemd\ngroup: files altfiles systemd\n",
                ),
                ("etc/group", "wheel:x:10:core\n"),
                ("usr/lib/group", "root:x:0:\nsudo:x:16:\n"),
                ("usr/lib/passwd", "root:x:0:0:root:/root:/bin/bash\n"),
                (
                    "run/userdb/kube.group",
                    r#"{"groupName":"kube","gid":60123,"disposition":"regular"}"#,
                ),
                (
                    "run/userdb/60123.group",
                    r#"{"groupName":"kube","gid":60123}"#,
                ),
            ],
        );
        assert_eq!(find(&p, Db::Group, Key::Name("sudo")), e("sudo", 16));
        assert_eq!(find(&p, Db::Group, Key::Name("wheel")), e("wheel", 10));
        assert_eq!(find(&p, Db::Group, Key::Name("kube")), e("kube", 60123));
        assert_eq!(find(&p, Db::Group, Key::Id(60123)), e("kube", 60123));
        // nss-systemd's synthesised records.
        assert_eq!(
            find(&p, Db::Passwd, Key::Name("nobody")),
            e("nobody", 65534)
        );
        assert_eq!(find(&p, Db::Group, Key::Id(65534)), e("nobody", 65534));
        assert_eq!(find(&p, Db::Passwd, Key::Name("kubelet")), None);
        std::fs::remove_dir_all(&p.root).unwrap();
    }

    #[test]
    fn a_module_that_is_not_read_is_named_and_return_actions_stop_the_search() {
        let p = tree(
            "sss",
            &[
                (
                    "etc/nsswitch.conf",
                    "passwd: files sss\ngroup: files [NOTFOUND=return] systemd\n",
                ),
                ("etc/passwd", "a:x:1:1::/:/bin/sh\n"),
            ],
        );
        let l = lookup(&p, Db::Passwd, Key::Name("ldapuser")).unwrap();
        let m = l.not_found(Db::Passwd, "ldapuser");
        assert!(m.starts_with("user `ldapuser` does not exist"), "{m}");
        assert!(m.contains("`sss`") && m.contains("numeric id"), "{m}");
        // [NOTFOUND=return]: systemd's synthesised `nobody` is never reached.
        assert_eq!(find(&p, Db::Group, Key::Name("nobody")), None);
        // compat entries and malformed lines are skipped; no nsswitch.conf means files.
        let q = tree(
            "compat",
            &[
                ("etc/nsswitch.conf", "passwd: compat\n"),
                (
                    "etc/passwd",
                    "+nisuser:x:5:5::/:\nbroken\nb:x:notanumber:1::/:\nc:x:7:7::/:\n",
                ),
            ],
        );
        assert_eq!(find(&q, Db::Passwd, Key::Name("nisuser")), None);
        assert_eq!(find(&q, Db::Passwd, Key::Name("b")), None);
        assert_eq!(find(&q, Db::Passwd, Key::Id(7)), e("c", 7));
        std::fs::remove_file(q.root.join("etc/nsswitch.conf")).unwrap();
        assert_eq!(find(&q, Db::Passwd, Key::Name("c")), e("c", 7));
        for t in [p, q] {
            std::fs::remove_dir_all(&t.root).unwrap();
        }
    }

    #[test]
    fn the_userdb_multiplexer_is_asked_over_varlink() {
        use std::io::{Read, Write};
        let p = tree(
            "varlink",
            &[(
                "etc/nsswitch.conf",
                "passwd: files systemd\ngroup: files systemd\n",
            )],
        );
        let sock = p.root.join(USERDB_MULTIPLEXER);
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let mut asked = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().unwrap();
                let mut got = Vec::new();
                let mut b = [0u8; 1];
                while s.read(&mut b).unwrap() == 1 && b[0] != 0 {
                    got.push(b[0]);
                }
                let q: serde_json::Value = serde_json::from_slice(&got).unwrap();
                let reply = if q["parameters"]["userName"] == "dyn-svc" {
                    serde_json::json!({"parameters": {"record": {"userName": "dyn-svc",
                        "uid": 61234, "disposition": "dynamic"}, "incomplete": false}})
                } else {
                    serde_json::json!({"error": "io.systemd.UserDatabase.NoRecordFound"})
                };
                let mut out = serde_json::to_vec(&reply).unwrap();
                out.push(0);
                s.write_all(&out).unwrap();
                asked.push(q);
            }
            asked
        });
        assert_eq!(
            find(&p, Db::Passwd, Key::Name("dyn-svc")),
            e("dyn-svc", 61234)
        );
        assert_eq!(find(&p, Db::Passwd, Key::Name("absent")), None);
        let asked = server.join().unwrap();
        assert_eq!(asked[0]["method"], "io.systemd.UserDatabase.GetUserRecord");
        assert_eq!(asked[0]["parameters"]["service"], "io.systemd.Multiplexer");
        std::fs::remove_dir_all(&p.root).unwrap();
    }
}
