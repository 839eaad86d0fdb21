//! The status file's content for each moment of a run (publishing, published, failed).

use super::Context;
use super::actions::Action;
use super::fetch::Done;
use crate::error::RunError;
use crate::status;
use crate::writer::{OutputRoot, Publication};
use anyhow::Context as _;
use std::time::SystemTime;

pub(super) fn write_status(root: &OutputRoot, status: &status::Status) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(status).context("cannot encode the status file")?;
    root.write_status(&json)
        .context("cannot write the status file")
}

/// How the run ended, or where it is, for the status file.
pub(super) enum Outcome<'a> {
    /// A new set is about to be published (written just before the flip).
    Publishing(&'a [Done], &'a Publication),
    /// The set is published (changed or not).
    Published(&'a [Done], &'a Publication),
    Failed(&'a RunError),
}

/// The status file's content.
pub(super) fn status_of(
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
        skipped: cx
            .skipped
            .iter()
            .map(|(i, p)| (plan.secrets[*i].path.to_string(), p))
            .chain(
                cx.templates
                    .skipped
                    .iter()
                    .map(|(i, p)| (plan.templates[*i].path.to_string(), p)),
            )
            .map(|(path, p)| status::SkippedStatus {
                path,
                unless_exists: p.display().to_string(),
            })
            .collect(),
        failures: cx
            .failures
            .iter()
            .map(|f| status::FailureStatus {
                secrets: f
                    .secrets
                    .iter()
                    .map(|&i| plan.secrets[i].path.to_string())
                    .collect(),
                optional: f.optional,
                class: f.class(),
                error: format!("{:#}", f.error.inner()),
            })
            .chain(cx.templates.failures.iter().map(|f| status::FailureStatus {
                secrets: vec![plan.templates[f.index].path.to_string()],
                optional: f.optional,
                class: "permanent",
                error: f.error.clone(),
            }))
            .collect(),
        kept: Vec::new(),
        tokens: cx.tokens.clone(),
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
                        kept: false,
                    }
                })
                .collect();
            let mut list = list;
            let n = done.len();
            let tail = publication.changed[n..]
                .iter()
                .zip(&publication.records[n..]);
            for (t, (changed, r)) in cx.templates.rendered.iter().zip(tail) {
                let tp = &plan.templates[t.index];
                if *changed {
                    run.changed.push(tp.path.to_string());
                }
                let backends: std::collections::BTreeSet<&str> = tp
                    .uses
                    .iter()
                    .map(|&u| plan.secrets[u].backend.as_str())
                    .collect();
                list.push(status::SecretStatus {
                    path: tp.path.to_string(),
                    backend: backends.into_iter().collect::<Vec<_>>().join(","),
                    backend_type: "template",
                    reference: plan.template_source(t.index),
                    version: t.versions.clone(),
                    sha256: r.sha256.clone(),
                    size: t.value.len(),
                    mode: format!("{:04o}", tp.mode),
                    owner: tp.owner.to_string(),
                    group: tp.group.to_string(),
                    uid: r.uid,
                    gid: r.gid,
                    inode: r.inode,
                    ctime: status::SecretStatus::ctime_of(r),
                    fetched_at: status::rfc3339(t.rendered_at),
                    fetch_ms: t.took.as_millis(),
                    kept: false,
                });
            }
            for (path, r) in &publication.kept {
                let path = path.to_string();
                let Some(s) = plan.secrets.iter().find(|s| s.path.to_string() == path) else {
                    continue;
                };
                // What the run that fetched it said of it.
                let before = cx.previous.entry(&path);
                let text = |k: &str| before.and_then(|e| e.get(k)?.as_str()).map(str::to_string);
                run.kept.push(path.clone());
                list.push(status::SecretStatus {
                    path,
                    backend: s.backend.clone(),
                    backend_type: plan.backends[&s.backend].kind(),
                    reference: s.reference.describe(),
                    version: text("version"),
                    sha256: r.sha256.clone(),
                    size: usize::try_from(r.size).unwrap_or(usize::MAX),
                    mode: format!("{:04o}", r.mode & 0o7777),
                    owner: s.owner.to_string(),
                    group: s.group.to_string(),
                    uid: r.uid,
                    gid: r.gid,
                    inode: r.inode,
                    ctime: status::SecretStatus::ctime_of(r),
                    fetched_at: text("fetched_at").unwrap_or_default(),
                    fetch_ms: before
                        .and_then(|e| e.get("fetch_ms")?.as_u64())
                        .map_or(0, u128::from),
                    kept: true,
                });
            }
            (
                Some(publication.version.clone()),
                status::SecretList::Published(list),
            )
        }
        Outcome::Failed(e) => {
            run.outcome = match e {
                RunError::DeadlineExceeded(_) => "deadline_exceeded",
                _ => "failed",
            };
            run.exit_code = e.exit_code();
            run.error = Some(format!("{:#}", e.inner()));
            (
                cx.previous.data.clone(),
                status::SecretList::Carried(cx.previous.secrets.clone()),
            )
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
