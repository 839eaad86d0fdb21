//! `on_change` actions: which ones a run owes, and running them as root, safely: the checked,
//! resolved program, a `PATH` of root-only directories, an empty environment, one budget.

use super::fetch::Done;
use crate::plan::Plan;
use crate::writer::Publication;
use std::path::Path;
use std::time::Duration;

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
pub(super) fn owed_actions(
    plan: &Plan,
    done: &[Done],
    rendered: &[super::templates::Rendered],
    publication: &Publication,
    pending: &[Vec<String>],
) -> Vec<Vec<String>> {
    let mut commands: Vec<Vec<String>> = Vec::new();
    // The publication's per-output list: the secrets, then the templates.
    let on_change = done
        .iter()
        .map(|d| &plan.secrets[d.index].on_change)
        .chain(rendered.iter().map(|r| &plan.templates[r.index].on_change));
    for (argv, changed) in on_change.zip(&publication.changed) {
        if let Some(argv) = argv
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
pub(super) async fn run_actions(commands: Vec<Vec<String>>) -> Vec<Action> {
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

/// The boot gate's way with owed commands: they stay owed (the caller records them as
/// `pending_actions`), and bootsecrets-refresh.service is started without waiting for it
/// (`systemctl start --no-block`), which runs them after the gate has finished. The gate never
/// waits on a unit ordered after it. Without systemctl or the refresh unit they stay owed until a
/// refresh runs, and the warning says so.
pub(super) async fn hand_to_refresh(owed: &[Vec<String>]) {
    let commands = owed
        .iter()
        .map(|a| format!("`{}`", a.join(" ")))
        .collect::<Vec<_>>()
        .join(", ");
    let unit = crate::units::REFRESH_UNIT_NAME;
    let path = crate::credfile::safe_search_path(&ACTION_PATH);
    let systemctl = path
        .split(':')
        .map(|d| format!("{d}/systemctl"))
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| "systemctl is not in root's own PATH".to_string())
        .and_then(|p| crate::credfile::check_executable("systemctl", &p));
    let argv: Vec<String> = ["systemctl", "start", "--no-block", unit]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let started = match systemctl {
        Ok(program) => run_checked(&program, &argv, &path, Duration::from_secs(10)).await,
        Err(e) => (false, e),
    };
    match started {
        (true, _) => log::info!(
            "on_change command(s) {commands} owed: handed to {unit}, started without waiting \
             (this run is the boot gate, which never waits on a unit ordered after it)"
        ),
        (false, why) => log::warn!(
            "on_change command(s) {commands} owed, and {unit} could not be started ({why}): \
             they stay owed (pending_actions in the status file) and run with the next refresh \
             (`systemctl start {unit}`)"
        ),
    }
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
