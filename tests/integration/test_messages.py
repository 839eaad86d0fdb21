"""Errors that name what to fix, through the binary: for AWS the region and endpoint a secret was
looked for in, the role and the action that were denied, a region that does not resolve."""

import socket
import threading

from conftest import aws_manifest


class NxdomainResolver:
    """A DNS server that answers every query with NXDOMAIN at once (RFC 1035 header, rcode 3),
    for a resolv.conf of the test's own."""

    def __init__(self, ns):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ns, 53))
        self.sock.settimeout(0.2)
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self):
        while not self.stop_flag.is_set():
            try:
                q, addr = self.sock.recvfrom(512)
            except OSError:
                continue
            # Same id and question; flags: response, recursion desired and available, NXDOMAIN.
            self.sock.sendto(q[:2] + b"\x81\x83" + q[4:6] + b"\x00\x00\x00\x00\x00\x00" + q[12:], addr)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.stop_flag.set()
        self.thread.join()
        self.sock.close()


def test_not_found_names_the_region_and_the_endpoint(moto, imds, outdir, name, bootsecrets):
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/missing"}],
                                 region="eu-west-3"))
    assert r.code == 1, r
    assert "not found (ResourceNotFoundException, HTTP 4" in r.stderr, r
    assert (f") in region eu-west-3 at {moto.url}: check `ref` and the region") in r.stderr, r


def test_access_denied_names_the_role_and_the_action(moto, imds_factory, outdir, name,
                                                     bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="v")
    imds = imds_factory(role="nobody")
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}]))
    assert r.code == 1, r
    assert ("access denied (AccessDenied, HTTP 403): the instance role `nobody` "
            "(arn:aws:sts::123456789012:assumed-role/nobody/") in r.stderr, r
    assert "may not call secretsmanager:GetSecretValue on this secret (region us-east-1)" in r.stderr, r


def test_a_region_whose_endpoint_does_not_resolve_says_so(imds, outdir, bootsecrets, tmp_path):
    ns = "127.53.0.53"
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {ns}\noptions timeout:1 attempts:1\n")
    m = aws_manifest(outdir, imds, Unreachable, [{"path": "a", "ref": "x"}], region="eu-west-9",
                     settings="deadline_seconds = 3").replace('endpoint = "unused"\n', "")
    with NxdomainResolver(ns):
        r = bootsecrets(m, binds=[(resolv, "/etc/resolv.conf")])
    assert r.code == 3, r
    assert ("https://secretsmanager.eu-west-9.amazonaws.com, built from region `eu-west-9`, did "
            "not resolve: check the region") in r.stderr, r


class Unreachable:
    url = "unused"


def test_vault_denied_and_missing_name_the_vault_and_the_policy_path(bao, outdir, credfile,
                                                                      bootsecrets):
    """Vault: the address, and the exact path a policy must grant `read` on (KV v2's `data/`)."""
    import uuid

    from conftest import vault_manifest

    mount = f"kv-{uuid.uuid4().hex[:8]}"
    bao.enable_kv(mount, 2)
    bao.put(mount, "node/db", {"password": "x"})
    tok = bao.token(["default"])  # may not read the mount
    auth = {"method": "token", "token_file": str(credfile("t", tok + "\n"))}
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [
        {"path": "f", "ref": "node/db", "mount": mount, "kv_version": 2}]))
    assert r.code == 1, r
    assert (f"permission denied (403) at {bao.url}: the token is valid, but its policies must "
            f"grant `read` on `{mount}/data/node/db`") in r.stderr, r
    bao.read_policy(mount, f"{mount}/data/*")
    tok = bao.token([mount])
    auth = {"method": "token", "token_file": str(credfile("t2", tok + "\n"))}
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [
        {"path": "f", "ref": "node/absent", "mount": mount, "kv_version": 2}]))
    assert r.code == 1, r
    assert (f"not found (404) at {bao.url}: no secret at `{mount}/data/node/absent`; check `ref`"
            in r.stderr), r


def test_azure_denied_and_missing_name_the_vault_and_the_identity(azure_imds, key_vault, outdir,
                                                                  bootsecrets):
    from conftest import azure_manifest

    key_vault.set_secret("db", "v")
    r = bootsecrets(azure_manifest(outdir, azure_imds, key_vault, [{"path": "x", "ref": "nope"}]))
    assert r.code == 1, r
    assert (f"not found (SecretNotFound, HTTP 404) in vault {key_vault.vault_url}: check `ref`"
            in r.stderr), r
    key_vault.allow_only("00000000-0000-0000-0000-000000000000")
    r = bootsecrets(azure_manifest(outdir, azure_imds, key_vault, [{"path": "x", "ref": "db"}]))
    assert r.code == 1, r
    assert (f"(ForbiddenByRbac, HTTP 403) (vault {key_vault.vault_url}, asked by the VM's "
            f"system-assigned managed identity (client_id {azure_imds.system.client_id}))"
            ) in r.stderr, r


def test_gcp_denied_and_missing_name_the_project_and_the_account(gce_metadata, secret_manager,
                                                                  outdir, bootsecrets):
    from conftest import gcp_manifest

    r = bootsecrets(gcp_manifest(outdir, gce_metadata, secret_manager, [{"path": "x", "ref": "nope"}]))
    assert r.code == 1, r
    assert ("not found (NOT_FOUND, HTTP 404) in project bootsecrets-test: check `ref` (and "
            "`location`" in r.stderr), r
    secret_manager.deny(gce_metadata.default_email)
    r = bootsecrets(gcp_manifest(outdir, gce_metadata, secret_manager, [{"path": "x", "ref": "nope"}]))
    assert r.code == 1, r
    assert (f"permission denied (PERMISSION_DENIED, HTTP 403): grant {gce_metadata.default_email} "
            "roles/secretmanager.secretAccessor on it (project bootsecrets-test)") in r.stderr, r


def test_an_unreachable_endpoint_is_named_with_its_region(imds, outdir, bootsecrets):
    class Closed:
        url = "http://127.0.0.1:9"  # discard: nothing listens

    r = bootsecrets(aws_manifest(outdir, imds, Closed, [{"path": "a", "ref": "x"}],
                                 settings="deadline_seconds = 3"))
    assert r.code == 3, r
    assert "cannot reach Secrets Manager: connection refused (http://127.0.0.1:9, region us-east-1)" \
        in r.stderr, r
