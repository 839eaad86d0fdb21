//! The systemd units bootsecrets ships, compiled in from `units/` (the only copy of their text),
//! and what the rest of the program reads from them.

use std::time::Duration;

pub const UNIT: &str = include_str!("../units/bootsecrets.service");
pub const UNIT_NAME: &str = "bootsecrets.service";
pub const REFRESH_UNIT: &str = include_str!("../units/bootsecrets-refresh.service");
pub const REFRESH_UNIT_NAME: &str = "bootsecrets-refresh.service";
pub const REFRESH_TIMER: &str = include_str!("../units/bootsecrets-refresh.timer");
pub const REFRESH_TIMER_NAME: &str = "bootsecrets-refresh.timer";
pub const KUBELET_DROPIN: &str = include_str!("../units/kubelet.service.d/10-bootsecrets.conf");
pub const KUBELET_DROPIN_NAME: &str = "10-bootsecrets.conf";

/// The last value of `key=` in a unit's text (comments and other sections included: the shipped
/// units set each key once, in `[Service]`).
pub fn directive<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .map(str::trim)
}

/// `TimeoutStartSec=` of a unit, in whole seconds (the shipped units write plain seconds).
pub fn timeout_start(unit: &str) -> Option<Duration> {
    directive(unit, "TimeoutStartSec")?
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_timeouts_are_read() {
        assert_eq!(timeout_start(UNIT), Some(Duration::from_secs(180)));
        assert_eq!(timeout_start(REFRESH_UNIT), Some(Duration::from_secs(300)));
        assert_eq!(directive(UNIT, "CapabilityBoundingSet"), Some("CAP_CHOWN"));
    }
}
