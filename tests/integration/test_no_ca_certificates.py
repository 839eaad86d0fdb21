"""A node without CA certificates (no /etc/ssl, as on a minimal image before its CA package is
installed). The metadata servers speak plain HTTP, so the identities built on them must not need
a CA store; an HTTPS backend that does need one fails at once, saying that the system has no CA
certificates and what to do; a backend that names its own CA works.

The binary runs under the unit's restrictions with empty directories mounted over the places
the system's roots are loaded from."""

import pytest

from conftest import azure_manifest, gcp_manifest, published

# Where rustls-native-certs (through openssl-probe) finds the system's roots on this machine.
ROOTS = ("/etc/ssl", "/usr/share/ca-certificates")


@pytest.fixture
def no_roots(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    return [(empty, d) for d in ROOTS]


def test_the_gce_identity_needs_no_ca_and_secret_manager_says_what_is_missing(
        gce_metadata, secret_manager, outdir, bootsecrets, no_roots, binary):
    secret_manager.add_version("db", b"s3cret")
    r = bootsecrets(gcp_manifest(outdir, gce_metadata, secret_manager, [{"path": "db", "ref": "db"}],
                                 settings="startup_jitter_ms = 0\ndeadline_seconds = 10",
                                 project="bootsecrets-test"), binds=no_roots, binary=binary)
    assert r.code == 1, r
    # The access token came from the metadata server over plain HTTP ...
    assert gce_metadata.count("/token") >= 1, gce_metadata.requests
    # ... and the Secret Manager client, which verifies servers with the system's roots, fails at
    # once, naming the cause and the fix.
    assert "cannot set up the Secret Manager client" in r.stderr, r
    assert "this system has no CA certificates" in r.stderr and "install the distribution's CA " \
        "certificates" in r.stderr, r
    assert r.elapsed < 8, r
    assert published(outdir) == {}


def test_azure_with_its_own_ca_bundle_works_without_system_roots(
        azure_imds, key_vault, outdir, bootsecrets, no_roots, binary):
    key_vault.set_secret("db-password", "pw")
    r = bootsecrets(azure_manifest(outdir, azure_imds, key_vault, [{"path": "db", "ref": "db-password"}]),
                    binds=no_roots, binary=binary)
    assert r.code == 0, r
    assert published(outdir)["db"].read_bytes() == b"pw"


def test_azure_without_a_ca_bundle_says_what_is_missing(azure_imds, key_vault, outdir, bootsecrets, no_roots):
    key_vault.set_secret("db-password", "pw")
    r = bootsecrets(azure_manifest(outdir, azure_imds, key_vault, [{"path": "db", "ref": "db-password"}],
                                   ca=False), binds=no_roots)
    assert r.code == 1, r
    assert "cannot set up the HTTPS client for Key Vault: this system has no CA certificates" in r.stderr, r
    assert "name the server's CA with `ca_bundle`" in r.stderr, r
    assert key_vault.requests == [], "nothing is sent to a server that cannot be verified"
