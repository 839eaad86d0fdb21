//! Which platform a node runs on, from what the OS and the firmware say: the kernel command line
//! (`ignition.platform.id=` on Fedora CoreOS, `flatcar.oem.id=` on Flatcar) and DMI (the
//! hypervisor's vendor and product names). Nothing here asks the network.

use std::path::Path;

/// A cloud bootsecrets has an identity source for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Aws,
    Azure,
    Gcp,
}

impl Cloud {
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Aws => "AWS",
            Cloud::Azure => "Azure",
            Cloud::Gcp => "GCP",
        }
    }
}

/// What the node says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// The cloud, when the evidence names one.
    pub cloud: Option<Cloud>,
    /// The evidence, as read (`ignition.platform.id=aws`, `sys_vendor=Amazon EC2`, ...).
    pub evidence: Vec<String>,
}

fn read_trimmed(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The value of `key=` on the kernel command line at `cmdline` (the last one wins), if set.
pub fn kernel_setting(cmdline: &Path, key: &str) -> Option<String> {
    read_trimmed(cmdline)?
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .rfind(|(k, _)| *k == key)
        .map(|(_, v)| {
            v.chars()
                .filter(|c| c.is_ascii_graphic())
                .take(40)
                .collect()
        })
}

/// The platform from the kernel command line at `cmdline` and the DMI directory `dmi`
/// (`/proc/cmdline`, `/sys/class/dmi/id` on a node).
pub fn detect(cmdline: &Path, dmi: &Path) -> Platform {
    let mut evidence = Vec::new();
    let mut cloud = None;
    if let Some(line) = read_trimmed(cmdline) {
        for word in line.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            if key != "ignition.platform.id" && key != "flatcar.oem.id" {
                continue;
            }
            evidence.push(word.to_string());
            cloud = cloud.or(match value {
                "aws" | "ec2" => Some(Cloud::Aws),
                "azure" => Some(Cloud::Azure),
                "gcp" | "gce" => Some(Cloud::Gcp),
                _ => None,
            });
        }
    }
    for field in [
        "sys_vendor",
        "product_name",
        "bios_vendor",
        "chassis_asset_tag",
    ] {
        let Some(v) = read_trimmed(&dmi.join(field)) else {
            continue;
        };
        let found = match (field, v.as_str()) {
            (_, "Amazon EC2") => Some(Cloud::Aws),
            ("product_name", "Google Compute Engine") | ("sys_vendor", "Google") => {
                Some(Cloud::Gcp)
            }
            // Azure's fixed chassis asset tag, and Hyper-V's names on Azure.
            ("chassis_asset_tag", "7783-7084-3265-9085-8269-3286-77") => Some(Cloud::Azure),
            _ => None,
        };
        if found.is_some() || field == "sys_vendor" {
            evidence.push(format!("{field}={v}"));
        }
        cloud = cloud.or(found);
    }
    Platform { cloud, evidence }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn the_command_line_and_dmi_name_the_cloud() {
        let dir = std::env::temp_dir().join(format!("bs-platform-{}", std::process::id()));
        let dmi = dir.join("dmi");
        std::fs::create_dir_all(&dmi).unwrap();
        let cmdline = dir.join("cmdline");
        write(
            &dir,
            "cmdline",
            "BOOT_IMAGE=/x root=LABEL=ROOT flatcar.oem.id=ec2 quiet\n",
        );
        let p = detect(&cmdline, &dmi);
        assert_eq!(p.cloud, Some(Cloud::Aws));
        assert_eq!(p.evidence, ["flatcar.oem.id=ec2"]);
        write(&dir, "cmdline", "ignition.platform.id=metal\n");
        write(&dmi, "product_name", "Google Compute Engine\n");
        write(&dmi, "sys_vendor", "Google\n");
        let p = detect(&cmdline, &dmi);
        assert_eq!(p.cloud, Some(Cloud::Gcp));
        write(&dmi, "product_name", "Virtual Machine");
        write(&dmi, "sys_vendor", "Microsoft Corporation");
        write(
            &dmi,
            "chassis_asset_tag",
            "7783-7084-3265-9085-8269-3286-77",
        );
        assert_eq!(detect(&cmdline, &dmi).cloud, Some(Cloud::Azure));
        std::fs::remove_dir_all(&dmi).unwrap();
        std::fs::create_dir_all(&dmi).unwrap();
        write(&dir, "cmdline", "ignition.platform.id=qemu");
        let p = detect(&cmdline, &dmi);
        assert_eq!((p.cloud, p.evidence.len()), (None, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
