//! One run: plan → output root → identity → fetch → write → summary.

use crate::backend::{Backend, Fetched};
use crate::error::RunError;
use crate::extract;
use crate::plan::{Plan, SecretPlan};
use crate::retry::{Deadline, RetryError, retry};
use crate::secret::Secret;
use crate::status::{self, Previous};
use crate::writer::{Output, OutputRoot, Publication, RootSpec};
use anyhow::Context as _;
use anyhow::anyhow;
use futures_util::{StreamExt, TryStreamExt, stream};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Development only: accept an output root that is not on tmpfs or ramfs.
    pub allow_non_tmpfs: bool,
}

/// What a successful run did (sizes and timings only: never values).
#[derive(Debug)]
pub struct Summary {
    pub secrets: usize,
    pub bytes: usize,
    pub elapsed: Duration,
}

struct Done {
    index: usize,
    value: Secret,
    version: Option<String>,
    fetched_at: SystemTime,
    took: Duration,
}

fn secret_label(s: &SecretPlan) -> String {
    format!(
        "secret `{}` (backend `{}`, ref {})",
        s.path,
        s.backend,
        s.reference.describe()
    )
}

fn retry_failure(label: String, e: RetryError) -> RunError {
    match e {
        RetryError::Permanent(f) => RunError::Failed(anyhow!("{label}: {f}")),
        d @ RetryError::Deadline { .. } => RunError::DeadlineExceeded(anyhow!("{label}: {d}")),
    }
}

async fn fetch_one(
    index: usize,
    s: &SecretPlan,
    backend: &Backend,
    deadline: &Deadline,
    max_secret: u64,
) -> Result<Done, RunError> {
    let start = Instant::now();
    let label = secret_label(s);
    let Fetched { value, version } = retry(&label, deadline, |_| backend.fetch(&s.reference))
        .await
        .map_err(|e| retry_failure(label.clone(), e))?;
    let value = extract::transform(value, s.json_key.as_deref(), s.encoding)
        .map_err(|e| RunError::Failed(anyhow!("{label}: {e}")))?;
    if value.len() as u64 > max_secret {
        return Err(RunError::Failed(anyhow!(
            "{label}: the value is {} bytes, larger than {max_secret} bytes \
             (settings.max_secret_bytes)",
            value.len()
        )));
    }
    Ok(Done {
        index,
        value,
        version,
        fetched_at: SystemTime::now(),
        took: start.elapsed(),
    })
}

/// What the run knows before it fetches: the previous status, and when the run started.
struct Context<'a> {
    plan: &'a Plan,
    root: &'a OutputRoot,
    previous: &'a Previous,
    started: SystemTime,
    start: Instant,
}

/// Fetches every secret (bounded concurrency; the first failure cancels the rest), then publishes
/// them all at once. Just before the flip, the status file records the coming set and the
/// `on_change` actions it will owe, so a crash right after the flip forgets neither.
async fn fetch_and_publish(
    cx: &Context<'_>,
    backends: &BTreeMap<&str, Backend>,
    deadline: &Deadline,
) -> Result<(Vec<Done>, Publication), RunError> {
    let plan = cx.plan;
    let mut done: Vec<Done> = stream::iter(plan.secrets.iter().enumerate())
        .map(|(i, s)| {
            fetch_one(
                i,
                s,
                &backends[s.backend.as_str()],
                deadline,
                plan.limits.max_secret,
            )
        })
        .buffer_unordered(plan.concurrency)
        .try_collect()
        .await?;
    done.sort_by_key(|d| d.index);

    // Write: all or nothing.
    let outputs: Vec<Output<'_>> = done
        .iter()
        .map(|d| {
            let s = &plan.secrets[d.index];
            Output {
                path: &s.path,
                value: &d.value,
                mode: s.mode,
                uid: s.owner.id,
                gid: s.group.id,
            }
        })
        .collect();
    let publication = cx
        .root
        .publish(&outputs, cx.previous.known.as_ref(), &mut |p| {
            let owed = owed_actions(plan, &done, p, &cx.previous.pending);
            let st = status_of(cx, Outcome::Publishing(&done, p), &[], &owed);
            write_status(cx.root, &st).context("cannot record the new set before publishing it")
        })
        .map_err(|e| {
            RunError::Failed(e.context(format!(
                "cannot write the secrets to {}; nothing was published",
                cx.root.path().display()
            )))
        })?;
    drop(outputs);
    Ok((done, publication))
}

pub async fn run(plan: &Plan, opts: &RunOptions) -> Result<Summary, RunError> {
    let started = SystemTime::now();
    let start = Instant::now();
    let deadline = Deadline::after(plan.deadline);
    for w in &plan.warnings {
        log::warn!("{w}");
    }

    // The root first: an unusable root fails the run before any secret is fetched.
    let root = OutputRoot::open(&RootSpec {
        path: plan.output_root.clone(),
        uid: plan.root_owner.id,
        gid: plan.root_group.id,
        mode: plan.root_mode,
        allow_non_tmpfs: opts.allow_non_tmpfs,
        // Half the deadline at most, so the run itself keeps time to fetch.
        lock_wait: plan.deadline / 2,
    })
    .map_err(RunError::Failed)?;

    let previous = status::previous(root.read_status().as_deref());
    check_owner(plan, &root, &previous)?;
    let cx = Context {
        plan,
        root: &root,
        previous: &previous,
        started,
        start,
    };
    let result = connect_fetch_publish(&cx, &deadline).await;
    let mut actions = Vec::new();
    if let Ok((done, publication)) = &result {
        log_publication(plan, done, publication);
        let owed = owed_actions(plan, done, publication, &previous.pending);
        if !owed.is_empty() {
            // Recorded before they run: a run killed meanwhile leaves them pending.
            let st = status_of(&cx, Outcome::Published(done, publication), &[], &owed);
            if let Err(e) = write_status(&root, &st) {
                log::warn!("{e:#}");
            }
            actions = run_actions(owed).await;
        }
    }
    let still_pending: Vec<Vec<String>> = match &result {
        Ok(_) => actions
            .iter()
            .filter(|a| !a.ok)
            .map(|a| a.argv.clone())
            .collect(),
        // Nothing ran: everything owed before is still owed.
        Err(_) => previous.pending.clone(),
    };
    let outcome = match &result {
        Ok((done, publication)) => Outcome::Published(done, publication),
        Err(e) => Outcome::Failed(e),
    };
    let st = status_of(&cx, outcome, &actions, &still_pending);
    if let Err(e) = write_status(&root, &st) {
        log::warn!("{e:#}");
    }
    let (done, publication) = result?;
    let failed: Vec<&Action> = actions.iter().filter(|a| !a.ok).collect();

    let summary = Summary {
        secrets: done.len(),
        bytes: done.iter().map(|d| d.value.len()).sum(),
        elapsed: start.elapsed(),
    };
    if !failed.is_empty() {
        return Err(RunError::Failed(anyhow!(
            "the secrets were published, but on_change command(s) failed: {}",
            failed
                .iter()
                .map(|a| format!("`{}` ({})", a.command, a.result))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if publication.any_change() {
        log::info!(
            "done: {} secret(s), {} bytes published in {} in {} ms",
            summary.secrets,
            summary.bytes,
            root.path().display(),
            summary.elapsed.as_millis()
        );
    } else {
        log::info!(
            "done: the {} secret(s) in {} are unchanged ({} ms)",
            summary.secrets,
            root.path().display(),
            summary.elapsed.as_millis()
        );
    }
    Ok(summary)
}

/// One output root belongs to one manifest: a second manifest pointed at the same root would
/// publish its own set over the first one's (and remove the first one's files). The status file
/// names the owner; a root without one (new, or from an older version) is taken over.
fn check_owner(plan: &Plan, root: &OutputRoot, previous: &Previous) -> Result<(), RunError> {
    let (Some(owner), Some(mine)) = (&previous.manifest, &plan.manifest_path) else {
        return Ok(());
    };
    if Path::new(owner) == mine.as_path() {
        return Ok(());
    }
    Err(RunError::Failed(anyhow!(
        "output root {root} holds the secrets of manifest {owner} (see {root}/{status}), not of \
         {mine}: give each manifest its own settings.output_root, or remove {root} (bootsecrets \
         recreates it) to hand it over",
        root = root.path().display(),
        status = crate::writer::STATUS_FILE,
        mine = mine.display(),
    )))
}

/// One line per secret (written or unchanged) and per removed path: sizes, modes, versions and
/// timings, never values.
fn log_publication(plan: &Plan, done: &[Done], publication: &Publication) {
    for (d, changed) in done.iter().zip(&publication.changed) {
        let s = &plan.secrets[d.index];
        log::info!(
            "{} {} ({:04o} {}:{}, {} bytes) from backend `{}` ({}){} in {} ms",
            if *changed { "wrote" } else { "unchanged" },
            s.path,
            s.mode,
            s.owner,
            s.group,
            d.value.len(),
            s.backend,
            plan.backends[&s.backend].kind(),
            d.version
                .as_deref()
                .map(|v| format!(" version {v}"))
                .unwrap_or_default(),
            d.took.as_millis()
        );
    }
    for r in &publication.removed {
        log::info!("removed {r}: no longer in the manifest");
    }
}

/// Identity, fetch and publication. Backends that logged in are always finished (their tokens
/// revoked) before this returns, whatever happened.
async fn connect_fetch_publish(
    cx: &Context<'_>,
    deadline: &Deadline,
) -> Result<(Vec<Done>, Publication), RunError> {
    let plan = cx.plan;
    // Identity: every backend in use, concurrently.
    let mut attempts: futures_util::stream::FuturesUnordered<_> = plan
        .used_backends()
        .map(|(name, cfg)| async move {
            match Backend::connect(name, cfg, deadline, &plan.limits).await {
                Ok(b) => {
                    log::debug!("backend `{name}` ({}): identity established", cfg.kind());
                    Ok((name.as_str(), b))
                }
                Err(e) => {
                    let users: Vec<String> = plan
                        .secrets
                        .iter()
                        .filter(|s| &s.backend == name)
                        .map(|s| format!("`{}`", s.path))
                        .collect();
                    let label = format!(
                        "backend `{name}` ({}), needed by secret(s) {}",
                        cfg.kind(),
                        users.join(", ")
                    );
                    Err(retry_failure(label, e))
                }
            }
        })
        .collect();
    // The first failure ends the run without waiting for the other backends (dropping their
    // futures cancels them; a login cut off that way leaves at most a token that expires with
    // its TTL). Backends that did connect are finished below, whatever happened.
    let mut backends: BTreeMap<&str, Backend> = BTreeMap::new();
    let mut failure = None;
    while let Some(a) = attempts.next().await {
        match a {
            Ok((name, b)) => {
                backends.insert(name, b);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(attempts);
    let result = match failure {
        Some(e) => Err(e),
        None => fetch_and_publish(cx, &backends, deadline).await,
    };
    futures_util::future::join_all(backends.values().map(Backend::finish)).await;
    result
}

/// An `on_change` command that ran, and how it ended.
pub struct Action {
    pub argv: Vec<String>,
    pub command: String,
    pub result: String,
    pub ok: bool,
}

/// The budget of the `on_change` commands. A run takes at most `deadline_seconds`, plus
/// [`crate::settings::FINISH_BUDGET`] (token revocation), this, and [`crate::settings::SLACK`];
/// `check` warns when that does not fit the shipped units' `TimeoutStartSec=` (see
/// docs/reliability.md).
pub use crate::settings::ACTION_BUDGET;

/// The `on_change` commands this run owes, in manifest order, each once: those of the secrets a
/// refresh changed (never on the first publication, at boot, when no consumer runs yet), and
/// those a previous run could not complete (`pending_actions` in the status file) that the
/// manifest still names. A command that fails stays pending, so a rotation is never forgotten.
fn owed_actions(
    plan: &Plan,
    done: &[Done],
    publication: &Publication,
    pending: &[Vec<String>],
) -> Vec<Vec<String>> {
    let mut commands: Vec<Vec<String>> = Vec::new();
    for (d, changed) in done.iter().zip(&publication.changed) {
        if let Some(argv) = &plan.secrets[d.index].on_change
            && ((*changed && publication.previous) || pending.contains(argv))
            && !commands.contains(argv)
        {
            commands.push(argv.clone());
        }
    }
    commands
}

/// The directories the `PATH` of an `on_change` command may hold, in order; those not owned by
/// root or writable by group or others (on the whole path) are left out when it runs.
pub const ACTION_PATH: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Runs the owed `on_change` commands with an empty environment but for a `PATH` of root's own
/// directories, no stdin, and the unit's stdout and stderr (the journal); no value or token
/// reaches them. Each program is checked (StrictModes) just before it runs, and the path that
/// runs is the resolved one that was checked, so a link swapped in between cannot change it.
async fn run_actions(commands: Vec<Vec<String>>) -> Vec<Action> {
    let budget_end = tokio::time::Instant::now() + ACTION_BUDGET;
    let path = crate::credfile::safe_search_path(&ACTION_PATH);
    let mut out = Vec::new();
    for argv in commands {
        let command = argv.join(" ");
        let mut done = |result: String, ok: bool, argv: Vec<String>| {
            if ok {
                log::info!("on_change command `{command}` succeeded");
            } else {
                log::error!("on_change command `{command}` failed: {result}");
            }
            out.push(Action {
                argv,
                command: command.clone(),
                result,
                ok,
            });
        };
        let program = match crate::credfile::check_executable("on_change command", &argv[0]) {
            Ok(p) => p,
            Err(e) => {
                done(format!("refused: {e}"), false, argv);
                continue;
            }
        };
        let left = budget_end.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            done(
                format!(
                    "not run: the {} s budget for on_change commands was spent",
                    ACTION_BUDGET.as_secs()
                ),
                false,
                argv,
            );
            continue;
        }
        log::info!("running on_change command `{command}`");
        let (ok, result) = run_checked(&program, &argv, &path, left).await;
        done(result, ok, argv);
    }
    out
}

/// Runs the checked, resolved `program` with `argv` (`argv[0]` as the manifest wrote it, which
/// multi-call programs read) and `path` as the whole environment, for at most `left`.
async fn run_checked(
    program: &Path,
    argv: &[String],
    path: &str,
    left: Duration,
) -> (bool, String) {
    let child = tokio::process::Command::new(program)
        .arg0(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    match child {
        Err(e) => (
            false,
            format!("cannot start: {}", crate::error::describe_io(&e)),
        ),
        Ok(mut c) => match tokio::time::timeout(left, c.wait()).await {
            Err(_) => (false, format!("killed after {} s", left.as_secs())),
            Ok(Err(e)) => (
                false,
                format!("cannot wait: {}", crate::error::describe_io(&e)),
            ),
            Ok(Ok(st)) if st.success() => (true, "exit 0".to_string()),
            Ok(Ok(st)) => (
                false,
                match st.code() {
                    Some(c) => format!("exit {c}"),
                    None => "killed by a signal".to_string(),
                },
            ),
        },
    }
}

fn write_status(root: &OutputRoot, status: &status::Status) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(status).context("cannot encode the status file")?;
    root.write_status(&json)
        .context("cannot write the status file")
}

/// How the run ended, or where it is, for the status file.
enum Outcome<'a> {
    /// A new set is about to be published (written just before the flip).
    Publishing(&'a [Done], &'a Publication),
    /// The set is published (changed or not).
    Published(&'a [Done], &'a Publication),
    Failed(&'a RunError),
}

/// The status file's content.
fn status_of(
    cx: &Context<'_>,
    outcome: Outcome<'_>,
    actions: &[Action],
    pending: &[Vec<String>],
) -> status::Status {
    let plan = cx.plan;
    let mut run = status::RunStatus {
        started: status::rfc3339(cx.started),
        finished: status::rfc3339(SystemTime::now()),
        duration_ms: cx.start.elapsed().as_millis(),
        outcome: "published",
        exit_code: 0,
        error: None,
        changed: Vec::new(),
        removed: Vec::new(),
        actions: actions
            .iter()
            .map(|a| status::ActionStatus {
                command: a.command.clone(),
                result: a.result.clone(),
            })
            .collect(),
        pending_actions: pending.to_vec(),
    };
    if actions.iter().any(|a| !a.ok) {
        run.exit_code = 1;
        run.error = Some("the secrets were published, but on_change command(s) failed".into());
    }
    let (data, secrets) = match outcome {
        Outcome::Publishing(done, publication) | Outcome::Published(done, publication) => {
            if matches!(outcome, Outcome::Publishing(..)) {
                run.outcome = "publishing";
            } else if !publication.any_change() {
                run.outcome = "unchanged";
            }
            run.removed = publication.removed.clone();
            let list: Vec<status::SecretStatus> = done
                .iter()
                .zip(&publication.changed)
                .zip(&publication.records)
                .map(|((d, changed), r)| {
                    let s = &plan.secrets[d.index];
                    if *changed {
                        run.changed.push(s.path.to_string());
                    }
                    status::SecretStatus {
                        path: s.path.to_string(),
                        backend: s.backend.clone(),
                        backend_type: plan.backends[&s.backend].kind(),
                        reference: s.reference.describe(),
                        version: d.version.clone(),
                        sha256: r.sha256.clone(),
                        size: d.value.len(),
                        mode: format!("{:04o}", s.mode),
                        owner: s.owner.to_string(),
                        group: s.group.to_string(),
                        uid: r.uid,
                        gid: r.gid,
                        inode: r.inode,
                        ctime: status::SecretStatus::ctime_of(r),
                        fetched_at: status::rfc3339(d.fetched_at),
                        fetch_ms: d.took.as_millis(),
                    }
                })
                .collect();
            (
                Some(publication.version.clone()),
                serde_json::to_value(list).unwrap_or_default(),
            )
        }
        Outcome::Failed(e) => {
            run.outcome = match e {
                RunError::DeadlineExceeded(_) => "deadline_exceeded",
                _ => "failed",
            };
            run.exit_code = e.exit_code();
            run.error = Some(format!("{:#}", e.inner()));
            (cx.previous.data.clone(), cx.previous.secrets.clone())
        }
    };
    status::Status {
        format: status::FORMAT,
        manifest: plan
            .manifest_path
            .as_ref()
            .map(|p| p.display().to_string())
            .or_else(|| cx.previous.manifest.clone()),
        data,
        run,
        secrets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The program that runs is the one that was checked: a link swapped after the check (here
    /// between `check_executable` and the spawn) changes nothing.
    #[tokio::test]
    async fn the_checked_program_is_the_one_that_runs() {
        let dir = std::path::PathBuf::from(format!(
            "/dev/shm/bootsecrets-unit-{}-onchange",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let marker = dir.join("ran");
        for (name, word) in [("good", "good"), ("evil", "evil")] {
            let p = dir.join(name);
            std::fs::write(
                &p,
                format!("#!/bin/sh\necho {word} > {}\n", marker.display()),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let link = dir.join("reload");
        std::os::unix::fs::symlink(dir.join("good"), &link).unwrap();
        let argv = vec![link.display().to_string()];
        let program = crate::credfile::check_executable("on_change command", &argv[0]);
        if nix::unistd::geteuid().as_raw() != 0 {
            return; // StrictModes wants root-owned programs
        }
        let program = program.unwrap();
        assert_eq!(program, dir.join("good"));
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(dir.join("evil"), &link).unwrap();
        let (ok, result) = run_checked(&program, &argv, "/usr/bin:/bin", ACTION_BUDGET).await;
        assert!(ok, "{result}");
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "good\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
