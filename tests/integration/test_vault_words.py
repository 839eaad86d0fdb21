"""What Vault said reaches the operator, against a real OpenBao server: the `errors` of a login's
answer (a role bound to another network) are quoted in the message, bounded and on one line; a
KV read's answer never is (it is the one answer that can carry secret data)."""

import uuid

from conftest import vault_manifest


def approle(bao, **role):
    mount = f"approle-{uuid.uuid4().hex[:6]}"
    bao.enable_auth(mount, "approle")
    bao.api("POST", f"auth/{mount}/role/node", {"token_ttl": "10m", **role})
    role_id = bao.api("GET", f"auth/{mount}/role/node/role-id")["data"]["role_id"]
    secret_id = bao.api("POST", f"auth/{mount}/role/node/secret-id")["data"]["secret_id"]
    return mount, role_id, secret_id


def test_a_role_bound_to_another_network_says_so_in_vaults_words(
        bao, outdir, credfile, bootsecrets):
    mount, role_id, secret_id = approle(bao, token_bound_cidrs=["10.99.0.0/16"],
                                        secret_id_bound_cidrs=["10.99.0.0/16"])
    auth = {"method": "approle", "mount": mount, "role_id": role_id,
            "secret_id_file": str(credfile("sid", secret_id))}
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, [{"path": "v", "ref": "secret/x"}]))
    assert r.code == 1, r
    # bootsecrets' own words (the class and status), then Vault's, on one line.
    line = next(line for line in r.stderr.splitlines() if "Vault said" in line)
    assert "login with approle at auth/" in line and "(400)" in line, r.stderr
    assert "Vault said: \"source address '127.0.0.1' unauthorized by CIDR restrictions on the " \
        "role\"" in line, r.stderr
    assert "%!" not in line and secret_id not in r.output, r.stderr


def test_a_kv_reads_answer_is_never_quoted(bao, outdir, credfile, bootsecrets):
    mount = f"kv-{uuid.uuid4().hex[:8]}"
    bao.enable_kv(mount, 2)
    bao.policy("none-here", 'path "nowhere/*" { capabilities = ["read"] }')
    tok = bao.token(["none-here"])
    auth = {"method": "token", "token_file": str(credfile("t", tok))}
    r = bootsecrets(vault_manifest(outdir, bao.url, auth,
                                   [{"path": "v", "ref": "k", "mount": mount, "kv_version": 2}]))
    assert r.code == 1 and "permission denied (403)" in r.stderr, r
    assert "Vault said" not in r.stderr, r.stderr


def test_a_seal_during_the_fetches_is_one_line_each_way(bao, outdir, credfile, bootsecrets,
                                                         fault_proxy):
    """Twenty fetches while Vault answers `sealed` for four seconds: one warning when the backend
    starts failing, one line when it answers again; each request's attempts only at -v."""
    from support.faults import Respond

    mount = f"kv-{uuid.uuid4().hex[:8]}"
    bao.enable_kv(mount, 2)
    for i in range(20):
        bao.put(mount, f"s{i}", {"v": f"value-{i}"})
    bao.read_policy(mount, f"{mount}/data/*")
    tok = bao.token([mount])
    auth = {"method": "token", "token_file": str(credfile("t", tok))}
    secrets = [{"path": f"s{i}", "ref": f"s{i}", "mount": mount, "kv_version": 2, "field": "v"}
               for i in range(20)]
    for verbose in (False, True):
        p = fault_proxy(bao.url)
        sealed = p.inject(Respond(503, b'{"errors":["Vault is sealed"]}',
                                  [("Content-Type", "application/json")]),
                          method="GET", path=f"^/v1/{mount}/data/", window=(0, 4))
        m = vault_manifest(outdir, p.url, auth, secrets, settings="deadline_seconds = 30")
        r = bootsecrets(m, *(["-v"] if verbose else []))
        assert r.code == 0, r
        assert sealed.applied > 20, sealed
        assert (outdir / "s7").read_bytes() == b"value-7"
        warnings = [line for line in r.stderr.splitlines()
                    if "warning:" in line and "Vault is sealed (503)" in line]
        assert len(warnings) == 1, r.stderr
        assert "backend `vault`: " in warnings[0] and "retrying in " in warnings[0], warnings
        back = [line for line in r.stderr.splitlines() if "answers again" in line]
        assert len(back) == 1 and "Vault is sealed (503)" in back[0], r.stderr
        per_request = [line for line in r.stderr.splitlines()
                       if "(attempt " in line and "Vault is sealed" in line]
        if verbose:
            assert len(per_request) >= 20, r.stderr
        else:
            assert per_request == [], r.stderr


def test_a_token_that_runs_out_during_the_run_is_told_from_a_policy_denial(
        bao, outdir, credfile, bootsecrets):
    """A 403 is asked about once (auth/token/lookup-self): a token Vault no longer knows (here an
    AppRole token whose `token_num_uses` is spent after two reads) says so, with the role settings
    to fix; a valid token that its policies do not allow says that, with the policy to write."""
    mount = f"kv-{uuid.uuid4().hex[:8]}"
    bao.enable_kv(mount, 2)
    for i in range(3):
        bao.put(mount, f"s{i}", {"v": f"value-{i}"})
    bao.read_policy(mount, f"{mount}/data/s0", f"{mount}/data/s1", f"{mount}/data/s2")
    secrets = [{"path": f"s{i}", "ref": f"s{i}", "mount": mount, "kv_version": 2, "field": "v"}
               for i in range(3)]
    # One at a time: the first two reads spend the token's two uses, the third meets a token
    # Vault has already revoked.
    settings = "concurrency = 1"
    role_mount, role_id, secret_id = approle(bao, token_policies=[mount], token_num_uses=2)
    auth = {"method": "approle", "mount": role_mount, "role_id": role_id,
            "secret_id_file": str(credfile("sid", secret_id))}
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, secrets, settings=settings,
                                   backend_extra="revoke_token = false"))
    assert r.code == 1, r
    assert (f"the token from the approle login is no longer valid at {bao.url}: Vault does not "
            "know it (expired, revoked, or its use limit spent): a role's `token_num_uses` must "
            "be 0") in r.stderr, r.stderr
    assert "policies must grant" not in r.stderr, r.stderr
    assert r.stderr.count("is no longer valid") == 1, r.stderr
    assert secret_id not in r.output

    # The same reads with a token that is valid but may read only s0: the policy is named.
    bao.read_policy(mount + "-s0", f"{mount}/data/s0")
    role_mount, role_id, secret_id = approle(bao, token_policies=[mount + "-s0"])
    auth = {"method": "approle", "mount": role_mount, "role_id": role_id,
            "secret_id_file": str(credfile("sid2", secret_id))}
    r = bootsecrets(vault_manifest(outdir, bao.url, auth, secrets, settings=settings))
    assert r.code == 1, r
    assert (f"permission denied (403) at {bao.url}: the token is valid, but its policies must "
            f"grant `read` on `{mount}/data/s1`") in r.stderr, r.stderr
    assert "is no longer valid" not in r.stderr and "is invalid or" not in r.stderr, r.stderr
