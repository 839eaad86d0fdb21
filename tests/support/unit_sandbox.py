"""Run the binary the way its systemd unit runs it on a node, as far as a test can without systemd.

The restrictions are read from the shipped unit file (units/bootsecrets.service), never copied:
change a directive there and every test sees the change. Applied here, through
tests/support/unit-sandbox inside a private mount namespace:

* `CapabilityBoundingSet=` (and `AmbientCapabilities=`): the binary runs as root with only those
  capabilities (today CAP_CHOWN: no CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH or CAP_FOWNER, so root
  cannot read a file its consumer owns);
* `NoNewPrivileges=`, `UMask=`, `LimitCORE=`;
* `ProtectSystem=strict`: every mount read-only except /dev, /proc and /sys, and the paths of
  `ReadWritePaths=` (plus those a test names, as a drop-in would);
* `PrivateTmp=`: an empty /tmp and /var/tmp (so the tests keep their files under /dev/shm);
* `PrivateMounts=`: the private mount namespace itself.

Every other directive of the unit is listed in NOT_APPLIED with the reason; a directive in
neither list fails the harness, so a new one cannot slip past unexamined. What is not applied
here is exercised on a real systemd by the qemu boot test (tests/boot).
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "units" / "bootsecrets.service"
LAUNCHER = ROOT / "tests" / "support" / "unit-sandbox"

APPLIED = {
    "CapabilityBoundingSet", "AmbientCapabilities", "NoNewPrivileges", "UMask", "LimitCORE",
    "ProtectSystem", "PrivateTmp", "PrivateMounts", "ReadWritePaths",
}
NOT_APPLIED = {
    # Not restrictions: what and when systemd runs, and where the output goes.
    "Description": "no restriction", "Wants": "ordering", "After": "ordering",
    "Before": "ordering", "RequiredBy": "ordering", "Type": "no restriction",
    "RemainAfterExit": "no restriction", "ExecStart": "the test names the command",
    "TimeoutStartSec": "checked by `check`'s warning and the boot test",
    # What systemd does after a run: the boot test (an outage past the deadline, a permanent failure).
    "Restart": "boot test", "RestartPreventExitStatus": "boot test", "RestartSec": "boot test",
    "RestartMode": "boot test", "RestartSteps": "boot test", "RestartMaxDelaySec": "boot test",
    "Environment": "tests pass their own environment", "StandardOutput": "captured by the test",
    "StandardError": "captured by the test", "SyslogIdentifier": "no journal here",
    # Makes the shipped output roots on /run (not a tmpfs on this machine, and outside the
    # sandbox: "+"); tests' roots live on /dev/shm. The boot test runs it.
    "ExecStartPre": "tests' roots live on /dev/shm",
    # Would hide what the tests need, or cannot be reproduced without systemd itself.
    "ProtectHome": "would hide a checkout under /root or /home, where the binary under test lives",
    "PrivateDevices": "the tests' output roots are on the host's /dev/shm",
    "DevicePolicy": "idem", "ProtectKernelTunables": "boot test", "ProtectKernelModules": "boot test",
    "ProtectKernelLogs": "boot test", "ProtectControlGroups": "boot test",
    "ProtectClock": "boot test", "ProtectHostname": "boot test", "ProtectProc": "boot test",
    "RestrictAddressFamilies": "boot test", "RestrictNamespaces": "boot test",
    "RestrictRealtime": "boot test", "RestrictSUIDSGID": "boot test", "LockPersonality": "boot test",
    "MemoryDenyWriteExecute": "boot test", "KeyringMode": "boot test",
    "SystemCallArchitectures": "boot test", "SystemCallFilter": "boot test",
    "SystemCallErrorNumber": "boot test",
}


def directives(path=UNIT):
    """Every `Key=value` of a unit file, in order, values of repeated keys appended."""
    out = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _yes(values):
    return bool(values) and values[-1].lower() in ("yes", "true", "1", "on")


class UnitSandbox:
    def __init__(self, path=UNIT):
        d = directives(path)
        unknown = set(d) - APPLIED - set(NOT_APPLIED)
        if unknown:
            raise AssertionError(
                f"{path} sets {sorted(unknown)}: decide whether tests/support/unit_sandbox.py "
                "applies it or why it does not")
        caps = " ".join(d.get("CapabilityBoundingSet", [])).split()
        if any(c.startswith("~") for c in caps):
            raise AssertionError("an inverted CapabilityBoundingSet= is not supported here")
        if not caps:
            raise AssertionError(f"{path} sets no CapabilityBoundingSet=: the harness expects one")
        names = []
        for c in caps:
            if not re.fullmatch(r"CAP_[A-Z_]+", c):
                raise AssertionError(f"unexpected capability {c!r} in {path}")
            names.append("+" + c[4:].lower())
        self.caps = ",".join(["-all"] + names)
        if " ".join(d.get("AmbientCapabilities", [])).strip():
            raise AssertionError("ambient capabilities are not supported here")
        self.no_new_privs = _yes(d.get("NoNewPrivileges"))
        self.umask = (d.get("UMask") or [None])[-1]
        self.limit_core = (d.get("LimitCORE") or [None])[-1]
        self.strict = (d.get("ProtectSystem") or [""])[-1] == "strict"
        self.private_tmp = _yes(d.get("PrivateTmp"))
        self.rw = [p for v in d.get("ReadWritePaths", []) for p in v.split()]

    def wrap(self, argv, rw=(), binds=(), overlays=()):
        """`argv` as the unit would run it. `rw`: more writable paths (what a ReadWritePaths=
        drop-in would add); `binds`: (src, dst) files or directories of the test's own to mount
        over host paths first (a resolv.conf, a directory in PATH); `overlays`: (src, dst)
        directories merged over host directories, read-only (another OS's /usr/lib/passwd)."""
        out = ["unshare", "--mount", "--propagation", "private", "--", str(LAUNCHER)]
        for src, dst in binds:
            out += ["--bind", f"{src}:{dst}"]
        for src, dst in overlays:
            out += ["--overlay", f"{src}:{dst}"]
        for p in [*self.rw, *map(str, rw)]:
            out += ["--rw", p]
        if self.strict:
            out.append("--protect-system-strict")
        if self.private_tmp:
            out.append("--private-tmp")
        if self.umask:
            out += ["--umask", self.umask]
        if self.limit_core is not None:
            out += ["--limit-core", self.limit_core]
        if self.no_new_privs:
            out.append("--no-new-privs")
        out += ["--caps", self.caps, "--", *map(str, argv)]
        return out
