//! Validation: a parsed [`Manifest`] becomes a [`Plan`] of strongly typed, checked steps.
//!
//! Everything that can be known without the network is checked here, and `check` and `run` share
//! it: paths stay inside the root, modes are sane, owners and groups resolve, outputs do not
//! collide, every secret names a configured backend, and each backend's settings are complete.
//! All problems are collected, so one `check` reports every one of them.

use crate::backend::{self, BackendConfig, SecretRef};
use crate::extract::Encoding;
use crate::manifest::{Manifest, SecretEntry};
use crate::names::RelPath;
use crate::settings::{DEFAULT_MAX_RESPONSE, DEFAULT_MAX_SECRET};
use crate::settings::{EnvLookup, Limits, MAX_LIMIT, process_env};
use anyhow::{Context, Result, anyhow};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_OUTPUT_ROOT: &str = "/run/bootsecrets";
/// Where systemd looks for credentials by name (`LoadCredential=`, `ImportCredential=`).
pub const CREDSTORE_ROOT: &str = "/run/credstore";
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);
pub const MAX_DEADLINE_SECONDS: u64 = 3600;
pub const DEFAULT_CONCURRENCY: usize = 64;
pub const MAX_CONCURRENCY: usize = 64;
/// The longest random pause before a run's first request to a backend (see
/// [`Plan::startup_jitter`]).
pub const DEFAULT_STARTUP_JITTER: Duration = Duration::from_millis(250);
pub const MAX_STARTUP_JITTER_MS: u64 = 60_000;
pub const DEFAULT_MODE: u32 = 0o400;

/// A user or group: the name as written (or the number) and the resolved id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub id: u32,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// How outputs are laid out under the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Any relative paths, modes and owners (default).
    Files,
    /// A systemd credential store: flat credential names, root-owned files, a root-only root.
    Credstore,
}

#[derive(Debug)]
pub struct SecretPlan {
    pub path: RelPath,
    pub backend: String,
    pub reference: SecretRef,
    pub json_key: Option<String>,
    pub encoding: Encoding,
    pub mode: u32,
    pub owner: Principal,
    pub group: Principal,
    /// A command (argv) run after a refresh changed this secret.
    pub on_change: Option<Vec<String>>,
    /// Skip this secret (not fetched, not required, not published) when this path exists, as
    /// systemd's `ConditionPathExists=!PATH` would.
    pub unless_exists: Option<PathBuf>,
    /// A failure to fetch it is a warning: the rest is published without it.
    pub optional: bool,
}

/// A file assembled from secrets (`[[template]]`): written in the same set as the secrets, with
/// its own mode and owner, once the secrets it uses are fetched.
#[derive(Debug)]
pub struct TemplatePlan {
    pub path: RelPath,
    pub template: crate::template::Template,
    /// The secrets it uses (indexes into `Plan::secrets`), each once.
    pub uses: Vec<usize>,
    pub mode: u32,
    pub owner: Principal,
    pub group: Principal,
    pub on_change: Option<Vec<String>>,
    pub unless_exists: Option<PathBuf>,
    pub optional: bool,
}

/// The secrets that use one backend in a run, by kind of need (indexes into `Plan::secrets`).
#[derive(Debug, Default)]
pub struct Need {
    /// Fetched, and the run fails without them.
    pub required: Vec<usize>,
    /// Fetched; a failure is a warning.
    pub optional: Vec<usize>,
    /// Not fetched: their `unless_exists` path exists.
    pub skipped: Vec<usize>,
}

#[derive(Debug)]
pub struct Plan {
    /// The real path of the manifest this plan was read from (`None` for a plan built in memory):
    /// the output root records it, and refuses the secrets of another manifest.
    pub manifest_path: Option<PathBuf>,
    pub layout: Layout,
    pub limits: Limits,
    pub output_root: PathBuf,
    pub root_owner: Principal,
    pub root_group: Principal,
    pub root_mode: u32,
    pub deadline: Duration,
    pub concurrency: usize,
    /// A run waits a uniformly random time up to this before its first request to a backend
    /// service, so that nodes booted together do not all arrive in the same instant. Identity
    /// from a local metadata service is established meanwhile.
    pub startup_jitter: Duration,
    pub backends: BTreeMap<String, BackendConfig>,
    /// The files each backend reads on the node when it connects ([`Plan::check_files`]).
    pub files: BTreeMap<String, Vec<crate::credfile::NodeFile>>,
    pub secrets: Vec<SecretPlan>,
    pub templates: Vec<TemplatePlan>,
    /// Not errors, but worth telling the operator (printed by `check` and `run -v`).
    pub warnings: Vec<String>,
}

/// `check --offline` and `render`: reads and validates a manifest without anything of the
/// machine doing it (see [`crate::settings::set_offline`], which must be set): a plain read, no
/// environment, no user, group or file of the manifest looked up.
pub fn load_offline(path: &Path) -> Result<Plan> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read manifest {}", path.display()))?;
    from_text_offline(&text).with_context(|| format!("manifest {} is not valid", path.display()))
}

/// [`load_offline`] for a manifest's text.
pub fn from_text_offline(text: &str) -> Result<Plan> {
    let manifest = crate::manifest::parse(text).map_err(parse_error)?;
    Plan::build(&manifest, &|_| None)
}

/// TOML's error, with what to do when it is a mode written as a number (`mode = 0400`: TOML
/// says only "unexpected leading zero", or that it expected a string).
fn parse_error(e: toml::de::Error) -> anyhow::Error {
    let text = e.to_string();
    let text = text.trim_end();
    let on_mode = text.lines().any(|l| {
        let l = l.split_once('|').map_or(l, |(_, r)| r).trim_start();
        l.starts_with("mode") || l.starts_with("default_mode")
    });
    if on_mode && (text.contains("leading zero") || text.contains("integer")) {
        anyhow!("{text}\nA mode is a quoted octal string: write mode = \"0400\", not mode = 0400")
    } else {
        anyhow!("{text}")
    }
}

/// Reads, parses and validates a manifest file.
pub fn load(path: &Path) -> Result<Plan> {
    let text = crate::credfile::read_trusted("manifest", path).map_err(|e| anyhow!(e))?;
    let manifest = crate::manifest::parse(&text)
        .map_err(parse_error)
        .with_context(|| format!("manifest {} is not valid", path.display()))?;
    let mut plan = Plan::build(&manifest, &process_env)
        .with_context(|| format!("manifest {} is not valid", path.display()))?;
    plan.manifest_path = Some(
        std::fs::canonicalize(path)
            .with_context(|| format!("cannot resolve manifest {}", path.display()))?,
    );
    Ok(plan)
}

/// Parses an octal mode written as a string (`"0440"`), refusing any access for other users and
/// setuid, setgid and sticky bits.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(format!("mode `{s}` is not an octal mode such as \"0440\""));
    }
    let m = u32::from_str_radix(digits, 8).expect("checked octal digits");
    if m & !0o777 != 0 {
        return Err(format!("mode `{s}` sets setuid, setgid or sticky bits"));
    }
    if m & 0o007 != 0 {
        return Err(format!(
            "mode `{s}` grants access to other users; secrets may be readable by owner and group \
             only. To let a consumer read the file (a public certificate too), give it that \
             consumer's group (`group = \"NAME\"`, mode \"0440\") and let the group into the \
             output root (settings.root_group)"
        ));
    }
    if m & 0o020 != 0 {
        return Err(format!(
            "mode `{s}` lets the group write the file; one consumer could change what another \
             reads (use \"0440\" or \"0640\")"
        ));
    }
    if m & 0o400 == 0 {
        return Err(format!("mode `{s}` does not let the owner read the file"));
    }
    Ok(m)
}

/// `(uid_t)-1`: `chown` reads it as "leave unchanged", so it can never be an owner.
const NO_ID: u32 = u32::MAX;

fn usable_id(p: Principal, what: &str) -> Result<Principal, String> {
    if p.id == NO_ID {
        return Err(format!(
            "{what} `{}` has id {NO_ID}, which chown reads as \"leave unchanged\"; choose another",
            p.name
        ));
    }
    Ok(p)
}

pub fn resolve_user(s: &str) -> Result<Principal, String> {
    resolve_user_id(s).and_then(|p| usable_id(p, "user"))
}

pub fn resolve_group(s: &str) -> Result<Principal, String> {
    resolve_group_id(s).and_then(|p| usable_id(p, "group"))
}

/// The id of a name that `check --offline` does not look up (only `root` is known everywhere).
pub const UNRESOLVED_ID: u32 = u32::MAX - 1;

/// Offline: a name is not looked up on the machine validating (it is the node's `/etc/passwd`
/// that counts); `root` is 0 everywhere, other names stay unresolved.
fn unresolved(s: &str) -> Option<Principal> {
    crate::settings::offline().then(|| Principal {
        name: s.to_string(),
        id: if s == "root" { 0 } else { UNRESOLVED_ID },
    })
}

fn resolve_user_id(s: &str) -> Result<Principal, String> {
    resolve_id(s, crate::accounts::Db::Passwd)
}

fn resolve_group_id(s: &str) -> Result<Principal, String> {
    resolve_id(s, crate::accounts::Db::Group)
}

/// A number is an id as it is; a name is looked up the way the node's OS defines it, without
/// NSS (see [`crate::accounts`]).
fn resolve_id(s: &str, db: crate::accounts::Db) -> Result<Principal, String> {
    if let Ok(id) = s.parse::<u32>() {
        return Ok(Principal {
            name: s.to_string(),
            id,
        });
    }
    if let Some(p) = unresolved(s) {
        return Ok(p);
    }
    crate::accounts::id_of(db, s).map(|id| Principal {
        name: s.to_string(),
        id,
    })
}

/// The running user or group, by name where a source names it, else by number.
fn current(db: crate::accounts::Db, id: u32) -> Principal {
    if crate::settings::offline() {
        // On the node the unit runs bootsecrets as root.
        return Principal {
            name: "root".into(),
            id: 0,
        };
    }
    Principal {
        name: crate::accounts::name_of(db, id).unwrap_or_else(|| id.to_string()),
        id,
    }
}

fn current_user() -> Principal {
    current(crate::accounts::Db::Passwd, nix::unistd::geteuid().as_raw())
}

fn current_group() -> Principal {
    current(crate::accounts::Db::Group, nix::unistd::getegid().as_raw())
}

/// Directories others use too: never an output root (`/` is refused as well).
pub const SHARED_DIRS: [&str; 17] = [
    "/dev",
    "/dev/shm",
    "/run",
    "/run/user",
    "/run/lock",
    "/run/systemd",
    "/tmp",
    "/var",
    "/var/tmp",
    "/var/run",
    "/etc",
    "/usr",
    "/home",
    "/root",
    "/opt",
    "/proc",
    "/sys",
];

/// An `output_root` as written, validated: absolute, not `/`, no traversal or reserved names, not a
/// shared system directory. Returns it without a trailing `/`. `render` uses it too.
pub fn validate_root(s: &str) -> Result<PathBuf, String> {
    if !s.starts_with('/') {
        return Err(format!("output_root `{s}` must be an absolute path"));
    }
    let trimmed = s.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("output_root must not be `/`".into());
    }
    RelPath::parse(&trimmed[1..]).map_err(|e| format!("output_root `{s}` {e}"))?;
    if SHARED_DIRS.contains(&trimmed) {
        return Err(format!(
            "output_root `{s}` is a directory the system shares; bootsecrets takes its root over \
             (mode, owner, clean-up), so it must be a directory of its own, such as \
             `{DEFAULT_OUTPUT_ROOT}` or `{trimmed}/bootsecrets`"
        ));
    }
    Ok(PathBuf::from(trimmed))
}

fn valid_backend_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Plan {
    pub fn build(m: &Manifest, env: EnvLookup<'_>) -> Result<Plan> {
        let mut errors: Vec<String> = Vec::new();
        let mut warnings = Vec::new();
        let s = &m.settings;

        let layout = match s.layout.as_deref() {
            None | Some("files") => Layout::Files,
            Some("credstore") => Layout::Credstore,
            Some(o) => {
                errors.push(format!(
                    "settings.layout `{o}` is not one of \"files\", \"credstore\""
                ));
                Layout::Files
            }
        };
        let default_root = match layout {
            Layout::Files => DEFAULT_OUTPUT_ROOT,
            Layout::Credstore => CREDSTORE_ROOT,
        };
        let output_root = validate_root(s.output_root.as_deref().unwrap_or(default_root))
            .unwrap_or_else(|e| {
                errors.push(format!("settings.{e}"));
                PathBuf::from(DEFAULT_OUTPUT_ROOT)
            });

        let mut principal =
            |what: &str, v: Option<&String>, user: bool, dflt: fn() -> Principal| match v {
                None => dflt(),
                Some(v) => {
                    let r = if user {
                        resolve_user(v)
                    } else {
                        resolve_group(v)
                    };
                    r.unwrap_or_else(|e| {
                        errors.push(format!("{what}: {e}"));
                        dflt()
                    })
                }
            };
        let root_owner = principal(
            "settings.root_owner",
            s.root_owner.as_ref(),
            true,
            current_user,
        );
        let root_group = principal(
            "settings.root_group",
            s.root_group.as_ref(),
            false,
            current_group,
        );
        let default_owner = principal(
            "settings.default_owner",
            s.default_owner.as_ref(),
            true,
            current_user,
        );
        let default_group = principal(
            "settings.default_group",
            s.default_group.as_ref(),
            false,
            current_group,
        );
        let root_mode = if s.root_group.is_some() { 0o750 } else { 0o700 };
        // The unit keeps CAP_CHOWN alone: root cannot enter or write a 0700/0750 directory that
        // another user owns, so the root must be owned by the user bootsecrets runs as.
        let euid = if crate::settings::offline() {
            0
        } else {
            nix::unistd::geteuid().as_raw()
        };
        if root_owner.id != 0 && root_owner.id != euid {
            errors.push(format!(
                "settings.root_owner `{}`: the output root must be owned by root (the unit runs \
                 bootsecrets as root with CAP_CHOWN only, which cannot enter a directory another \
                 user owns); give a consumer access with root_group and the file's owner instead",
                root_owner
            ));
        }

        let deadline = match s.deadline_seconds {
            None => DEFAULT_DEADLINE,
            Some(d) if (1..=MAX_DEADLINE_SECONDS).contains(&d) => Duration::from_secs(d),
            Some(d) => {
                errors.push(format!(
                    "settings.deadline_seconds = {d}: must be between 1 and {MAX_DEADLINE_SECONDS}"
                ));
                DEFAULT_DEADLINE
            }
        };
        let concurrency = match s.concurrency {
            None => DEFAULT_CONCURRENCY,
            Some(c) if (1..=MAX_CONCURRENCY).contains(&c) => c,
            Some(c) => {
                errors.push(format!(
                    "settings.concurrency = {c}: must be between 1 and {MAX_CONCURRENCY}"
                ));
                DEFAULT_CONCURRENCY
            }
        };
        let startup_jitter = match s.startup_jitter_ms {
            None => DEFAULT_STARTUP_JITTER,
            Some(ms) if ms > MAX_STARTUP_JITTER_MS => {
                errors.push(format!(
                    "settings.startup_jitter_ms = {ms}: must be between 0 and {MAX_STARTUP_JITTER_MS}"
                ));
                DEFAULT_STARTUP_JITTER
            }
            Some(ms) if Duration::from_millis(ms) > deadline / 2 => {
                errors.push(format!(
                    "settings.startup_jitter_ms = {ms}: must be at most half of deadline_seconds \
                     ({} s), so that the run keeps time to fetch",
                    deadline.as_secs()
                ));
                DEFAULT_STARTUP_JITTER.min(deadline / 2)
            }
            Some(ms) => Duration::from_millis(ms),
        };
        let mut limit = |v: Option<u64>, key: &str, default: u64| match v {
            None => default,
            Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
            Some(n) => {
                errors.push(format!(
                    "settings.{key} = {n}: must be between 1 and {MAX_LIMIT}"
                ));
                default
            }
        };
        let limits = Limits {
            max_secret: limit(s.max_secret_bytes, "max_secret_bytes", DEFAULT_MAX_SECRET),
            max_response: limit(
                s.max_response_bytes,
                "max_response_bytes",
                DEFAULT_MAX_RESPONSE,
            ),
        };
        let default_mode = match s.default_mode.as_deref().map(parse_mode) {
            None => DEFAULT_MODE,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                errors.push(format!("settings.default_mode: {e}"));
                DEFAULT_MODE
            }
        };

        let mut backends = BTreeMap::new();
        let files: BTreeMap<String, Vec<crate::credfile::NodeFile>> = m
            .backend
            .iter()
            .map(|(name, entry)| (name.clone(), backend::node_files(entry)))
            .collect();
        for (name, entry) in &m.backend {
            if !valid_backend_name(name) {
                errors.push(format!(
                    "backend `{name}`: names may use letters, digits, `-` and `_` (at most 64)"
                ));
                continue;
            }
            match backend::plan_backend(entry, env) {
                Ok(cfg) => {
                    backends.insert(name.clone(), cfg);
                }
                Err(errs) => {
                    errors.extend(errs.into_iter().map(|e| format!("backend `{name}`: {e}")))
                }
            }
        }
        if m.backend.is_empty() {
            errors.push("no backend is configured: add a [backend.NAME] table".into());
        }
        if m.secret.is_empty() {
            errors.push("no secret is listed: add [[secret]] entries".into());
        }

        let mut secrets = Vec::new();
        let mut seen: BTreeMap<RelPath, usize> = BTreeMap::new();
        for (i, e) in m.secret.iter().enumerate() {
            let label = format!("secret #{} (path `{}`)", i + 1, e.path);
            match plan_secret(
                e,
                m,
                &backends,
                default_mode,
                &default_owner,
                &default_group,
            ) {
                Ok(sp) => {
                    if let Some(j) = seen.insert(sp.path.clone(), i) {
                        errors.push(format!(
                            "{label}: writes the same output as secret #{}",
                            j + 1
                        ));
                    }
                    if sp.mode & 0o200 != 0 && sp.owner.id != 0 {
                        warnings.push(format!(
                            "{label}: mode {:04o} lets its owner `{}` write the file, and a \
                             change made through a shared mapping or within a timestamp tick \
                             leaves no trace bootsecrets can see: the file is written again on \
                             every run. A reader needs no write access: \"0400\" or \"0440\"",
                            sp.mode, sp.owner
                        ));
                    }
                    if sp.mode & 0o070 != 0 && root_mode & 0o070 == 0 {
                        warnings.push(format!(
                            "{label}: mode {:04o} grants group access, but the output root is 0700; \
                             set settings.root_group so the group can reach it",
                            sp.mode
                        ));
                    }
                    secrets.push(sp);
                }
                Err(errs) => errors.extend(errs.into_iter().map(|e| format!("{label}: {e}"))),
            }
        }
        let mut templates = Vec::new();
        for (i, e) in m.template.iter().enumerate() {
            let label = format!("template #{} (path `{}`)", i + 1, e.path);
            match plan_template(e, &secrets, default_mode, &default_owner, &default_group) {
                Ok(tp) => {
                    if let Some(j) = seen.get(&tp.path) {
                        errors.push(format!(
                            "{label}: writes the same output as secret #{}",
                            j + 1
                        ));
                    } else if let Some(j) = templates
                        .iter()
                        .position(|t: &TemplatePlan| t.path == tp.path)
                    {
                        errors.push(format!(
                            "{label}: writes the same output as template #{}",
                            j + 1
                        ));
                    }
                    if tp.mode & 0o070 != 0 && root_mode & 0o070 == 0 {
                        warnings.push(format!(
                            "{label}: mode {:04o} grants group access, but the output root is 0700; \
                             set settings.root_group so the group can reach it",
                            tp.mode
                        ));
                    }
                    if layout == Layout::Credstore {
                        errors.push(format!(
                            "{label}: the credstore layout holds credentials fetched as they are; \
                             write templates with the files layout"
                        ));
                    }
                    templates.push(tp);
                }
                Err(errs) => errors.extend(errs.into_iter().map(|e| format!("{label}: {e}"))),
            }
        }
        // A file may not also be a directory of another output (`a` and `a/b`).
        let paths: BTreeSet<&RelPath> = seen
            .keys()
            .chain(templates.iter().map(|t| &t.path))
            .collect();
        let paths: Vec<&RelPath> = paths.into_iter().collect();
        for w in paths.windows(2) {
            let (a, b) = (w[0].components(), w[1].components());
            if b.len() > a.len() && b[..a.len()] == *a {
                errors.push(format!(
                    "output `{}` is a file, but output `{}` needs it to be a directory",
                    w[0], w[1]
                ));
            }
        }
        for name in backends.keys() {
            if !secrets.iter().any(|s| &s.backend == name) {
                warnings.push(format!("backend `{name}` is not used by any secret"));
            }
        }
        for (name, b) in &backends {
            for w in b.warnings() {
                warnings.push(format!("backend `{name}`: {w}"));
            }
        }

        if layout == Layout::Credstore {
            credstore_rules(&mut errors, s.root_group.is_some(), &root_owner, &secrets);
        }
        warnings.extend(unit_timeouts(deadline, &backends, &secrets));
        if !errors.is_empty() {
            // The manifest needs fixing anyway: say at once what the node lacks as well.
            for (name, fs) in &files {
                for p in check_node_files(fs) {
                    errors.push(format!(
                        "backend `{name}`: {p} (on this node; a run checks it when it needs the \
                         backend)"
                    ));
                }
            }
            for e in m
                .secret
                .iter()
                .filter_map(|e| e.on_change.as_ref()?.first())
            {
                if e.starts_with('/')
                    && !crate::settings::offline()
                    && let Err(p) = crate::credfile::check_executable("on_change command", e)
                {
                    errors.push(format!(
                        "{p} (on this node; checked again when it is about to run)"
                    ));
                }
            }
            let n = errors.len();
            return Err(anyhow!(
                "{n} problem{}:\n  - {}",
                if n == 1 { "" } else { "s" },
                errors.join("\n  - ")
            ));
        }
        Ok(Plan {
            manifest_path: None,
            layout,
            limits,
            output_root,
            root_owner,
            root_group,
            root_mode,
            deadline,
            concurrency,
            startup_jitter,
            backends,
            files,
            secrets,
            templates,
            warnings,
        })
    }

    /// Every problem with the files backend `name` reads when it connects (missing, unsafe
    /// owner or mode): what a run that needs the backend fails on before any request.
    pub fn check_files(&self, name: &str) -> Vec<String> {
        self.files
            .get(name)
            .map(|f| check_node_files(f))
            .unwrap_or_default()
    }

    /// Which secrets need backend `name` in a run that skips `skipped` (indexes, from
    /// `unless_exists`), by kind of need.
    pub fn needs(&self, name: &str, skipped: &BTreeSet<usize>) -> Need {
        let mut need = Need::default();
        for (i, s) in self.secrets.iter().enumerate() {
            if s.backend != name {
                continue;
            }
            if skipped.contains(&i) {
                need.skipped.push(i);
            } else if s.optional {
                need.optional.push(i);
            } else {
                need.required.push(i);
            }
        }
        need
    }

    /// What only the node can tell about this plan (`check` on a node, `doctor`): the files each
    /// backend reads when it connects, and the `on_change` programs. Returns the errors (what a
    /// run would fail on now) and the warnings (what it would not: a backend that only skipped or
    /// optional secrets use, a program that only a refresh runs), each with its reason.
    pub fn node_findings(&self, skipped: &BTreeSet<usize>) -> (Vec<String>, Vec<String>) {
        let (mut errors, mut warnings) = (Vec::new(), Vec::new());
        for (name, cfg) in &self.backends {
            let mut problems = self.check_files(name);
            // The client certificate's validity, once the files are there to read.
            if problems.is_empty() {
                match cfg.certificate_standing() {
                    Some(Err(e)) if e.class == crate::error::Class::Permanent => {
                        problems.push(e.message)
                    }
                    Some(Err(e)) => warnings.push(format!("backend `{name}`: {}", e.message)),
                    Some(Ok(Some(w))) => warnings.push(format!("backend `{name}`: {w}")),
                    _ => {}
                }
            }
            if problems.is_empty() {
                continue;
            }
            let need = self.needs(name, skipped);
            for p in problems {
                if !need.required.is_empty() {
                    errors.push(format!(
                        "backend `{name}`, needed by secret(s) {}: {p}",
                        self.quoted(&need.required)
                    ));
                } else if !need.optional.is_empty() {
                    warnings.push(format!(
                        "backend `{name}`: {p}; only optional secret(s) {} need it now: a run \
                         publishes the rest without them",
                        self.quoted(&need.optional)
                    ));
                } else if !need.skipped.is_empty() {
                    warnings.push(format!(
                        "backend `{name}`: {p}; not needed now: its secret(s) {} are skipped \
                         (unless_exists), and a boot where that path is missing would fail on it",
                        self.quoted(&need.skipped)
                    ));
                } else {
                    warnings.push(format!("backend `{name}`: {p} (no secret uses it)"));
                }
            }
        }
        warnings.extend(self.on_change_findings());
        (errors, warnings)
    }

    /// The `on_change` programs that would be refused now (StrictModes), one warning each: a
    /// refresh that changes the secret runs its command, a boot never does.
    pub fn on_change_findings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut seen = BTreeSet::new();
        let commands = self
            .secrets
            .iter()
            .map(|s| ("secret", &s.path, &s.on_change))
            .chain(
                self.templates
                    .iter()
                    .map(|t| ("template", &t.path, &t.on_change)),
            );
        for (kind, path, on_change) in commands {
            let Some(cmd) = on_change.as_ref().and_then(|a| a.first()) else {
                continue;
            };
            if !seen.insert(cmd.clone()) || crate::settings::offline() {
                continue;
            }
            if let Err(e) = crate::credfile::check_executable("on_change command", cmd) {
                warnings.push(format!(
                    "{kind} `{path}`: {e}. It is checked again when it is about to run: a \
                     refresh that changes the {kind} owes the command, and reports it failed, \
                     until this is fixed"
                ));
            }
        }
        warnings
    }

    /// `` `a`, `b` `` for secrets by index.
    pub fn quoted(&self, secrets: &[usize]) -> String {
        secrets
            .iter()
            .map(|&i| format!("`{}`", self.secrets[i].path))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Backends that at least one secret uses, in name order.
    pub fn used_backends(&self) -> impl Iterator<Item = (&String, &BackendConfig)> {
        self.backends
            .iter()
            .filter(|(n, _)| self.secrets.iter().any(|s| &s.backend == *n))
    }

    /// The plan as `check` prints it: what would be written where, with which mode and owner.
    /// `` yaml template of `a`, `b` ``: what template `i` is made from, for `check`, the log and
    /// the status file.
    pub fn template_source(&self, i: usize) -> String {
        let t = &self.templates[i];
        let uses: Vec<String> = t
            .uses
            .iter()
            .map(|&u| format!("`{}`", self.secrets[u].path))
            .collect();
        format!(
            "{} template of {}",
            t.template.format.name(),
            if uses.is_empty() {
                "no secret".to_string()
            } else {
                uses.join(", ")
            }
        )
    }

    pub fn describe(&self) -> String {
        let mut out = String::new();
        let root = &self.output_root;
        if self.layout == Layout::Credstore {
            out += "layout       credstore: consume with LoadCredential=NAME:/run/credstore/NAME\n";
        }
        out += &format!(
            "output root  {} (directory {:04o} {}:{}; must be on tmpfs or ramfs)\n",
            root.display(),
            self.root_mode,
            self.root_owner,
            self.root_group
        );
        out += &format!(
            "deadline     {} s for the whole run; up to {} fetches at once; first request after a \
             random wait of up to {} ms (startup_jitter_ms)\n",
            self.deadline.as_secs(),
            self.concurrency,
            self.startup_jitter.as_millis()
        );
        out += &format!(
            "limits       {} bytes per secret, {} bytes per backend response\n",
            self.limits.max_secret, self.limits.max_response
        );
        for (name, b) in &self.backends {
            out += &format!("backend      {name}: {}\n", b.describe());
        }
        out += &format!("secrets      {}\n", self.secrets.len());
        for s in &self.secrets {
            let mut extra = Vec::new();
            if let Some(k) = &s.json_key {
                extra.push(format!("json_key {k:?}"));
            }
            if s.encoding == Encoding::Base64 {
                extra.push("base64-decoded".to_string());
            }
            if s.optional {
                extra.push("optional".to_string());
            }
            if let Some(p) = &s.unless_exists {
                extra.push(format!("skipped when {} exists", p.display()));
            }
            out += &format!(
                "  {:04o} {}:{}  {}/{}  <- {} {}{}\n",
                s.mode,
                s.owner,
                s.group,
                root.display(),
                s.path,
                s.backend,
                s.reference.describe(),
                if extra.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", extra.join(", "))
                }
            );
        }
        if !self.templates.is_empty() {
            out += &format!("templates    {}\n", self.templates.len());
        }
        for (i, t) in self.templates.iter().enumerate() {
            let mut extra = Vec::new();
            if t.optional {
                extra.push("optional".to_string());
            }
            if let Some(p) = &t.unless_exists {
                extra.push(format!("skipped when {} exists", p.display()));
            }
            out += &format!(
                "  {:04o} {}:{}  {}/{}  <- {}{}\n",
                t.mode,
                t.owner,
                t.group,
                root.display(),
                t.path,
                self.template_source(i),
                if extra.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", extra.join(", "))
                }
            );
        }
        for w in &self.warnings {
            out += &format!("warning: {w}\n");
        }
        out
    }
}

/// [`crate::credfile::NodeFile::check`] of each file whose path has the right form (a wrong form
/// is a planning error of its own), unless offline.
fn check_node_files(files: &[crate::credfile::NodeFile]) -> Vec<String> {
    if crate::settings::offline() {
        return Vec::new();
    }
    files
        .iter()
        .filter(|f| crate::credfile::check_form(&f.key, &f.path).is_ok())
        .filter_map(|f| f.check().err())
        .collect()
}

/// The longest a run can take: the deadline, then the backends' clean-up (Vault token
/// revocation) and the `on_change` commands, which each have a budget of their own, and some
/// slack. Must fit the units' `TimeoutStartSec=`, or systemd kills a run that was still keeping
/// its promises.
pub fn worst_case(
    deadline: Duration,
    backends: &BTreeMap<String, BackendConfig>,
    secrets: &[SecretPlan],
) -> Duration {
    let mut t = deadline + crate::settings::SLACK;
    if backends.values().any(|b| b.kind() == "vault") {
        t += crate::settings::FINISH_BUDGET;
    }
    if secrets.iter().any(|s| s.on_change.is_some()) {
        t += crate::settings::ACTION_BUDGET;
    }
    t
}

/// Warnings for settings that cannot fit the shipped units' `TimeoutStartSec=`.
fn unit_timeouts(
    deadline: Duration,
    backends: &BTreeMap<String, BackendConfig>,
    secrets: &[SecretPlan],
) -> Vec<String> {
    let worst = worst_case(deadline, backends, secrets);
    let mut out = Vec::new();
    for (name, text) in [
        (crate::units::UNIT_NAME, crate::units::UNIT),
        (crate::units::REFRESH_UNIT_NAME, crate::units::REFRESH_UNIT),
    ] {
        if let Some(limit) = crate::units::timeout_start(text)
            && worst > limit
        {
            out.push(format!(
                "a run may take up to {} s (deadline_seconds {} + token revocation, on_change \
                 commands and slack), more than {name}'s TimeoutStartSec={}: systemd would kill \
                 it first. Lower settings.deadline_seconds or raise TimeoutStartSec in a drop-in",
                worst.as_secs(),
                deadline.as_secs(),
                limit.as_secs()
            ));
        }
    }
    out
}

/// The systemd credential store convention: a root-only directory of root-only files named by
/// credential name, read by PID 1 for `LoadCredential=NAME:/run/credstore/NAME`.
fn credstore_rules(
    errors: &mut Vec<String>,
    root_group: bool,
    root_owner: &Principal,
    secrets: &[SecretPlan],
) {
    if root_group || root_owner.id != 0 {
        errors.push(
            "settings: the credstore layout keeps the root owned by root with mode 0700; \
             remove root_owner and root_group"
                .into(),
        );
    }
    for s in secrets {
        if s.path.components().len() != 1 {
            errors.push(format!(
                "secret `{}`: the credstore layout takes a credential name, not a path with `/`",
                s.path
            ));
        }
        if s.owner.id != 0 || s.group.id != 0 {
            errors.push(format!(
                "secret `{}`: credentials are owned by root (systemd hands them to the unit with \
                 the unit's own ownership); remove owner and group",
                s.path
            ));
        }
    }
}

/// An `on_change` list's form (a secret's or a template's). The program itself is checked
/// (StrictModes: it runs as root) just before it runs, and by `check` as a warning: a refresh
/// needs it, a boot does not.
fn check_on_change(argv: Option<&[String]>, errors: &mut Vec<String>) {
    let Some(argv) = argv else { return };
    match argv.first() {
        None => errors.push("on_change must name a command (a non-empty list)".into()),
        Some(cmd) if !cmd.starts_with('/') => errors.push(format!(
            "on_change command `{cmd}` must be an absolute path (no PATH lookup), e.g. \
             \"/usr/bin/systemctl\""
        )),
        Some(_) if argv.iter().any(|a| a.contains('\0')) => {
            errors.push("on_change arguments must not contain NUL".into())
        }
        Some(_) => {}
    }
}

/// An `unless_exists` path (a secret's or a template's).
fn plan_unless_exists(p: Option<&str>, errors: &mut Vec<String>) -> Option<PathBuf> {
    match p {
        None => None,
        Some(p) if !p.starts_with('/') => {
            errors.push(format!(
                "unless_exists `{p}` must be an absolute path, such as \
                 \"/var/lib/kubelet/kubeconfig\""
            ));
            None
        }
        Some(p) if p.contains('\0') => {
            errors.push("unless_exists must not contain NUL".into());
            None
        }
        Some(p) => Some(PathBuf::from(p)),
    }
}

/// A file's `[mode, owner, group]` as written, each falling back to its default.
fn plan_access(
    [mode, owner, group]: [Option<&str>; 3],
    (default_mode, default_owner, default_group): (u32, &Principal, &Principal),
    errors: &mut Vec<String>,
) -> (u32, Principal, Principal) {
    let mode = match mode.map(parse_mode) {
        None => default_mode,
        Some(Ok(m)) => m,
        Some(Err(err)) => {
            errors.push(err);
            default_mode
        }
    };
    let mut take = |r: Option<Result<Principal, String>>, default: &Principal| match r {
        None => default.clone(),
        Some(Ok(p)) => p,
        Some(Err(err)) => {
            errors.push(err);
            default.clone()
        }
    };
    let owner = take(owner.map(resolve_user), default_owner);
    let group = take(group.map(resolve_group), default_group);
    (mode, owner, group)
}

fn plan_template(
    e: &crate::manifest::TemplateEntry,
    secrets: &[SecretPlan],
    default_mode: u32,
    default_owner: &Principal,
    default_group: &Principal,
) -> Result<TemplatePlan, Vec<String>> {
    use crate::template::{Format, Template};
    let mut errors = Vec::new();
    let path = RelPath::parse(&e.path)
        .map_err(|err| errors.push(format!("path {err}")))
        .ok();
    let format = Format::parse(&e.format).unwrap_or_else(|| {
        errors.push(format!(
            "format `{}` is not one of {}",
            e.format,
            Format::NAMES
        ));
        Format::Verbatim
    });
    let template = Template::parse(&e.text, format)
        .map_err(|err| errors.push(format!("text: {err}")))
        .ok();
    let optional = e.optional.unwrap_or(false);
    let unless_exists = plan_unless_exists(e.unless_exists.as_deref(), &mut errors);
    let mut uses = Vec::new();
    for used in template.iter().flat_map(|t| t.secret_paths()) {
        let Some(i) = secrets.iter().position(|s| s.path.to_string() == used) else {
            errors.push(format!(
                "text uses secret `{used}`, which no [[secret]] writes (a placeholder names a \
                 secret by its `path`; the secrets: {})",
                if secrets.is_empty() {
                    "none".to_string()
                } else {
                    secrets
                        .iter()
                        .map(|s| format!("`{}`", s.path))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
            continue;
        };
        let s = &secrets[i];
        if s.optional && !optional {
            errors.push(format!(
                "uses secret `{used}`, which is optional: a run without it could not write this \
                 file; make the template optional too (`optional = true`), or the secret required"
            ));
        }
        if s.unless_exists.is_some() && s.unless_exists != unless_exists {
            errors.push(format!(
                "uses secret `{used}`, which is skipped when {} exists: give the template the \
                 same `unless_exists`",
                s.unless_exists
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .display()
            ));
        }
        uses.push(i);
    }
    check_on_change(e.on_change.as_deref(), &mut errors);
    let (mode, owner, group) = plan_access(
        [e.mode.as_deref(), e.owner.as_deref(), e.group.as_deref()],
        (default_mode, default_owner, default_group),
        &mut errors,
    );
    match (path, template) {
        (Some(path), Some(template)) if errors.is_empty() => Ok(TemplatePlan {
            path,
            template,
            uses,
            mode,
            owner,
            group,
            on_change: e.on_change.clone(),
            unless_exists,
            optional,
        }),
        _ => Err(errors),
    }
}

fn plan_secret(
    e: &SecretEntry,
    m: &Manifest,
    backends: &BTreeMap<String, BackendConfig>,
    default_mode: u32,
    default_owner: &Principal,
    default_group: &Principal,
) -> Result<SecretPlan, Vec<String>> {
    let mut errors = Vec::new();
    let path = RelPath::parse(&e.path).map_err(|err| format!("path {err}"));
    let backend_name = match &e.backend {
        Some(b) => Some(b.clone()),
        None if m.backend.len() == 1 => m.backend.keys().next().cloned(),
        None => {
            errors.push(format!(
                "`backend` is required when several backends are configured ({})",
                m.backend.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
            None
        }
    };
    let reference = backend_name.as_ref().and_then(|b| match backends.get(b) {
        Some(cfg) => backend::plan_secret(cfg, e)
            .map_err(|err| errors.extend(err))
            .ok(),
        None => {
            if !m.backend.contains_key(b) {
                errors.push(format!("backend `{b}` is not configured"));
            }
            None
        }
    });
    let encoding = match e.encoding.as_deref() {
        None | Some("none") => Encoding::None,
        Some("base64") => Encoding::Base64,
        Some(o) => {
            errors.push(format!("encoding `{o}` is not one of \"none\", \"base64\""));
            Encoding::None
        }
    };
    if e.json_key.as_deref() == Some("") {
        errors.push("json_key must not be empty".into());
    }
    check_on_change(e.on_change.as_deref(), &mut errors);
    let unless_exists = plan_unless_exists(e.unless_exists.as_deref(), &mut errors);
    let (mode, owner, group) = plan_access(
        [e.mode.as_deref(), e.owner.as_deref(), e.group.as_deref()],
        (default_mode, default_owner, default_group),
        &mut errors,
    );
    let path = path.map_err(|err| errors.push(err)).ok();
    match (path, backend_name, reference) {
        (Some(path), Some(backend), Some(reference)) if errors.is_empty() => Ok(SecretPlan {
            path,
            backend,
            reference,
            json_key: e.json_key.clone(),
            encoding,
            mode,
            owner,
            group,
            on_change: e.on_change.clone(),
            unless_exists,
            optional: e.optional.unwrap_or(false),
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn plan(text: &str) -> Result<Plan> {
        Plan::build(
            &crate::manifest::parse(text).map_err(|e| anyhow!("{e}"))?,
            &no_env,
        )
    }

    const BASE: &str = r#"
[backend.main]
type = "aws"
region = "eu-west-1"
"#;

    #[test]
    fn paths_must_stay_inside_the_root() {
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/",
            "",
            ".",
            "a/./b",
        ] {
            assert!(RelPath::parse(bad).is_err(), "{bad:?} accepted");
            let text = format!("{BASE}\n[[secret]]\npath = {bad:?}\nref = \"x\"\n");
            assert!(plan(&text).is_err(), "{bad:?} planned");
        }
        assert!(RelPath::parse(".bootsecrets-tmp.1").is_err());
        let p = RelPath::parse("kubelet/ca.key").unwrap();
        assert_eq!(p.split(), (&["kubelet".to_string()][..], "ca.key"));
    }

    #[test]
    fn modes_are_octal_and_private() {
        assert_eq!(parse_mode("0400"), Ok(0o400));
        assert_eq!(parse_mode("440"), Ok(0o440));
        assert_eq!(parse_mode("0o640"), Ok(0o640));
        for bad in ["0444", "0604", "4400", "0800", "abc", "", "04400", "0040"] {
            assert!(parse_mode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_and_single_backend_inference() {
        let p = plan(&format!("{BASE}\n[[secret]]\npath = \"a\"\nref = \"x\"\n")).unwrap();
        assert_eq!(p.output_root, PathBuf::from(DEFAULT_OUTPUT_ROOT));
        assert_eq!(p.deadline, DEFAULT_DEADLINE);
        assert_eq!(p.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(p.startup_jitter, DEFAULT_STARTUP_JITTER);
        assert_eq!(p.root_mode, 0o700);
        assert_eq!(p.secrets[0].mode, 0o400);
        assert_eq!(p.secrets[0].backend, "main");
    }

    #[test]
    fn startup_jitter_is_bounded_by_the_deadline() {
        let with = |settings: &str| {
            plan(&format!(
                "[settings]\n{settings}\n{BASE}\n[[secret]]\npath = \"a\"\nref = \"x\"\n"
            ))
        };
        let p = with("startup_jitter_ms = 0").unwrap();
        assert_eq!(p.startup_jitter, Duration::ZERO);
        let p = with("startup_jitter_ms = 5000\ndeadline_seconds = 10").unwrap();
        assert_eq!(p.startup_jitter, Duration::from_secs(5));
        let err = format!(
            "{:#}",
            with("startup_jitter_ms = 5001\ndeadline_seconds = 10").unwrap_err()
        );
        assert!(err.contains("at most half of deadline_seconds"), "{err}");
        let err = format!(
            "{:#}",
            with("startup_jitter_ms = 60001\ndeadline_seconds = 3600").unwrap_err()
        );
        assert!(err.contains("between 0 and 60000"), "{err}");
    }

    #[test]
    fn root_group_opens_the_root_to_the_group() {
        let p = plan(&format!(
            "[settings]\nroot_group = \"0\"\n{BASE}\n[[secret]]\npath = \"a\"\nref = \"x\"\n"
        ))
        .unwrap();
        assert_eq!(p.root_mode, 0o750);
    }

    #[test]
    fn all_problems_are_reported_together() {
        let err = plan(&format!(
            r#"
[settings]
deadline_seconds = 0
default_owner = "no-such-user-bootsecrets"
{BASE}
[[secret]]
path = "a"
ref = "x"
[[secret]]
path = "a"
ref = "y"
[[secret]]
path = "b"
ref = "w"
mode = "0644"
[[secret]]
path = "c"
ref = "z"
backend = "other"
"#
        ))
        .unwrap_err();
        let msg = format!("{err:#}");
        for needle in [
            "deadline_seconds",
            "no-such-user-bootsecrets",
            "0644",
            "same output as secret #1",
            "backend `other` is not configured",
        ] {
            assert!(msg.contains(needle), "{needle} missing from {msg}");
        }
    }

    #[test]
    fn credstore_layout() {
        if nix::unistd::geteuid().as_raw() != 0 {
            return; // defaults to the running user, which must be root for this layout
        }
        let p = plan(&format!(
            "[settings]\nlayout = \"credstore\"\n{BASE}\n[[secret]]\npath = \"kubelet.token\"\nref = \"x\"\n"
        ))
        .unwrap();
        assert_eq!(p.output_root, PathBuf::from(CREDSTORE_ROOT));
        assert_eq!((p.root_mode, p.secrets[0].mode), (0o700, 0o400));
        let err = plan(&format!(
            "[settings]\nlayout = \"credstore\"\nroot_group = \"0\"\n{BASE}\n[[secret]]\npath = \"a/b\"\nref = \"x\"\nowner = \"65534\"\n"
        ))
        .unwrap_err();
        let msg = format!("{err:#}");
        for needle in ["mode 0700", "not a path", "owned by root"] {
            assert!(msg.contains(needle), "{needle} missing from {msg}");
        }
    }

    #[test]
    fn file_and_directory_conflict() {
        let err = plan(&format!(
            "{BASE}\n[[secret]]\npath = \"a\"\nref = \"x\"\n[[secret]]\npath = \"a/b\"\nref = \"y\"\n"
        ))
        .unwrap_err();
        assert!(format!("{err:#}").contains("needs it to be a directory"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(crate::manifest::parse("[settings]\noutput_rot = \"/run/x\"\n").is_err());
        assert!(crate::manifest::parse("[backend.a]\ntype = \"aws\"\nregon = \"x\"\n").is_err());
        assert!(crate::manifest::parse("[backend.a]\ntype = \"nope\"\n").is_err());
        assert!(
            crate::manifest::parse("[[secret]]\npath = \"a\"\nref = \"b\"\nmod = \"0400\"\n")
                .is_err()
        );
    }

    #[test]
    fn keys_of_another_backend_type_are_errors() {
        let err = plan(&format!(
            "{BASE}[[secret]]\npath = \"a\"\nref = \"b\"\nfield = \"x\"\nkv_version = 2\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`field` does not apply to a backend of type \"aws\""),
            "{err}"
        );
        assert!(err.contains("`kv_version` does not apply"), "{err}");
    }
}
