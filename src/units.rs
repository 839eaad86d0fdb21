//! The systemd units bootsecrets ships, compiled in from `units/` (the only copy of their text),
//! and what the rest of the program reads from them.

use anyhow::{Result, bail};
use std::time::Duration;

pub const UNIT: &str = include_str!("../units/bootsecrets.service");
pub const UNIT_NAME: &str = "bootsecrets.service";
pub const REFRESH_UNIT: &str = include_str!("../units/bootsecrets-refresh.service");
pub const REFRESH_UNIT_NAME: &str = "bootsecrets-refresh.service";
pub const REFRESH_TIMER: &str = include_str!("../units/bootsecrets-refresh.timer");
pub const REFRESH_TIMER_NAME: &str = "bootsecrets-refresh.timer";
pub const KUBELET_DROPIN: &str = include_str!("../units/kubelet.service.d/10-bootsecrets.conf");
pub const KUBELET_DROPIN_NAME: &str = "10-bootsecrets.conf";

/// The binary path the shipped units name in `ExecStart=`: where the plain binary install puts it.
/// Every other install's units are the same text with this path replaced ([`for_install`]).
pub const SHIPPED_BINARY_PATH: &str = "/opt/bin/bootsecrets";

/// How bootsecrets reaches a node, and so where its binary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InstallMethod {
    /// The static binary, downloaded by Ignition to /opt/bin/bootsecrets; the units in /etc.
    Binary,
    /// The systemd-sysext image: the binary at /usr/bin/bootsecrets and the units in
    /// /usr/lib/systemd/system, merged into /usr by systemd-sysext.
    Sysext,
}

impl InstallMethod {
    pub fn binary_path(self) -> &'static str {
        match self {
            InstallMethod::Binary => SHIPPED_BINARY_PATH,
            InstallMethod::Sysext => "/usr/bin/bootsecrets",
        }
    }
}

/// Where a system extension's units are once systemd-sysext has merged it.
pub const SYSEXT_UNIT_DIR: &str = "/usr/lib/systemd/system";

/// The units the sysext image carries, by file name (the kubelet drop-in is not among them: it is
/// the node's choice, `render --kubelet-dropin`).
pub const SHIPPED_UNITS: [(&str, &str); 3] = [
    (UNIT_NAME, UNIT),
    (REFRESH_UNIT_NAME, REFRESH_UNIT),
    (REFRESH_TIMER_NAME, REFRESH_TIMER),
];

/// A shipped unit's text for `method`: each `ExecStart=` that runs [`SHIPPED_BINARY_PATH`] runs
/// the method's binary path instead; nothing else changes.
pub fn for_install(text: &str, method: InstallMethod) -> String {
    let to = method.binary_path();
    text.split_inclusive('\n')
        .map(|line| match line.strip_prefix("ExecStart=") {
            Some(rest)
                if rest.starts_with(SHIPPED_BINARY_PATH)
                    && rest[SHIPPED_BINARY_PATH.len()..].starts_with([' ', '\n']) =>
            {
                format!("ExecStart={to}{}", &rest[SHIPPED_BINARY_PATH.len()..])
            }
            _ => line.to_string(),
        })
        .collect()
}

/// The symbolic links `systemctl enable` would create for a unit from its `[Install]` section:
/// (link path, unit file path), the link under /etc/systemd/system, pointing at the unit in
/// `unit_dir`. Refuses `[Install]` keys it does not turn into links, so a change to a unit cannot
/// quietly leave it disabled.
pub fn enable_links(name: &str, text: &str, unit_dir: &str) -> Result<Vec<(String, String)>> {
    let mut links = Vec::new();
    let mut in_install = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install || line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bail!("{name}: cannot read `{line}` in [Install]");
        };
        let suffix = match key.trim() {
            "WantedBy" => "wants",
            "RequiredBy" => "requires",
            "UpheldBy" => "upholds",
            other => bail!("{name}: [Install] {other}= is not turned into links here"),
        };
        for target in value.split_whitespace() {
            links.push((
                format!("/etc/systemd/system/{target}.{suffix}/{name}"),
                format!("{unit_dir}/{name}"),
            ));
        }
    }
    if links.is_empty() {
        bail!("{name} has no [Install] WantedBy=, RequiredBy= or UpheldBy=: nothing enables it");
    }
    Ok(links)
}

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

    #[test]
    fn each_install_runs_its_own_binary_and_changes_nothing_else() {
        for (name, text) in SHIPPED_UNITS {
            assert_eq!(for_install(text, InstallMethod::Binary), text, "{name}");
            let sysext = for_install(text, InstallMethod::Sysext);
            // The path appears in ExecStart= only, so replacing it there replaces every use.
            assert!(!sysext.contains(SHIPPED_BINARY_PATH), "{name}: {sysext}");
            let changed: Vec<(&str, &str)> = text
                .lines()
                .zip(sysext.lines())
                .filter(|(a, b)| a != b)
                .collect();
            assert_eq!(text.lines().count(), sysext.lines().count());
            match directive(text, "ExecStart") {
                Some(cmd) => {
                    assert_eq!(changed.len(), 1, "{name}: {changed:?}");
                    assert_eq!(
                        directive(&sysext, "ExecStart").unwrap(),
                        cmd.replacen(SHIPPED_BINARY_PATH, "/usr/bin/bootsecrets", 1)
                    );
                }
                None => assert!(changed.is_empty(), "{name}"),
            }
        }
        assert_eq!(
            directive(
                &for_install(REFRESH_UNIT, InstallMethod::Sysext),
                "ExecStart"
            ),
            Some("/usr/bin/bootsecrets run")
        );
        // Only the binary itself: another program under /opt/bin, or a longer name, stays.
        let other = "ExecStart=/opt/bin/bootsecrets-helper\nExecStart=/opt/bin/bootsecrets\n";
        assert_eq!(
            for_install(other, InstallMethod::Sysext),
            "ExecStart=/opt/bin/bootsecrets-helper\nExecStart=/usr/bin/bootsecrets\n"
        );
    }

    #[test]
    fn enable_links_are_what_systemctl_enable_creates() {
        assert_eq!(
            enable_links(UNIT_NAME, UNIT, SYSEXT_UNIT_DIR).unwrap(),
            [(
                "/etc/systemd/system/kubelet.service.requires/bootsecrets.service".to_string(),
                "/usr/lib/systemd/system/bootsecrets.service".to_string()
            )]
        );
        assert_eq!(
            enable_links(REFRESH_TIMER_NAME, REFRESH_TIMER, SYSEXT_UNIT_DIR).unwrap(),
            [(
                "/etc/systemd/system/timers.target.wants/bootsecrets-refresh.timer".to_string(),
                "/usr/lib/systemd/system/bootsecrets-refresh.timer".to_string()
            )]
        );
        let two = "[Unit]\nWantedBy=ignored.target\n[Install]\n# c\nWantedBy=a.target b.target\nUpheldBy=c.target\n";
        assert_eq!(
            enable_links("x.service", two, "/d").unwrap(),
            [
                (
                    "/etc/systemd/system/a.target.wants/x.service".into(),
                    "/d/x.service".into()
                ),
                (
                    "/etc/systemd/system/b.target.wants/x.service".into(),
                    "/d/x.service".into()
                ),
                (
                    "/etc/systemd/system/c.target.upholds/x.service".into(),
                    "/d/x.service".into()
                ),
            ]
        );
        for bad in [
            "[Install]\nAlias=y.service\n",
            "[Service]\nType=oneshot\n",
            REFRESH_UNIT,
        ] {
            assert!(enable_links("x.service", bad, "/d").is_err(), "{bad}");
        }
    }
}
