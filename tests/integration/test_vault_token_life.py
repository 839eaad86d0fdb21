"""A Vault token placed on the node (`method = "token"`) and kept across boots, against a real
OpenBao server: every run renews it before reading, so a periodic token lives as long as the node
runs at least once per period; its life is in the status file and in `doctor` (which only looks);
one Vault no longer knows fails the backend saying so, once; one that cannot look itself up works
with a warning."""

import re
import time
import uuid

from conftest import published, status, vault_manifest
from test_doctor import doctor, finding


def kv_mount(bao):
    mount = f"kv-{uuid.uuid4().hex[:8]}"
    bao.enable_kv(mount, 2)
    bao.read_policy(mount, f"{mount}/data/*", f"{mount}/*")
    bao.put(mount, "k", {"v": "value-1"})
    return mount


def manifest(outdir, bao, token_file, mount, n=1):
    secrets = [{"path": f"s{i}", "ref": f"{mount}/k", "field": "v"} for i in range(n)]
    return vault_manifest(outdir, bao.url, {"method": "token", "token_file": str(token_file)},
                          secrets)


def ttl_of(bao, token):
    """The token's TTL as Vault sees it, asked with the root token (not the token itself)."""
    return bao.api("POST", "auth/token/lookup", {"token": token})["data"]["ttl"]


def test_a_periodic_token_lives_while_the_node_runs_within_each_period(
        bao, outdir, credfile, bootsecrets):
    mount = kv_mount(bao)
    tok = bao.token([mount], ttl=None, period="8s", orphan=True)
    tf = credfile("token", tok + "\n")
    m = manifest(outdir, bao, tf, mount)
    # Five runs 4 s apart: 16 s, twice the period. Without the renewal the token dies 8 s after
    # it was minted and the third run fails. (The gaps leave a loaded machine room: a token
    # looked up in its last second answers `ttl: 0` and must still be renewed.)
    for i in range(5):
        started = time.monotonic()
        r = bootsecrets(m)
        assert r.code == 0, (i, r)
        t = status(outdir)["run"]["tokens"]
        assert len(t) == 1 and t[0]["backend"] == "vault" and t[0]["token_file"] == str(tf), t
        assert t[0]["renewable"] is True and t[0]["renewed"] is True, t
        assert t[0]["period_s"] == 8 and t[0]["ttl_s"] == 8, t
        assert t[0]["expires"].endswith("Z"), t
        # Less than a day left: the warning says what a node that does not run in time meets.
        assert "expires in 8 s" in r.stderr and "does not run for 8 s" in r.stderr and \
            "fails closed until a new token is placed" in r.stderr, r.stderr
        assert t[0]["note"] and "expires in 8 s" in t[0]["note"], t
        time.sleep(max(0.0, 4.0 - (time.monotonic() - started)))
    assert published(outdir)["s0"].read_bytes() == b"value-1"
    # A node that does not run for longer than the period: the token is gone, and the run says
    # so once for the backend, naming the file and what to do, not a denial per secret.
    time.sleep(9)
    r = bootsecrets(m)
    assert r.code == 1, r
    assert f"the token in {tf} is not valid at {bao.url}: Vault does not know it" in r.stderr, \
        r.stderr
    assert "place a new token in token_file" in r.stderr, r.stderr
    assert "policies must grant" not in r.stderr, r.stderr
    assert r.stderr.count("is not valid at") == 1, r.stderr
    assert tok not in r.stderr
    assert published(outdir)["s0"].read_bytes() == b"value-1", "a failed run keeps the published set"


def test_a_renewable_token_gets_back_the_ttl_it_was_created_with(
        bao, outdir, credfile, bootsecrets, tmp_path):
    mount = kv_mount(bao)
    # Not periodic: a renewal asks for the TTL it was created with (Vault's default for a
    # renewal without an increment would be the mount's default, 768 h here).
    tok = bao.token([mount], ttl="2h")
    tf = credfile("token", tok)
    m = manifest(outdir, bao, tf, mount)
    time.sleep(2)
    assert ttl_of(bao, tok) < 7200
    # doctor only looks: the TTL keeps running down.
    code, report, text = doctor(m, tmp_path, cmdline="")
    ident = finding(report, "identity `vault`")
    assert ident["status"] == "ok" and f"the token in {tf}, valid at {bao.url}: renewable, " \
        "expires in 1 h 59 min" in ident["detail"], ident
    assert ttl_of(bao, tok) < 7200, "doctor must not renew the token"
    w = [c for c in report["checks"] if c["check"] == "identity `vault`" and c["status"] == "warn"]
    assert w and "every run renews it for 2 h 0 min, never past its maximum TTL" in \
        w[0]["detail"], report
    r = bootsecrets(m)
    assert r.code == 0, r
    left = ttl_of(bao, tok)
    assert 7190 <= left <= 7200, f"the run renewed it to {left} s, not to its 2 h"
    t = status(outdir)["run"]["tokens"][0]
    assert t["renewed"] is True and t["ttl_s"] == 7200 and t["period_s"] is None, t


def test_tokens_that_cannot_be_renewed_or_never_expire(bao, outdir, credfile, bootsecrets, tmp_path):
    mount = kv_mount(bao)
    # Not renewable: used as it is, with the warning when it is near its end.
    tok = bao.token([mount], ttl="1h", renewable=False)
    tf = credfile("token", tok)
    r = bootsecrets(manifest(outdir, bao, tf, mount))
    assert r.code == 0, r
    assert re.search(rf"the Vault token in {re.escape(str(tf))} expires in (1 h 0 min|59 min \d+ s)",
                     r.stderr) and "it cannot be renewed: place a new token before then" in r.stderr, r.stderr
    t = status(outdir)["run"]["tokens"][0]
    assert t["renewable"] is False and t["renewed"] is False and 3590 <= t["ttl_s"] <= 3600, t
    # A token with a long period: renewed, no warning.
    tok = bao.token([mount], ttl=None, period="48h", orphan=True)
    tf.write_text(tok)
    r = bootsecrets(manifest(outdir, bao, tf, mount))
    assert r.code == 0 and "warning" not in r.stderr, r
    t = status(outdir)["run"]["tokens"][0]
    assert t["renewed"] is True and t["ttl_s"] == 48 * 3600 and t["note"] is None, t
    # The root token never expires: nothing to renew, nothing to warn about.
    tf.write_text("root")
    r = bootsecrets(manifest(outdir, bao, tf, mount))
    assert r.code == 0 and "warning" not in r.stderr, r
    t = status(outdir)["run"]["tokens"][0]
    assert t["renewable"] is False and t["ttl_s"] is None and t["expires"] is None, t
    code, report, _ = doctor(manifest(outdir, bao, tf, mount), tmp_path, cmdline="")
    assert "not renewable, never expires" in finding(report, "identity `vault`")["detail"], report


def test_a_token_without_the_default_policy_works_with_a_warning(
        bao, outdir, credfile, bootsecrets):
    mount = kv_mount(bao)
    tok = bao.token([mount], no_default_policy=True)
    tf = credfile("token", tok)
    r = bootsecrets(manifest(outdir, bao, tf, mount))
    assert r.code == 0, r
    assert "do not allow `read` on auth/token/lookup-self (the default policy does): its " \
        "remaining life is unknown and it is not renewed" in r.stderr, r.stderr
    t = status(outdir)["run"]["tokens"][0]
    assert t["renewable"] is None and t["ttl_s"] is None and "lookup-self" in t["note"], t


def test_a_revoked_token_is_one_message_and_doctor_fails_it(
        bao, outdir, credfile, bootsecrets, tmp_path):
    mount = kv_mount(bao)
    tok = bao.token([mount])
    tf = credfile("token", tok)
    m = manifest(outdir, bao, tf, mount, n=3)
    bao.api("POST", "auth/token/revoke", {"token": tok})
    r = bootsecrets(m)
    assert r.code == 1, r
    assert r.stderr.count("Vault does not know it (expired, revoked") == 1, r.stderr
    assert "needed by secret(s) `s0`, `s1`, `s2`" in r.stderr, r.stderr
    code, report, text = doctor(m, tmp_path, cmdline="")
    ident = finding(report, "identity `vault`")
    assert code != 0 and ident["status"] == "fail" and "Vault does not know it" in \
        ident["detail"], report
    assert "has expired or was revoked: place a new one" in ident["hint"], ident
