"""Fixtures: one real moto server per session, an IMDSv2 double per test, the built binary.

The binary runs as its unit runs it on a node (tests/support/unit_sandbox.py: the unit's
capability bounding set, read-only system, private /tmp, read from units/bootsecrets.service),
unless a test is named `..._as_full_root` and says so: development use, by hand, as full root.
Because /tmp is private in the unit, the tests' own files live under /dev/shm (see
pytest_configure below)."""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from support.azure import AzureImdsDouble, KeyVaultDouble  # noqa: E402
from support.gce import GceMetadataDouble, SecretManagerDouble  # noqa: E402
from support.faults import FaultProxy  # noqa: E402
from support.imds import ImdsDouble  # noqa: E402
from support.tlsca import TestCA  # noqa: E402
from support.moto import Moto  # noqa: E402
from support.openbao import OpenBao  # noqa: E402
from support.unit_sandbox import UnitSandbox  # noqa: E402

BIN = Path(os.environ.get("BOOTSECRETS_BIN", ROOT / "target" / "debug" / "bootsecrets"))
# The static release binary (what users run): tests that cover names, ownership and the run path
# run it too, under Flatcar's and Fedora CoreOS's name conventions (tests/support/nodeos.py).
# tests/run sets it (and BOOTSECRETS_REQUIRE_STATIC=1, so that it cannot be missed silently).
STATIC_BIN = Path(os.environ["BOOTSECRETS_STATIC_BIN"]) if os.environ.get("BOOTSECRETS_STATIC_BIN") \
    else None
SANDBOX = UnitSandbox()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """The unit gives the binary a private /tmp: pytest's temporary directories (manifests,
    credential files, CA bundles the binary must read) go under /dev/shm instead, one directory
    per pytest process, removed at the end."""
    if not config.option.basetemp:
        config.option.basetemp = f"/dev/shm/bootsecrets-pytest-{os.getpid()}"
        config._bootsecrets_basetemp = config.option.basetemp
    # A checkout under /tmp or /var/tmp (a CI runner's, say): the unit's private /tmp would hide
    # the binary under test from the sandbox. Test a copy of it that the node's view can see.
    global BIN, STATIC_BIN

    def visible(path):
        if not (SANDBOX.private_tmp
                and any(str(path.resolve()).startswith(p) for p in ("/tmp/", "/var/tmp/"))):
            return path
        copy = Path(f"/dev/shm/bootsecrets-pytest-bin-{os.getpid()}") / path.name
        copy.parent.mkdir(mode=0o755, exist_ok=True)
        shutil.copy2(path, copy)
        config._bootsecrets_bin_copy = copy.parent
        return copy

    BIN = visible(BIN)
    if STATIC_BIN is not None:
        STATIC_BIN = visible(STATIC_BIN)


def pytest_unconfigure(config):
    base = getattr(config, "_bootsecrets_basetemp", None)
    if base and not os.environ.get("BOOTSECRETS_KEEP_TMP"):
        shutil.rmtree(base, ignore_errors=True)
    copy = getattr(config, "_bootsecrets_bin_copy", None)
    if copy:
        shutil.rmtree(copy, ignore_errors=True)


def node_argv(argv, rw=(), binds=(), overlays=()):
    """`argv` (the binary and its arguments) as units/bootsecrets.service runs it on a node.
    `rw`: paths a ReadWritePaths= drop-in would make writable; `binds`: (src, dst) pairs mounted
    over host paths for this run only."""
    return SANDBOX.wrap(argv, rw=rw, binds=binds, overlays=overlays)


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    m = Moto(log_path=tmp_path_factory.mktemp("moto") / "moto.log").start()
    yield m
    m.stop()


@pytest.fixture(scope="session")
def bao(tmp_path_factory):
    """One real OpenBao dev server for the session; tests isolate themselves by mount names."""
    b = OpenBao(log_path=tmp_path_factory.mktemp("bao") / "bao.log").start()
    yield b
    b.stop()


@pytest.fixture
def bao_factory(tmp_path):
    """Dedicated OpenBao servers for tests that seal them or need TLS."""
    started = []

    def make(**kw):
        b = OpenBao(log_path=tmp_path / f"bao-{len(started)}.log", **kw).start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def credfile(tmp_path):
    """Writes a credential file with a safe mode (0600) and returns its path."""
    def write(name: str, content: str, mode: int = 0o600) -> Path:
        p = tmp_path / name
        p.write_text(content)
        p.chmod(mode)
        return p

    return write


@pytest.fixture
def imds_factory(moto):
    started = []

    def make(**kw):
        d = ImdsDouble(moto, **kw).start()
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


@pytest.fixture
def imds(imds_factory):
    return imds_factory()


@pytest.fixture
def fault_proxy():
    """Starts fault-injecting proxies (tests/support/faults.py) in front of an upstream URL;
    every one is stopped at the end of the test."""
    started = []

    def make(upstream: str) -> FaultProxy:
        p = FaultProxy(upstream).start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


@pytest.fixture
def name():
    """A unique prefix so tests never share secrets in the one moto server."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def outdir():
    """An output root on tmpfs that does not exist yet (bootsecrets creates it)."""
    d = Path(f"/dev/shm/bootsecrets-test-{uuid.uuid4().hex[:10]}")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def published(root) -> dict:
    """The files a consumer sees under `root` (through the `NAME -> ..data/NAME` links), by
    relative path. bootsecrets' own entries (`..data`, `..v-*`, `.status.json`) are left out."""
    out = {}
    root = Path(root)
    if not root.exists():
        return out
    for top in sorted(os.listdir(root)):
        if top.startswith("..") or top == ".status.json":
            continue
        p = root / top
        if p.is_dir():
            for dirpath, _, files in os.walk(p, followlinks=True):
                for f in files:
                    full = Path(dirpath) / f
                    out[str(full.relative_to(root))] = full
        elif p.exists():
            out[top] = p
    return out


def status(root) -> dict:
    return json.loads((Path(root) / ".status.json").read_text())


class Result:
    def __init__(self, proc, elapsed):
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.elapsed = elapsed

    @property
    def output(self):
        return self.stdout + self.stderr

    def __repr__(self):
        return f"exit {self.code} after {self.elapsed:.2f}s\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


@pytest.fixture
def bootsecrets(tmp_path, request):
    """Runs the built binary with a manifest text, as the unit runs it (see the module
    docstring); never with a secret in argv or env. `as_full_root=True` runs it as plain root
    instead, for tests named `..._as_full_root` only."""
    assert BIN.exists(), f"{BIN} is missing: build it first (cargo build)"

    def run(manifest: str, *args: str, command: str = "run", timeout: float = 120, env=None,
            as_full_root=False, rw=(), binds=(), overlays=(), binary=None, netns=None):
        if as_full_root:
            assert "full_root" in request.node.name, (
                "only tests named ..._as_full_root may run the binary outside the unit's "
                "restrictions")
        mpath = tmp_path / "manifest.toml"
        mpath.write_text(manifest)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **(env or {})}
        argv = [str(binary or BIN), command, "--manifest", str(mpath), *args]
        if not as_full_root:
            argv = node_argv(argv, rw=rw, binds=binds, overlays=overlays)
        if netns is not None:  # the node's own network (support.netns.NetNs)
            argv = ["nsenter", f"--net=/run/netns/{netns.name}", "--", *argv]
        start = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
        return Result(proc, time.monotonic() - start)

    return run


def aws_manifest(outdir, imds, moto, secrets, *, region="us-east-1", settings="", backend_extra=""):
    """A manifest with one aws backend pointed at the local moto and IMDS double."""
    region_line = f'region = "{region}"' if region else ""
    body = f"""
[settings]
output_root = "{outdir}"
{settings}

[backend.aws]
type = "aws"
{region_line}
endpoint = "{moto.url}"
imds_endpoint = "{imds.url}"
{backend_extra}
"""
    for s in secrets:
        body += "\n[[secret]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in s.items())
    return body


def _started(factory_list):
    def stop_all():
        for d in factory_list:
            d.stop()
    return stop_all


@pytest.fixture
def azure_imds_factory():
    started = []

    def make(**kw):
        d = AzureImdsDouble(**kw).start()
        started.append(d)
        return d

    yield make
    _started(started)()


@pytest.fixture
def azure_imds(azure_imds_factory):
    return azure_imds_factory()


@pytest.fixture
def test_ca(tmp_path):
    return TestCA(tmp_path / "ca")


@pytest.fixture
def key_vault_factory(test_ca):
    started = []

    def make(imds, **kw):
        d = KeyVaultDouble(imds, test_ca, **kw).start()
        started.append(d)
        return d

    yield make
    _started(started)()


@pytest.fixture
def key_vault(key_vault_factory, azure_imds):
    return key_vault_factory(azure_imds)


@pytest.fixture
def gce_metadata_factory():
    started = []

    def make(**kw):
        d = GceMetadataDouble(**kw).start()
        started.append(d)
        return d

    yield make
    _started(started)()


@pytest.fixture
def gce_metadata(gce_metadata_factory):
    return gce_metadata_factory()


@pytest.fixture
def secret_manager(gce_metadata):
    d = SecretManagerDouble(gce_metadata).start()
    yield d
    d.stop()


def secrets_toml(secrets):
    body = ""
    for s in secrets:
        body += "\n[[secret]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in s.items())
    return body


def azure_manifest(outdir, imds, kv, secrets, *, settings="", backend_extra="", ca=True):
    """A manifest with one azure backend: the Key Vault double reached by its real-looking host
    name through `vault_address`, trusted through `ca_bundle`, and the IMDS double."""
    ca_line = f'ca_bundle = "{kv.ca_path}"' if ca else ""
    return f"""
[settings]
output_root = "{outdir}"
{settings}

[backend.kv]
type = "azure"
vault_url = "{kv.vault_url}"
vault_address = "127.0.0.1"
{ca_line}
imds_endpoint = "{imds.url}"
{backend_extra}
""" + secrets_toml(secrets)


def gcp_manifest(outdir, md, sm, secrets, *, settings="", backend_extra="", project=None):
    project_line = f'project = "{project}"' if project else ""
    return f"""
[settings]
output_root = "{outdir}"
{settings}

[backend.gcp]
type = "gcp"
endpoint = "{sm.url}"
metadata_endpoint = "{md.url}"
{project_line}
{backend_extra}
""" + secrets_toml(secrets)


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return json.dumps(v)  # a JSON string is a valid TOML basic string


def vault_manifest(outdir, address, auth: dict, secrets, *, settings="", backend_extra=""):
    """A manifest with one vault backend; `auth` becomes its `[backend.vault.auth]` table."""
    body = f"""
[settings]
output_root = "{outdir}"
{settings}

[backend.vault]
type = "vault"
address = "{address}"
{backend_extra}

[backend.vault.auth]
""" + "".join(f"{k} = {toml_value(v)}\n" for k, v in auth.items())
    for s in secrets:
        body += "\n[[secret]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in s.items())
    return body


# ---- LocalStack, and the network namespaces the vendors' clients meet the doubles in ----------
# (one block, appended: the fixtures above are unchanged)

from support.localstack import LocalStack  # noqa: E402
from support.netns import NetNs  # noqa: E402


@pytest.fixture(scope="session")
def localstack(tmp_path_factory):
    """One real LocalStack for the session (tests/support/localstack.py), on 127.0.0.1 only;
    tests isolate themselves by secret names, as with moto."""
    ls = LocalStack(log_path=tmp_path_factory.mktemp("localstack") / "localstack.log").start()
    yield ls
    ls.stop()


@pytest.fixture(params=["moto", "localstack"])
def aws_server(request):
    """Each Secrets Manager server in turn: moto (signatures and IAM checked) and LocalStack."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def aws_imds_factory(aws_server):
    """IMDSv2 doubles whose credentials come from `aws_server`'s own sts:AssumeRole."""
    started = []

    def make(**kw):
        d = ImdsDouble(aws_server, **kw).start()
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


@pytest.fixture
def aws_imds(aws_imds_factory):
    return aws_imds_factory()


@pytest.fixture
def netns():
    """A fresh network namespace with lo up and 169.254.169.254 on it (tests/support/netns.py),
    deleted after the test."""
    ns = NetNs().create()
    yield ns
    ns.close()

# ---- end of the LocalStack and network-namespace block -----------------------------------------


@pytest.fixture(params=["debug", "static"])
def binary(request):
    """What users run, for tests of identity, names and the run path: the debug build and the
    static release binary."""
    if request.param == "debug":
        return BIN
    if STATIC_BIN is None:
        if os.environ.get("BOOTSECRETS_REQUIRE_STATIC") == "1":
            pytest.fail("BOOTSECRETS_STATIC_BIN is not set: the static release binary must be "
                        "tested (tests/run builds it first)")
        pytest.skip("BOOTSECRETS_STATIC_BIN is not set (tests/run --quick)")
    return STATIC_BIN
