//! The files assembled from secrets (`[[template]]`): rendered once the secrets they use are
//! fetched, from the one fetch of each (so keys of one secret come from one version), and
//! published in the same set.

use super::fetch::Done;
use crate::plan::Plan;
use crate::secret::Secret;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// A rendered template, ready to publish.
pub struct Rendered {
    /// Index into `plan.templates`.
    pub index: usize,
    pub value: Secret,
    /// The versions of the secrets it used, as the status file records them
    /// (`` `path` VERSION ``), when the backends said.
    pub versions: Option<String>,
    pub rendered_at: SystemTime,
    pub took: Duration,
}

/// A template that could not be written this run.
pub struct TemplateFailure {
    pub index: usize,
    pub optional: bool,
    /// Names the template and the placeholder, never a value.
    pub error: String,
}

#[derive(Default)]
pub struct Templates {
    pub rendered: Vec<Rendered>,
    pub failures: Vec<TemplateFailure>,
    /// Left out because their `unless_exists` path exists, with that path.
    pub skipped: Vec<(usize, PathBuf)>,
}

/// Renders every template this run writes. A required template whose secret failed is not
/// reported again (that secret's failure fails the run); an optional one is a warning.
pub fn render_all(plan: &Plan, done: &[Done]) -> Templates {
    let mut out = Templates::default();
    for (i, t) in plan.templates.iter().enumerate() {
        if let Some(p) = &t.unless_exists
            && super::fetch::exists_now(&format!("template `{}`", t.path), p)
        {
            out.skipped.push((i, p.clone()));
            continue;
        }
        let fetched = |idx: usize| done.iter().find(|d| d.index == idx);
        if let Some(&missing) = t.uses.iter().find(|&&u| fetched(u).is_none()) {
            if t.optional {
                out.failures.push(TemplateFailure {
                    index: i,
                    optional: true,
                    error: format!(
                        "template `{}`: secret `{}` was not fetched",
                        t.path, plan.secrets[missing].path
                    ),
                });
            }
            continue;
        }
        let start = Instant::now();
        let lookup = |path: &str| -> Option<&Secret> {
            t.uses
                .iter()
                .find(|&&u| plan.secrets[u].path.to_string() == path)
                .and_then(|&u| fetched(u))
                .map(|d| &d.value)
        };
        match t.template.render(&lookup) {
            Ok(value) => {
                let versions: Vec<String> = t
                    .uses
                    .iter()
                    .filter_map(|&u| {
                        let v = fetched(u)?.version.as_ref()?;
                        Some(format!("`{}` {v}", plan.secrets[u].path))
                    })
                    .collect();
                out.rendered.push(Rendered {
                    index: i,
                    value,
                    versions: (!versions.is_empty()).then(|| versions.join(", ")),
                    rendered_at: SystemTime::now(),
                    took: start.elapsed(),
                });
            }
            Err(e) => out.failures.push(TemplateFailure {
                index: i,
                optional: t.optional,
                error: format!("template `{}`: {e}", t.path),
            }),
        }
    }
    out
}

impl TemplateFailure {
    pub fn log(&self) {
        if self.optional {
            log::warn!("optional {}; it is not written", self.error);
        } else {
            log::error!("{}", self.error);
        }
    }
}
