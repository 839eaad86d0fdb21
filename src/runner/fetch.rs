//! Identity and fetch: which secrets this boot needs (`unless_exists`), every backend they use
//! connected concurrently, every secret fetched (bounded concurrency), and every failure kept, not
//! just the first: a run that fails reports each failing secret with its cause.

use crate::backend::{Backend, Fetched};
use crate::error::{FetchError, RunError};
use crate::extract;
use crate::governor::Governor;
use crate::plan::{Plan, SecretPlan};
use crate::retry::{Deadline, RetryError, retry_observed};
use crate::secret::Secret;
use anyhow::anyhow;
use futures_util::{StreamExt, stream};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// A fetched, transformed, size-checked value.
pub struct Done {
    pub index: usize,
    pub value: Secret,
    pub version: Option<String>,
    pub fetched_at: SystemTime,
    pub took: Duration,
}

/// What could not be fetched: one secret, or every secret of a backend whose identity failed.
pub struct Failure {
    /// Indexes into `plan.secrets`.
    pub secrets: Vec<usize>,
    /// The backend they are read from.
    pub backend: String,
    /// Every secret it concerns is `optional`: a warning, not a failed run.
    pub optional: bool,
    pub error: RunError,
}

impl Failure {
    /// `permanent` or `deadline`, as the status file and the journal name it.
    pub fn class(&self) -> &'static str {
        match self.error {
            RunError::DeadlineExceeded(_) => "deadline",
            _ => "permanent",
        }
    }
}

/// Everything the fetch phase learnt.
pub struct Fetch {
    /// In manifest order.
    pub done: Vec<Done>,
    pub failures: Vec<Failure>,
    /// Secrets left out because their `unless_exists` path exists, with that path.
    pub skipped: Vec<(usize, PathBuf)>,
    /// The placed Vault tokens the run used, after their renewal.
    pub tokens: Vec<crate::status::TokenStatus>,
}

pub fn secret_label(s: &SecretPlan) -> String {
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

/// The secrets whose `unless_exists` path exists, as systemd's `ConditionPathExists=!PATH`
/// decides it (`stat` following links; a path that cannot be examined counts as absent, so the
/// secret is fetched: the cautious side on a first boot).
pub fn skipped(plan: &Plan) -> Vec<(usize, PathBuf)> {
    plan.secrets
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let p = s.unless_exists.as_ref()?;
            exists_now(&format!("secret `{}`", s.path), p).then(|| (i, p.clone()))
        })
        .collect()
}

/// Whether an `unless_exists` path exists, as [`skipped`] decides it for `what` (a secret or a
/// template): a path that cannot be examined counts as absent, with a warning.
pub fn exists_now(what: &str, p: &std::path::Path) -> bool {
    match std::fs::metadata(p) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            log::warn!(
                "{what}: cannot tell whether {} exists ({}); it counts as absent",
                p.display(),
                crate::error::describe_io(&e)
            );
            false
        }
    }
}

/// A backend's state as the run's log tells it while its secrets are fetched: one warning when
/// its requests start failing transiently for a cause (Vault sealed, unreachable, a 5xx), one
/// more when the cause changes, and one line when it answers again; each request's attempts are
/// at `-v`. Twenty fetches during a six-second seal say so twice, not a hundred times.
struct Health {
    backend: String,
    /// The cause being reported, and since when.
    state: std::sync::Mutex<Option<(String, Instant)>>,
    /// The cause that last cleared, and when: a request sent before the backend answered again
    /// may still fail with it, which is not news.
    cleared: std::sync::Mutex<Option<(String, Instant)>>,
}

/// How long after a backend answered again a failure with the old cause counts as a straggler.
const STRAGGLERS: Duration = Duration::from_secs(2);

impl Health {
    fn new(backend: &str) -> Self {
        Health {
            backend: backend.to_string(),
            state: std::sync::Mutex::new(None),
            cleared: std::sync::Mutex::new(None),
        }
    }

    /// The cause of a request's failure without the request: a message reads `<request>: <cause>`.
    fn cause(e: &FetchError) -> &str {
        e.message
            .split_once(": ")
            .map(|(_, c)| c)
            .unwrap_or(&e.message)
    }

    /// A transient failure of `secret`'s request.
    fn failed(&self, secret: &str, e: &FetchError, pause: Duration) {
        let cause = Self::cause(e);
        let mut state = self.state.lock().unwrap();
        if state.as_ref().is_some_and(|(c, _)| c == cause) {
            return;
        }
        let straggler = self
            .cleared
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|(c, at)| c == cause && at.elapsed() < STRAGGLERS);
        if straggler {
            return;
        }
        log::warn!(
            backend = self.backend.as_str();
            "backend `{}`: {cause} (transient, first for secret `{secret}`); its requests are \
             retried within the deadline, retrying in {} ms (each attempt at -v)",
            self.backend,
            pause.as_millis()
        );
        *state = Some((cause.to_string(), Instant::now()));
    }

    fn answered(&self) {
        if let Some((cause, since)) = self.state.lock().unwrap().take() {
            *self.cleared.lock().unwrap() = Some((cause.clone(), Instant::now()));
            log::info!(
                backend = self.backend.as_str();
                "backend `{}` answers again, after {:.1} s of: {cause}",
                self.backend,
                since.elapsed().as_secs_f64()
            );
        }
    }
}

async fn fetch_one(
    index: usize,
    s: &SecretPlan,
    (backend, governor, health): (&Backend, &Governor, &Health),
    deadline: &Deadline,
    max_secret: u64,
) -> Result<Done, RunError> {
    let start = Instant::now();
    let label = secret_label(s);
    let path = s.path.to_string();
    let observe = |e: &FetchError, pause: Duration| health.failed(&path, e, pause);
    let fetched = retry_observed(&label, deadline, Some(&observe), |_| async {
        // The governor paces every request to this backend (src/governor.rs); the retry loop's
        // own backoff runs from the same instant, so the wait is the longer of the two.
        let _permit = governor.admit().await;
        let r = backend.fetch(&s.reference).await;
        match &r {
            Ok(_) => governor.succeeded(),
            Err(e) if e.throttled => governor.throttled(e.retry_after),
            Err(_) => {}
        }
        r
    })
    .await;
    if fetched.is_ok() {
        health.answered();
    }
    let Fetched { value, version } = fetched.map_err(|e| retry_failure(label.clone(), e))?;
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

/// Connects every backend the needed secrets use (concurrently, each to the end: a failing one
/// does not cut the others short), fetches every secret whose backend connected, and finishes
/// every backend that connected (its token revoked) before returning. Nothing is cancelled by a
/// failure: each fetch ends by success, a permanent error or the deadline.
pub async fn connect_and_fetch(
    plan: &Plan,
    deadline: &Deadline,
    skipped: Vec<(usize, PathBuf)>,
) -> Fetch {
    let skip: BTreeSet<usize> = skipped.iter().map(|(i, _)| *i).collect();
    let needed: Vec<usize> = (0..plan.secrets.len())
        .filter(|i| !skip.contains(i))
        .collect();
    let users = |name: &str| -> Vec<usize> {
        needed
            .iter()
            .copied()
            .filter(|&i| plan.secrets[i].backend == name)
            .collect()
    };

    // One draw per run, the same pause before every backend's first request.
    let jitter = if needed.is_empty() {
        Duration::ZERO
    } else {
        plan.startup_jitter.mul_f64(fastrand::f64())
    };
    if !jitter.is_zero() {
        log::debug!(
            "startup jitter: first request to a backend service in {} ms (startup_jitter_ms {})",
            jitter.as_millis(),
            plan.startup_jitter.as_millis()
        );
    }
    let attempts = plan
        .used_backends()
        .filter(|(name, _)| !users(name).is_empty())
        .map(|(name, cfg)| async move {
            // The files it reads (credentials, CA bundles), checked now that this run needs it:
            // a backend only skipped secrets use is never looked at beyond its form.
            let problems = plan.check_files(name);
            if !problems.is_empty() {
                let e = RetryError::Permanent(FetchError::permanent(problems.join("; ")));
                return (name.as_str(), cfg.kind(), Err(e));
            }
            let connect = Backend::connect(name, cfg, deadline, &plan.limits);
            let r = if cfg.identity_is_local() {
                // The node's metadata service is not the shared service: ask it meanwhile.
                tokio::join!(connect, tokio::time::sleep(jitter)).0
            } else {
                tokio::time::sleep(jitter).await;
                connect.await
            };
            let r = match r {
                Ok(mut b) => b.renew(deadline).await.map(|()| b),
                Err(e) => Err(e),
            };
            (name.as_str(), cfg.kind(), r)
        });
    let connected = futures_util::future::join_all(attempts).await;
    let mut backends: BTreeMap<&str, Backend> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut tokens = Vec::new();
    for (name, kind, r) in connected {
        match r {
            Ok(b) => {
                log::debug!("backend `{name}` ({kind}): identity established");
                for w in b.run_warnings() {
                    log::warn!(backend = name; "backend `{name}`: {w}");
                }
                tokens.extend(b.placed_token(name));
                backends.insert(name, b);
            }
            Err(e) => {
                let secrets = users(name);
                let label = format!(
                    "backend `{name}` ({kind}), needed by secret(s) {}",
                    secrets
                        .iter()
                        .map(|&i| format!("`{}`", plan.secrets[i].path))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                failures.push(Failure {
                    backend: name.to_string(),
                    optional: secrets.iter().all(|&i| plan.secrets[i].optional),
                    secrets,
                    error: retry_failure(label, e),
                });
            }
        }
    }

    let fetchable = needed
        .iter()
        .copied()
        .filter(|&i| backends.contains_key(plan.secrets[i].backend.as_str()));
    let governors: BTreeMap<&str, Governor> = backends
        .keys()
        .map(|&name| (name, Governor::new(plan.concurrency)))
        .collect();
    let health: BTreeMap<&str, Health> = backends
        .keys()
        .map(|&name| (name, Health::new(name)))
        .collect();
    let results: Vec<(usize, Result<Done, RunError>)> = stream::iter(fetchable)
        .map(|i| {
            let s = &plan.secrets[i];
            let backend = (
                &backends[s.backend.as_str()],
                &governors[s.backend.as_str()],
                &health[s.backend.as_str()],
            );
            async move {
                (
                    i,
                    fetch_one(i, s, backend, deadline, plan.limits.max_secret).await,
                )
            }
        })
        .buffer_unordered(plan.concurrency)
        .collect()
        .await;
    futures_util::future::join_all(backends.values().map(Backend::finish)).await;
    for (name, g) in &governors {
        let throttles = g.throttles();
        if throttles > 0 {
            log::info!(
                backend = name;
                "backend `{name}` throttled {throttles} request(s): this run slowed down to \
                 {:.0} request(s) at once",
                g.window()
            );
        }
    }

    let mut done = Vec::new();
    for (i, r) in results {
        match r {
            Ok(d) => done.push(d),
            Err(error) => failures.push(Failure {
                backend: plan.secrets[i].backend.clone(),
                secrets: vec![i],
                optional: plan.secrets[i].optional,
                error,
            }),
        }
    }
    done.sort_by_key(|d| d.index);
    failures.sort_by_key(|f| f.secrets.first().copied());
    Fetch {
        done,
        failures,
        skipped,
        tokens,
    }
}

impl Failure {
    /// Logs it, with the journal fields that find it: every secret's path, the backend, the
    /// class. An optional secret's failure is a warning.
    pub fn log(&self, plan: &Plan) {
        let paths: Vec<String> = self
            .secrets
            .iter()
            .map(|&i| plan.secrets[i].path.to_string())
            .collect();
        let paths = paths.join("\n");
        let (level, prefix) = if self.optional {
            (
                log::Level::Warn,
                format!(
                    "optional secret(s) {} not fetched: ",
                    quoted(plan, &self.secrets)
                ),
            )
        } else {
            (log::Level::Error, String::new())
        };
        log::log!(
            level,
            secret_path = paths.as_str(),
            backend = self.backend.as_str(),
            error_class = self.class();
            "{prefix}{:#}",
            self.error.inner()
        );
    }
}

/// `` `a`, `b` `` for secrets by index.
pub fn quoted(plan: &Plan, secrets: &[usize]) -> String {
    plan.quoted(secrets)
}

/// The run's error when required secrets failed (each failure was logged on its own): which
/// secrets, and that nothing was published. The exit code is the most severe class among them:
/// a permanent failure (1) over a deadline (3).
pub fn failed_run(plan: &Plan, failures: &[&Failure], total: usize) -> RunError {
    let secrets: Vec<usize> = failures.iter().flat_map(|f| f.secrets.clone()).collect();
    let e = if let [one] = secrets[..] {
        anyhow!(
            "could not fetch secret `{}`; nothing was published",
            plan.secrets[one].path
        )
    } else {
        anyhow!(
            "could not fetch {} of {total} secrets ({}); nothing was published",
            secrets.len(),
            quoted(plan, &secrets)
        )
    };
    if failures
        .iter()
        .all(|f| matches!(f.error, RunError::DeadlineExceeded(_)))
    {
        RunError::DeadlineExceeded(e)
    } else {
        RunError::Failed(e)
    }
}
