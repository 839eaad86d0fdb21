//! Run-wide settings that the plan validates and the backends use: the size limits and the
//! environment lookup. Kept apart from `plan`, which dispatches into the backends, so that the
//! backends never import `plan`.

/// Size limits: a value larger than `max_secret` or a backend response larger than `max_response`
/// is refused (the response as soon as its size is known, never buffered in full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_secret: u64,
    pub max_response: u64,
}

/// 1 MiB: systemd's limit for one credential (`CREDENTIAL_SIZE_MAX`).
pub const DEFAULT_MAX_SECRET: u64 = 1024 * 1024;
pub const DEFAULT_MAX_RESPONSE: u64 = 4 * 1024 * 1024;
pub const MAX_LIMIT: u64 = 64 * 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_secret: DEFAULT_MAX_SECRET,
            max_response: DEFAULT_MAX_RESPONSE,
        }
    }
}

/// Where the environment comes from; tests pass their own.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, empty values read as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Time the backends may take to finish after the run, outside the deadline (Vault: revoking
/// the token it logged in with).
pub const FINISH_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

/// Time all `on_change` commands of one run may take together, outside the deadline (each is
/// killed at the end of it).
pub const ACTION_BUDGET: std::time::Duration = std::time::Duration::from_secs(45);

/// Slack for what is neither fetching nor a budget above: starting, status writes, exit.
pub const SLACK: std::time::Duration = std::time::Duration::from_secs(5);

static OFFLINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `check --offline` and `render`: validate what does not depend on the machine validating (no
/// users or groups looked up, no file the manifest names examined, no environment read), as a CI
/// pipeline building user data needs. Set once, by the command line, before validation.
pub fn set_offline() {
    OFFLINE.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// See [`set_offline`].
pub fn offline() -> bool {
    OFFLINE.load(std::sync::atomic::Ordering::Relaxed)
}
