"""Network namespaces for the doubles, so the vendors' SDKs reach them where they look on a real VM.

The official clients find their services at fixed places: the metadata servers at
169.254.169.254:80, Key Vault at https://NAME.vault.azure.net (port 443, and the Key Vault SDK
checks that the challenge's resource matches that host), Secret Manager at
https://secretmanager.googleapis.com. A `NetNs` is a fresh network namespace (`ip netns add`, as
root) with its loopback up and 169.254.169.254/32 on it, so a double can listen on those
addresses and privileged ports without touching the host's: no other test, server or engineer
on the machine can collide with it.

Only sockets care: a socket belongs to the namespace of the thread that made it. So
`with ns.inside():` moves the calling thread into the namespace for the block (setns(2) on that
thread alone) and back. A double makes its listening socket inside (the `netns=` argument of the
doubles) and serves it from the host's threads, so a double that calls out (the IMDSv2 double
minting credentials from moto's STS on 127.0.0.1) still can; a test makes its SDK calls inside.

`resolving({name: address})` stands in for the VM's resolver (/etc/hosts, DNS) for those names
only: it answers getaddrinfo() for them, and leaves every other name to the system.
"""

import contextlib
import ctypes
import os
import socket
import subprocess
import uuid

CLONE_NEWNET = 0x40000000
METADATA_IP = "169.254.169.254"
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()} "
                           "(network namespaces need root and iproute2)")


class NetNs:
    def __init__(self, addresses=(METADATA_IP,)):
        self.name = f"bootsecrets-{uuid.uuid4().hex[:12]}"
        self.addresses = tuple(addresses)
        self.created = False

    def create(self) -> "NetNs":
        _ip("netns", "add", self.name)
        self.created = True
        _ip("-n", self.name, "link", "set", "lo", "up")
        for a in self.addresses:
            _ip("-n", self.name, "addr", "add", f"{a}/32", "dev", "lo")
        return self

    def lock_metadata(self) -> "NetNs":
        """What systemd-imdsd's `systemd.imds.network=locked` installs: a prohibit route to the
        metadata address, so a `connect()` there fails at once with EACCES."""
        _ip("-n", self.name, "route", "add", "prohibit", f"{METADATA_IP}/32")
        return self

    def close(self) -> None:
        if self.created:
            subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)
            self.created = False

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def inside(self):
        """The calling thread is in the namespace for the block (sockets made there belong to it)."""
        host = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                _setns(target)
                try:
                    yield self
                finally:
                    _setns(host)
            finally:
                os.close(target)
        finally:
            os.close(host)


@contextlib.contextmanager
def resolving(names: dict):
    """getaddrinfo() answers `names` ({host name: IPv4 address}) as /etc/hosts would."""
    real = socket.getaddrinfo
    table = {k.lower(): v for k, v in names.items()}

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        key = host.decode() if isinstance(host, bytes) else host
        if isinstance(key, str) and key.lower().rstrip(".") in table:
            return real(table[key.lower().rstrip(".")], port, socket.AF_INET, type, proto,
                        flags | socket.AI_NUMERICHOST)
        return real(host, port, family, type, proto, flags)

    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.getaddrinfo = real
