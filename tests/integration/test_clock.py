"""A node whose clock is behind (NTP not synced yet at boot) sees a valid certificate as not yet
valid. Every backend classifies it the same way: transient, retried within the deadline, and
named with the clock as the likely cause; never a permanent failure at the first attempt."""

import datetime

import pytest

from conftest import aws_manifest, vault_manifest
from support.tlsca import TlsListener

TOMORROW = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)


@pytest.fixture
def not_yet_valid(test_ca):
    servers = []

    def make(names):
        s = TlsListener(test_ca.server_context(names, valid_from=TOMORROW))
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


def expect_clock(r, listener):
    assert r.code == 3, r  # the deadline, not a permanent failure
    assert "not valid at this time (is the clock set?)" in r.stderr, r
    assert listener.handshakes >= 2, "a transient failure is retried"


def test_aws(moto, imds, outdir, name, bootsecrets, not_yet_valid, test_ca):
    tls = not_yet_valid(["localhost"])
    m = aws_manifest(outdir, imds, moto, [{"path": "x", "ref": f"{name}/x"}],
                     settings="deadline_seconds = 4\nstartup_jitter_ms = 0")
    m = m.replace(f'endpoint = "{moto.url}"', f'endpoint = "https://localhost:{tls.port}"')
    expect_clock(bootsecrets(m, env={"SSL_CERT_FILE": str(test_ca.ca_path)}), tls)


def test_vault(outdir, credfile, bootsecrets, not_yet_valid, test_ca):
    tls = not_yet_valid(["localhost"])
    auth = {"method": "token", "token_file": str(credfile("t", "s.token"))}
    m = vault_manifest(outdir, f"https://localhost:{tls.port}", auth,
                       [{"path": "x", "ref": "secret/x"}],
                       settings="deadline_seconds = 4\nstartup_jitter_ms = 0",
                       backend_extra=f'ca_file = "{test_ca.ca_path}"')
    expect_clock(bootsecrets(m), tls)


def test_azure(azure_imds, outdir, bootsecrets, not_yet_valid, test_ca):
    host = "clock.vault.azure.net"
    tls = not_yet_valid([host])
    m = f"""
[settings]
output_root = "{outdir}"
deadline_seconds = 4
startup_jitter_ms = 0

[backend.kv]
type = "azure"
vault_url = "https://{host}:{tls.port}"
vault_address = "127.0.0.1"
ca_bundle = "{test_ca.ca_path}"
imds_endpoint = "{azure_imds.url}"

[[secret]]
path = "x"
ref = "db"
"""
    expect_clock(bootsecrets(m), tls)


def test_gcp(gce_metadata, outdir, bootsecrets, not_yet_valid, test_ca):
    tls = not_yet_valid(["localhost"])
    m = f"""
[settings]
output_root = "{outdir}"
deadline_seconds = 4
startup_jitter_ms = 0

[backend.gcp]
type = "gcp"
endpoint = "https://localhost:{tls.port}"
metadata_endpoint = "{gce_metadata.url}"
project = "clock-project"

[[secret]]
path = "x"
ref = "db"
"""
    expect_clock(bootsecrets(m, env={"SSL_CERT_FILE": str(test_ca.ca_path)}), tls)
