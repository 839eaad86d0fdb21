"""What `systemd-analyze verify` may say about the shipped units on the systemd it runs on.

The boot unit uses three keys that systemd 254 added (RestartMode=, RestartSteps=,
RestartMaxDelaySec=, its self-healing after a long outage). An older systemd ignores them with a
warning per key, which the unit's own comment explains; every other line of stderr is a failure.
On systemd 254 and later nothing at all may be printed (the boot test verifies the units with
the systemd 262 of its second image)."""

import re
import subprocess

NEWER_KEYS = ("RestartMode", "RestartSteps", "RestartMaxDelaySec")


def systemd_version(systemctl: str = "systemctl") -> int:
    out = subprocess.run([systemctl, "--version"], capture_output=True, text=True, check=True).stdout
    return int(re.match(r"systemd (\d+)", out).group(1))


def verify_stderr(stderr: str, version: int | None = None) -> str:
    """stderr without the warnings for the keys this systemd predates. On systemd < 254 each of
    those keys must be warned about exactly where the boot unit sets it, so a typo in one (which
    every version would warn about) still fails."""
    version = systemd_version() if version is None else version
    if version >= 254:
        return stderr
    keys = "|".join(NEWER_KEYS)
    known = re.compile(rf"^\S*bootsecrets\.service:\d+: Unknown key '({keys})' in section \[Service\], ignoring\.$")
    return "".join(line for line in stderr.splitlines(True) if not known.match(line.rstrip("\n")))


# The commands the units run besides bootsecrets itself (its ExecStartPre= makes the output
# directories), which `systemd-analyze verify --root=` looks for in that root.
UNIT_COMMANDS = ("/usr/bin/mkdir",)


def add_unit_commands(root) -> None:
    """Puts the units' other commands into a root for `systemd-analyze verify --root=`, as the
    node has them."""
    import shutil
    from pathlib import Path
    for cmd in UNIT_COMMANDS:
        dst = Path(root) / cmd.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(cmd, dst)
