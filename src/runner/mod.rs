//! One run: plan → output root → conditions → identity → fetch → write → actions → status.
//!
//! One file per step: [`fetch`] (conditions, identity, fetch, every failure), [`actions`]
//! (`on_change`), [`report`] (the status file); this file runs them in order.

mod actions;
mod fetch;
mod report;
mod templates;

use crate::error::RunError;
use crate::plan::Plan;
use crate::retry::Deadline;
use crate::status::{self, Previous};
use crate::writer::{Output, OutputRoot, Publication, RootSpec};
use actions::{Action, owed_actions, run_actions};
use anyhow::Context as _;
use anyhow::anyhow;
use fetch::{Done, Failure};
use report::{Outcome, status_of, write_status};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

pub use actions::{ACTION_BUDGET, ACTION_PATH};
/// The secrets whose `unless_exists` path exists now (what a run would skip).
pub use fetch::skipped as skipped_secrets;

#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Development only: accept an output root that is not on tmpfs or ramfs.
    pub allow_non_tmpfs: bool,
    pub on_change: OnChange,
}

/// What a run does with the `on_change` commands it owes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnChange {
    /// Run them, each checked just before (a refresh).
    #[default]
    Run,
    /// Record them as owed and start bootsecrets-refresh.service without waiting for it: the
    /// boot gate must never wait on a unit ordered after it (a `systemctl restart` of a consumer
    /// that is ordered after the gate would wait for the gate's own start job).
    Defer,
}

/// What a successful run did (sizes and timings only: never values).
#[derive(Debug)]
pub struct Summary {
    pub secrets: usize,
    pub bytes: usize,
    pub elapsed: Duration,
}

/// What the status file needs to know about the run besides its outcome.
struct Context<'a> {
    plan: &'a Plan,
    root: &'a OutputRoot,
    previous: &'a Previous,
    started: SystemTime,
    start: Instant,
    skipped: Vec<(usize, PathBuf)>,
    /// Optional and required alike.
    failures: Vec<Failure>,
    tokens: Vec<crate::status::TokenStatus>,
    /// The templates rendered, failed and skipped this run.
    templates: templates::Templates,
}

/// Publishes the fetched secrets at once. Just before the flip, the status file records the
/// coming set and the `on_change` actions it will owe, so a crash right after the flip forgets
/// neither.
fn publish(cx: &Context<'_>, done: &[Done]) -> Result<Publication, RunError> {
    let plan = cx.plan;
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
        // The templates after the secrets: the publication's per-output lists keep this order.
        .chain(cx.templates.rendered.iter().map(|r| {
            let t = &plan.templates[r.index];
            Output {
                path: &t.path,
                value: &r.value,
                mode: t.mode,
                uid: t.owner.id,
                gid: t.group.id,
            }
        }))
        .collect();
    let keep = kept_paths(cx);
    cx.root
        .publish_keeping(&outputs, &keep, cx.previous.known.as_ref(), &mut |p| {
            let owed = owed_actions(plan, done, &cx.templates.rendered, p, &cx.previous.pending);
            let st = status_of(cx, Outcome::Publishing(done, p), &[], &owed);
            write_status(cx.root, &st).context("cannot record the new set before publishing it")
        })
        .map_err(|e| {
            RunError::Failed(e.context(format!(
                "cannot write the secrets to {}; nothing was published",
                cx.root.path().display()
            )))
        })
}

/// The published files a run keeps as they are: optional secrets whose fetch failed
/// transiently (a backend outage never takes a running node's secrets away), recorded by the
/// previous run with the mode and owner the manifest still gives them. A permanent failure (not
/// found, denied) removes the file: the backend has said it is gone or no longer this node's.
fn kept_paths<'a>(cx: &Context<'a>) -> Vec<&'a crate::names::RelPath> {
    let Some(known) = &cx.previous.known else {
        return Vec::new();
    };
    let plan = cx.plan;
    cx.failures
        .iter()
        .filter(|f| f.optional && matches!(f.error, RunError::DeadlineExceeded(_)))
        .flat_map(|f| f.secrets.iter())
        .map(|&i| &plan.secrets[i])
        .filter(|s| {
            known.files.get(&s.path.to_string()).is_some_and(|r| {
                r.mode & 0o7777 == s.mode && r.uid == s.owner.id && r.gid == s.group.id
            })
        })
        .map(|s| &s.path)
        .collect()
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
    let skipped = fetch::skipped(plan);
    for (i, p) in &skipped {
        let s = &plan.secrets[*i];
        log::info!(
            secret_path:% = s.path, backend = s.backend.as_str();
            "skipped {}: {} exists (unless_exists)",
            s.path,
            p.display()
        );
    }
    let fetched = fetch::connect_and_fetch(plan, &deadline, skipped).await;
    let templates = templates::render_all(plan, &fetched.done);
    for (i, p) in &templates.skipped {
        let t = &plan.templates[*i];
        log::info!(
            secret_path:% = t.path;
            "skipped template {}: {} exists (unless_exists)",
            t.path,
            p.display()
        );
    }
    let cx = Context {
        plan,
        root: &root,
        previous: &previous,
        started,
        start,
        skipped: fetched.skipped,
        failures: fetched.failures,
        tokens: fetched.tokens,
        templates,
    };
    let done = fetched.done;
    for f in &cx.failures {
        f.log(plan);
    }
    for f in &cx.templates.failures {
        f.log();
    }
    let required: Vec<&Failure> = cx.failures.iter().filter(|f| !f.optional).collect();
    let bad_templates: Vec<String> = cx
        .templates
        .failures
        .iter()
        .filter(|f| !f.optional)
        .map(|f| format!("`{}`", plan.templates[f.index].path))
        .collect();
    let result = if !required.is_empty() {
        let total = plan.secrets.len() - cx.skipped.len();
        Err(fetch::failed_run(plan, &required, total))
    } else if !bad_templates.is_empty() {
        Err(RunError::Failed(anyhow!(
            "could not write template(s) {}; nothing was published",
            bad_templates.join(", ")
        )))
    } else {
        publish(&cx, &done).map(|p| (done, p))
    };
    let mut actions = Vec::new();
    let mut deferred: Vec<Vec<String>> = Vec::new();
    if let Ok((done, publication)) = &result {
        log_publication(
            plan,
            done,
            &cx.templates.rendered,
            publication,
            &cx.failures,
        );
        let owed = owed_actions(
            plan,
            done,
            &cx.templates.rendered,
            publication,
            &previous.pending,
        );
        if !owed.is_empty() {
            // Recorded before they run: a run killed meanwhile leaves them pending.
            let st = status_of(&cx, Outcome::Published(done, publication), &[], &owed);
            if let Err(e) = write_status(&root, &st) {
                log::warn!("{e:#}");
            }
            match opts.on_change {
                OnChange::Run => actions = run_actions(owed).await,
                OnChange::Defer => {
                    actions::hand_to_refresh(&owed).await;
                    deferred = owed;
                }
            }
        }
    }
    let still_pending: Vec<Vec<String>> = match &result {
        Ok(_) => actions
            .iter()
            .filter(|a| !a.ok)
            .map(|a| a.argv.clone())
            .chain(deferred.iter().cloned())
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
        secrets: done.len() + cx.templates.rendered.len(),
        bytes: done.iter().map(|d| d.value.len()).sum::<usize>()
            + cx.templates
                .rendered
                .iter()
                .map(|r| r.value.len())
                .sum::<usize>(),
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
fn log_publication(
    plan: &Plan,
    done: &[Done],
    rendered: &[templates::Rendered],
    publication: &Publication,
    failures: &[Failure],
) {
    for (r, changed) in rendered.iter().zip(&publication.changed[done.len()..]) {
        let t = &plan.templates[r.index];
        log::info!(
            secret_path:% = t.path;
            "{} {} ({:04o} {}:{}, {} bytes) from the {}",
            if *changed { "wrote" } else { "unchanged" },
            t.path,
            t.mode,
            t.owner,
            t.group,
            r.value.len(),
            plan.template_source(r.index)
        );
    }
    for (d, changed) in done.iter().zip(&publication.changed) {
        let s = &plan.secrets[d.index];
        log::info!(
            secret_path:% = s.path, backend = s.backend.as_str();
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
    for (path, _) in &publication.kept {
        let path = path.to_string();
        log::warn!(
            secret_path = path.as_str();
            "kept {path} as published before: its backend could not be reached in time (the next refresh tries again)"
        );
    }
    let failed: std::collections::BTreeSet<String> = failures
        .iter()
        .flat_map(|f| f.secrets.iter().map(|&i| plan.secrets[i].path.to_string()))
        .collect();
    for r in &publication.removed {
        if failed.contains(r) {
            log::warn!(secret_path = r.as_str(); "removed {r}: its optional secret could not be fetched (above)");
        } else {
            log::info!(secret_path = r.as_str(); "removed {r}: no longer in the set");
        }
    }
}
