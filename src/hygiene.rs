//! Process hardening done before any secret is touched.

use anyhow::{Context, Result};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::stat::{Mode, umask};

/// Makes the process non-dumpable (no core file, no ptrace attach by non-root, /proc/PID/mem
/// closed to other users), sets RLIMIT_CORE to 0 and the umask to 077.
pub fn harden_process() -> Result<()> {
    nix::sys::prctl::set_dumpable(false).context("prctl(PR_SET_DUMPABLE, 0)")?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).context("setrlimit(RLIMIT_CORE, 0)")?;
    umask(Mode::from_bits_truncate(0o077));
    Ok(())
}
