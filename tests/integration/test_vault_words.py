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
