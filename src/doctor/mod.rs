//! `bootsecrets doctor`: is this node ready to get its secrets, and if not, what to fix.
//!
//! Run on a node as root, it checks in order: the manifest (as `check` does); the platform (the
//! kernel command line and DMI) against the manifest's backends; each backend's identity (IMDSv2,
//! Azure IMDS, the GCE metadata server, a Vault login), naming what it obtained (a role, an
//! identity, a service account; never a token); each secret's reference, by a metadata-only call
//! where the API has one (DescribeSecret, Key Vault's version list, GetSecretVersion, Vault's KV
//! v2 metadata): never a value; the output root (tmpfs, owner, mode, no ACL); the unit ordering
//! (`kubelet.service` requires and follows `bootsecrets.service`); and the last run's
//! `.status.json`. Every failure comes with a hint. Nothing is written anywhere: a Vault token a
//! login minted is revoked, as after a run.

pub mod platform;

use crate::backend::{Backend, BackendConfig, Probe, Spends};
use crate::plan::Plan;
use crate::retry::Deadline;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Where doctor looks: the real places on a node; tests point them elsewhere.
#[derive(Debug, Clone)]
pub struct Places {
    pub cmdline: PathBuf,
    pub dmi: PathBuf,
    /// Present when systemd runs as PID 1 (`sd_booted(3)`).
    pub systemd_marker: PathBuf,
}

impl Default for Places {
    fn default() -> Self {
        Places {
            cmdline: "/proc/cmdline".into(),
            dmi: "/sys/class/dmi/id".into(),
            systemd_marker: "/run/systemd/system".into(),
        }
    }
}

/// Time doctor gives each backend's identity (it retries transient errors within it).
pub const IDENTITY_BUDGET: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
    Skip,
}

/// One check and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: String,
    pub status: Verdict,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub healthy: bool,
    pub checks: Vec<Finding>,
}

impl Report {
    fn add(&mut self, check: impl Into<String>, status: Verdict, detail: impl Into<String>) {
        self.checks.push(Finding {
            check: check.into(),
            status,
            detail: detail.into(),
            hint: None,
        });
    }

    fn add_hint(
        &mut self,
        check: impl Into<String>,
        status: Verdict,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.checks.push(Finding {
            check: check.into(),
            status,
            detail: detail.into(),
            hint: Some(hint.into()),
        });
    }

    /// The report for a terminal: a line per check, its hint indented below.
    pub fn human(&self) -> String {
        let mut out = String::new();
        for f in &self.checks {
            let tag = match f.status {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "skip",
            };
            out += &format!("{tag}  {:<24} {}\n", f.check, f.detail);
            if let Some(h) = &f.hint {
                out += &format!("{:30}hint: {h}\n", "");
            }
        }
        out += if self.healthy {
            "healthy: nothing stands between this node and its secrets\n"
        } else {
            "NOT healthy: fix what FAIL lines say, top down\n"
        };
        out
    }
}

/// A hint for an identity failure, from bootsecrets' own words in its message.
fn identity_hint(message: &str) -> &'static str {
    let has = |s: &str| message.contains(s);
    if has("prohibit route") {
        "the metadata service is locked to systemd-imdsd (see \"metadata route\" above): enable \
         systemd-imdsd.socket, or boot with systemd.imds.network=unlocked"
    } else if has("IMDS") && (has("no answer to the token request") || has("timed out")) {
        "IMDSv2 token requests get no answer: in a container (or anything behind one more network \
         hop) the instance's metadata hop limit (HttpPutResponseHopLimit) must be 2 or more; on \
         the host, check that the instance metadata endpoint is enabled (HttpEndpoint=enabled)"
    } else if has("IMDS") && has("refused the IMDSv2 session token request") {
        "the token request was forwarded: run bootsecrets on the node itself, not behind a proxy"
    } else if has("does not support IMDSv2") || has("does not implement IMDSv2") {
        "require IMDSv2 on the instance (HttpTokens=required); bootsecrets never uses IMDSv1"
    } else if has("IAM role") || has("instance profile") {
        "attach an instance profile whose role may call secretsmanager:GetSecretValue on the \
         secrets"
    } else if has("not assigned to this VM") {
        "assign the managed identity to the VM (or the scale set), or name the right one with \
         client_id; a new assignment takes a minute to reach IMDS"
    } else if has("Azure IMDS") {
        "Azure IMDS (169.254.169.254) must be reachable from the node, without a proxy"
    } else if has("metadata server") || has("Metadata-Flavor") {
        "the GCE metadata server (metadata.google.internal) must be reachable, without a proxy, \
         and the instance must have a service account"
    } else if has("its use limit spent") {
        "the token from the Vault login ran out during the run: the role's token_num_uses must be \
         0 or cover a run's requests, and its token_ttl the run"
    } else if has("Vault does not know it") {
        "the token in token_file has expired or was revoked: place a new one (a periodic token \
         lives as long as the node runs at least once per period)"
    } else if has("login refused") || has("permission denied (403)") {
        "the Vault role or policy refuses this node: check the auth method's role bindings and \
         the token's policies"
    } else if has("sealed") {
        "Vault is sealed: unseal it (bootsecrets waits for it within its deadline)"
    } else if has("TLS") {
        "the certificate of the endpoint is not trusted: ca_file / ca_bundle, or the node's clock"
    } else if has("did not resolve") || has("DNS") {
        "the endpoint's host name does not resolve from the node: DNS, or the endpoint setting"
    } else {
        "see the message; `bootsecrets run -v` shows every attempt"
    }
}

/// The cloud a backend's identity comes from, if it comes from one.
fn cloud_of(cfg: &BackendConfig) -> Option<platform::Cloud> {
    use platform::Cloud;
    match cfg.kind() {
        "aws" => Some(Cloud::Aws),
        "azure" => Some(Cloud::Azure),
        "gcp" => Some(Cloud::Gcp),
        _ => {
            let d = cfg.describe();
            if d.contains("aws (IAM) at auth/") {
                Some(Cloud::Aws)
            } else if d.contains("azure at auth/") {
                Some(Cloud::Azure)
            } else if d.contains("gcp at auth/") {
                Some(Cloud::Gcp)
            } else {
                None
            }
        }
    }
}

/// What the operator allows doctor to do beyond looking.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Log in with an AppRole secret_id although a login may spend one of its uses.
    pub use_secret_id: bool,
}

/// Runs every check for the manifest at `manifest`.
pub async fn run(manifest: &Path, places: &Places, opts: Options) -> Report {
    let mut report = Report::default();
    let plan = match crate::plan::load(manifest) {
        Ok(p) => {
            report.add(
                "manifest",
                Verdict::Ok,
                format!(
                    "{} is valid: {} secret(s){}, backend(s) {}",
                    manifest.display(),
                    p.secrets.len(),
                    if p.templates.is_empty() {
                        String::new()
                    } else {
                        format!(", {} template(s)", p.templates.len())
                    },
                    p.backends.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
            for w in &p.warnings {
                report.add("manifest", Verdict::Warn, w.clone());
            }
            // The on_change programs (a backend's files are reported with its identity).
            for w in p.on_change_findings() {
                report.add("on_change", Verdict::Warn, w);
            }
            Some(p)
        }
        Err(e) => {
            report.add_hint(
                "manifest",
                Verdict::Fail,
                format!("{e:#}"),
                "fix the manifest (`bootsecrets check` lists every problem); nothing else can \
                 be checked without it",
            );
            None
        }
    };
    if let Some(plan) = &plan {
        platform_check(&mut report, plan, places);
        metadata_route(&mut report, plan, places);
        backends_and_secrets(&mut report, plan, opts).await;
        output_root(&mut report, plan);
        last_run(&mut report, plan);
    }
    unit_ordering(&mut report, places);
    report.healthy = !report.checks.iter().any(|f| f.status == Verdict::Fail);
    report
}

fn platform_check(report: &mut Report, plan: &Plan, places: &Places) {
    let p = platform::detect(&places.cmdline, &places.dmi);
    let seen = if p.evidence.is_empty() {
        "nothing on the kernel command line or in DMI".to_string()
    } else {
        p.evidence.join(", ")
    };
    let mut mismatches = Vec::new();
    for (name, cfg) in plan.used_backends() {
        if let Some(want) = cloud_of(cfg)
            && p.cloud != Some(want)
        {
            mismatches.push(format!(
                "backend `{name}` uses the {} instance identity",
                want.name()
            ));
        }
    }
    let here = p
        .cloud
        .map(|c| c.name())
        .unwrap_or("no cloud bootsecrets knows");
    if mismatches.is_empty() {
        report.add("platform", Verdict::Ok, format!("{here} ({seen})"));
    } else if p.cloud.is_none() {
        // Off any cloud (a laptop, CI, a VM of one's own): the identity below cannot work here,
        // whatever the manifest says.
        report.add_hint(
            "platform",
            Verdict::Warn,
            format!(
                "this machine is on no cloud bootsecrets knows ({seen}), but {}",
                mismatches.join("; ")
            ),
            "run doctor on a node of that cloud; off it, the instance identity (and every check \
             that needs it) cannot succeed",
        );
    } else {
        report.add_hint(
            "platform",
            Verdict::Warn,
            format!(
                "this node looks like {here} ({seen}), but {}",
                mismatches.join("; ")
            ),
            "a manifest made for another cloud: check the platform, or the backend types",
        );
    }
}

/// The route to the metadata service: open, or locked by systemd-imdsd (systemd 261+), and
/// then whether the daemon answers and for which vendor. Only when a backend's identity comes
/// from the metadata service.
fn metadata_route(report: &mut Report, plan: &Plan, places: &Places) {
    use crate::identity::imdsd::{self, Route};
    let clouds: Vec<(String, platform::Cloud)> = plan
        .used_backends()
        .filter_map(|(name, cfg)| cloud_of(cfg).map(|c| (name.clone(), c)))
        .collect();
    if clouds.is_empty() {
        return;
    }
    let setting = platform::kernel_setting(&places.cmdline, "systemd.imds.network")
        .map(|v| format!("systemd.imds.network={v} on the kernel command line"))
        .unwrap_or_else(|| "no systemd.imds.network= on the kernel command line".into());
    match imdsd::probe_route(Duration::from_secs(1)) {
        Route::Open(how) => report.add(
            "metadata route",
            Verdict::Ok,
            format!("{} is reachable: {how} ({setting})", imdsd::METADATA_IPV4),
        ),
        Route::Locked => {
            let socket = imdsd::socket();
            match imdsd::vendor(&socket, Duration::from_secs(5)) {
                Ok(vendor) => {
                    let vendor = vendor.unwrap_or_else(|| "no vendor".into());
                    let azure: Vec<&str> = clouds
                        .iter()
                        .filter(|(_, c)| *c == platform::Cloud::Azure)
                        .map(|(n, _)| n.as_str())
                        .collect();
                    let detail = format!(
                        "{} is locked by a prohibit route ({setting}); systemd-imdsd answers at {} (vendor {vendor}), and bootsecrets asks it for the AWS and GCE identities",
                        imdsd::METADATA_IPV4,
                        socket.display()
                    );
                    if azure.is_empty() {
                        report.add("metadata route", Verdict::Ok, detail);
                    } else {
                        report.add_hint(
                            "metadata route",
                            Verdict::Fail,
                            format!(
                                "{detail}; backend(s) {} need Azure's managed-identity token, which systemd-imdsd cannot fetch",
                                azure.join(", ")
                            ),
                            "boot with systemd.imds.network=unlocked (every process on the node may then reach the metadata service)",
                        );
                    }
                }
                Err(why) => report.add_hint(
                    "metadata route",
                    Verdict::Fail,
                    format!(
                        "{} is locked by a prohibit route ({setting}), and systemd-imdsd cannot be asked: {why}",
                        imdsd::METADATA_IPV4
                    ),
                    "enable systemd-imdsd.socket (bootsecrets then asks it), or boot with systemd.imds.network=unlocked",
                ),
            }
        }
    }
}

/// Every secret of backend `name` as not checked, with why.
fn not_checked(report: &mut Report, plan: &Plan, name: &str, why: &str) {
    for s in plan.secrets.iter().filter(|s| s.backend == name) {
        report.add(
            format!("secret `{}`", s.path),
            Verdict::Skip,
            format!("not checked: {why}"),
        );
    }
}

async fn backends_and_secrets(report: &mut Report, plan: &Plan, opts: Options) {
    let skipped = crate::runner::skipped_secrets(plan);
    let skip: std::collections::BTreeSet<usize> = skipped.iter().map(|(i, _)| *i).collect();
    for (name, cfg) in plan.used_backends() {
        let check = format!("identity `{name}`");
        let need = plan.needs(name, &skip);
        let problems = plan.check_files(name);
        if !problems.is_empty() {
            // A run checks them only when it needs the backend: a failure only where a run
            // would fail on it now.
            let (verdict, hint) = if !need.required.is_empty() {
                (
                    Verdict::Fail,
                    "a run would fail on it and kubelet would not start: put the file in place \
                     with the owner and mode the message names"
                        .to_string(),
                )
            } else if !need.optional.is_empty() {
                (
                    Verdict::Warn,
                    format!(
                        "only optional secret(s) {} need it now: a run publishes the rest \
                         without them",
                        plan.quoted(&need.optional)
                    ),
                )
            } else {
                (
                    Verdict::Warn,
                    format!(
                        "not needed now: secret(s) {} are skipped (unless_exists); a boot where \
                         that path is missing would fail on it",
                        plan.quoted(&need.skipped)
                    ),
                )
            };
            report.add_hint(check, verdict, problems.join("; "), hint);
            continue;
        }
        if need.required.is_empty() && need.optional.is_empty() {
            report.add(
                check,
                Verdict::Skip,
                format!(
                    "not checked: every secret it serves is skipped now ({}; unless_exists)",
                    plan.quoted(&need.skipped)
                ),
            );
            continue;
        }
        let deadline = Deadline::after(IDENTITY_BUDGET);
        // A diagnosis never spends a credential a run needs.
        match cfg.login_spends() {
            Some(Spends::Wrapped) => {
                match Backend::inspect_wrapped(name, cfg, &deadline, &plan.limits).await {
                    Ok(d) => report.add(check, Verdict::Ok, d),
                    Err(e) => report.add_hint(
                        check,
                        Verdict::Fail,
                        format!("{} ({}): {e}", cfg.kind(), cfg.describe()),
                        "a run would fail on it and kubelet would not start: deliver a fresh \
                         wrapped secret_id before the run",
                    ),
                }
                not_checked(
                    report,
                    plan,
                    name,
                    "reading a reference needs a login, which would spend the wrapped secret_id",
                );
                continue;
            }
            Some(Spends::MaybeLimitedUses) if !opts.use_secret_id => {
                report.add_hint(
                    check,
                    Verdict::Skip,
                    format!(
                        "not checked: a login with the secret_id in {} spends one of its uses \
                         when the role limits them (secret_id_num_uses), which the node cannot see",
                        cfg.describe()
                    ),
                    "`bootsecrets doctor --use-secret-id` logs in (and spends a use, if they are \
                     limited)",
                );
                not_checked(
                    report,
                    plan,
                    name,
                    &format!("backend `{name}` was not logged in to"),
                );
                continue;
            }
            _ => {}
        }
        let backend = match Backend::connect(name, cfg, &deadline, &plan.limits).await {
            Ok(b) => b,
            Err(e) => {
                let message = e.to_string();
                report.add_hint(
                    check,
                    Verdict::Fail,
                    format!("{} ({}): {message}", cfg.kind(), cfg.describe()),
                    identity_hint(&message),
                );
                not_checked(
                    report,
                    plan,
                    name,
                    &format!("backend `{name}` has no identity"),
                );
                continue;
            }
        };
        report.add(check.clone(), Verdict::Ok, backend.identity());
        for problem in backend.diagnose().await {
            report.add(check.clone(), Verdict::Warn, problem);
        }
        // The first secret doctor may not check says why, once; the others point to it.
        let mut not_allowed: Option<String> = None;
        for (i, s) in plan.secrets.iter().enumerate() {
            if &s.backend != name {
                continue;
            }
            let check = format!("secret `{}`", s.path);
            if let Some((_, p)) = skipped.iter().find(|(j, _)| *j == i) {
                report.add(
                    check,
                    Verdict::Skip,
                    format!(
                        "skipped by a run now: {} exists (unless_exists)",
                        p.display()
                    ),
                );
                continue;
            }
            let fail = if s.optional {
                Verdict::Warn
            } else {
                Verdict::Fail
            };
            match backend.probe(&s.reference).await {
                Ok(Probe::Found(d)) => report.add(check, Verdict::Ok, d),
                Ok(Probe::NotAllowed(_)) if not_allowed.is_some() => report.add(
                    check,
                    Verdict::Skip,
                    format!(
                        "not checked, for the reason given for secret `{}`",
                        not_allowed.as_deref().unwrap_or_default()
                    ),
                ),
                Ok(Probe::NotAllowed(d)) => {
                    not_allowed = Some(s.path.to_string());
                    report.add_hint(
                        check,
                        Verdict::Warn,
                        format!("not checked: {d}"),
                        "grant the metadata read too if you want doctor to check references; a \
                         run does not need it",
                    )
                }
                Ok(Probe::NoMetadata(d)) => report.add(check, Verdict::Skip, d),
                Err(e) => report.add_hint(
                    check,
                    fail,
                    format!("{}: {}", s.reference.describe(), e.message),
                    if s.optional {
                        "optional: a run publishes the rest without it"
                    } else {
                        "a run would fail on it and kubelet would not start: fix the reference \
                         or the permissions the message names"
                    },
                ),
            }
        }
        backend.finish().await;
    }
}

fn output_root(report: &mut Report, plan: &Plan) {
    let root = &plan.output_root;
    let check = "output root";
    let st = match nix::sys::stat::lstat(root) {
        Ok(st) => st,
        Err(nix::errno::Errno::ENOENT) => {
            report.add_hint(
                check,
                Verdict::Warn,
                format!("{} does not exist yet", root.display()),
                "bootsecrets.service makes it (ExecStartPre=) on its first start",
            );
            return;
        }
        Err(e) => {
            report.add(
                check,
                Verdict::Fail,
                format!("cannot examine {}: {e}", root.display()),
            );
            return;
        }
    };
    let mut problems = Vec::new();
    let is_dir = nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
        & nix::sys::stat::SFlag::S_IFMT
        == nix::sys::stat::SFlag::S_IFDIR;
    if !is_dir {
        problems.push("is not a directory (a symbolic link is refused too)".to_string());
    }
    if let Ok(fs) = nix::sys::statfs::statfs(root) {
        let t = fs.filesystem_type().0;
        if !crate::writer::in_memory(t) {
            problems.push(format!("is not on tmpfs or ramfs (filesystem type {t:#x})"));
        }
    }
    if (st.st_uid, st.st_gid) != (plan.root_owner.id, plan.root_group.id) {
        problems.push(format!(
            "is owned by {}:{}, not {}:{} (the next run sets it)",
            st.st_uid, st.st_gid, plan.root_owner.id, plan.root_group.id
        ));
    }
    if st.st_mode & 0o7777 != plan.root_mode {
        problems.push(format!(
            "has mode {:04o}, not {:04o} (the next run sets it)",
            st.st_mode & 0o7777,
            plan.root_mode
        ));
    }
    if problems.is_empty() {
        report.add(
            check,
            Verdict::Ok,
            format!(
                "{} on tmpfs, {:04o} {}:{}",
                root.display(),
                plan.root_mode,
                plan.root_owner,
                plan.root_group
            ),
        );
    } else {
        let fatal = problems.iter().any(|p| !p.contains("the next run sets it"));
        report.add_hint(
            check,
            if fatal { Verdict::Fail } else { Verdict::Warn },
            format!("{} {}", root.display(), problems.join("; ")),
            "the root must be a tmpfs directory of bootsecrets' own (see docs/manifest.md, \
             settings.output_root)",
        );
    }
}

fn last_run(report: &mut Report, plan: &Plan) {
    let path = plan.output_root.join(crate::writer::STATUS_FILE);
    let check = "last run";
    let Ok(text) = std::fs::read(&path) else {
        report.add(check, Verdict::Skip, format!("no {} yet", path.display()));
        return;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) else {
        report.add(
            check,
            Verdict::Warn,
            format!("{} is not JSON", path.display()),
        );
        return;
    };
    let run = &v["run"];
    let outcome = run["outcome"].as_str().unwrap_or("unknown");
    let finished = run["finished"].as_str().unwrap_or("?");
    let age = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(|d| format!("{} s ago", d.as_secs()))
        .unwrap_or_else(|| "at an unknown time".into());
    let pending = run["pending_actions"].as_array().map_or(0, Vec::len);
    let detail = format!("{outcome}, finished {finished} ({age})");
    match outcome {
        "published" | "unchanged" if pending == 0 => report.add(check, Verdict::Ok, detail),
        "published" | "unchanged" => report.add_hint(
            check,
            Verdict::Warn,
            format!("{detail}; {pending} on_change command(s) still owed"),
            "they run with the next refresh (`systemctl start bootsecrets-refresh.service` runs \
             one now); `journalctl -u bootsecrets -u bootsecrets-refresh` says why they failed",
        ),
        _ => report.add_hint(
            check,
            Verdict::Fail,
            format!(
                "{detail}: {}",
                run["error"].as_str().unwrap_or("no error recorded")
            ),
            "`journalctl -u bootsecrets -u bootsecrets-refresh` and `run.failures` in the status \
             file name every failing secret. After fixing: `systemctl start \
             bootsecrets-refresh.service` on a running node; if kubelet did not start, `systemctl \
             start kubelet.service` (it runs bootsecrets.service first)",
        ),
    }
}

fn unit_ordering(report: &mut Report, places: &Places) {
    let check = "unit ordering";
    if !places.systemd_marker.exists() {
        report.add(check, Verdict::Skip, "systemd is not running here");
        return;
    }
    let out = std::process::Command::new("systemctl")
        .args([
            "show",
            "kubelet.service",
            "-p",
            "LoadState",
            "-p",
            "Requires",
            "-p",
            "After",
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output();
    let Ok(out) = out else {
        report.add(check, Verdict::Skip, "systemctl cannot be run");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let prop = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_string()
    };
    if prop("LoadState") != "loaded" {
        report.add_hint(
            check,
            Verdict::Warn,
            "kubelet.service is not installed here",
            "nothing else needs to wait for bootsecrets, or the consumer has another name",
        );
        return;
    }
    let requires = prop("Requires")
        .split_whitespace()
        .any(|u| u == "bootsecrets.service");
    let after = prop("After")
        .split_whitespace()
        .any(|u| u == "bootsecrets.service");
    if requires && after {
        report.add(
            check,
            Verdict::Ok,
            "kubelet.service requires bootsecrets.service and starts after it",
        );
    } else {
        report.add_hint(
            check,
            Verdict::Fail,
            format!(
                "kubelet.service {}",
                match (requires, after) {
                    (false, false) => "neither requires nor follows bootsecrets.service",
                    (false, true) => "follows bootsecrets.service but does not require it",
                    _ => "requires bootsecrets.service but may start before it",
                }
            ),
            "enable bootsecrets.service (its [Install] RequiredBy=kubelet.service), or install \
             the kubelet drop-in (`render --kubelet-dropin`)",
        );
    }
}
