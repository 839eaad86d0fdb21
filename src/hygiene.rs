//! Process hardening done before any secret is touched.

use anyhow::{Context, Result};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::stat::{Mode, umask};

/// True when `/proc/self/limits` says the core file size limit is 0 (soft and hard).
fn core_limit_is_zero() -> Result<bool> {
    let limits =
        std::fs::read_to_string("/proc/self/limits").context("cannot read /proc/self/limits")?;
    Ok(limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .map(|l| l.split_whitespace().skip(4).take(2).all(|v| v == "0"))
        .unwrap_or(false))
}

/// Makes the process non-dumpable (no core file, no ptrace attach by non-root, /proc/PID/mem
/// closed to other users), sets RLIMIT_CORE to 0 and the umask to 077.
///
/// Under the shipped unit, `SystemCallFilter=~@resources` forbids setrlimit(2) and `LimitCORE=0`
/// has already set the limit: an EPERM is accepted only once /proc/self/limits confirms it.
pub fn harden_process() -> Result<()> {
    nix::sys::prctl::set_dumpable(false).context("prctl(PR_SET_DUMPABLE, 0)")?;
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        if !core_limit_is_zero()? {
            return Err(e).context("setrlimit(RLIMIT_CORE, 0) refused and the core limit is not 0");
        }
        log::debug!("setrlimit(RLIMIT_CORE) refused ({e}); the core limit is already 0");
    }
    umask(Mode::from_bits_truncate(0o077));
    Ok(())
}
