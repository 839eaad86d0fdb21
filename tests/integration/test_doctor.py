"""`bootsecrets doctor` against the same servers and doubles as `run`: every check, each failure's
hint, the JSON form, and that it never reads or prints a value nor writes anything."""

import json
import math
import pathlib
import subprocess

import pytest

from conftest import BIN, aws_manifest, azure_manifest, gcp_manifest, node_argv, vault_manifest

CANARY = "doctor-canary-value-7f3a"


def doctor(manifest_text, tmp_path, *args, binds=(), cmdline="ignition.platform.id=aws"):
    """Runs doctor on a manifest, with the kernel command line it reads (its own file mounted
    over /proc/cmdline for this run). Returns (exit code, report dict, text output)."""
    m = tmp_path / "manifest.toml"
    m.write_text(manifest_text)
    cl = tmp_path / "cmdline"
    cl.write_text(cmdline + "\n")
    binds = [(cl, "/proc/cmdline"), *binds]
    runs = {}
    for form in ("text", "json"):
        extra = ["--json"] if form == "json" else []
        r = subprocess.run(node_argv([str(BIN), "doctor", "--manifest", str(m), *extra, *args],
                                     binds=binds), capture_output=True, text=True, timeout=120)
        assert CANARY not in r.stdout + r.stderr, "doctor printed a value"
        runs[form] = r
    assert runs["text"].returncode == runs["json"].returncode, runs
    report = json.loads(runs["json"].stdout)
    assert report["healthy"] == (runs["json"].returncode == 0), report
    return runs["json"].returncode, report, runs["text"].stdout


def finding(report, check):
    found = [c for c in report["checks"] if c["check"] == check]
    assert found, (check, report)
    return found[0]


def test_a_healthy_aws_node(moto, imds_factory, outdir, name, bootsecrets, tmp_path):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString=CANARY)
    imds = imds_factory(role="doctor")
    m = aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}])
    assert bootsecrets(m).code == 0
    before = {p.name: p.lstat() for p in outdir.iterdir()}
    code, report, text = doctor(m, tmp_path)
    assert code == 0, text
    assert finding(report, "manifest")["status"] == "ok"
    assert finding(report, "platform")["status"] == "ok"
    ident = finding(report, "identity `aws`")
    assert ident["status"] == "ok" and \
        "instance role `doctor` in account 123456789012, region us-east-1" in ident["detail"], ident
    s = finding(report, "secret `a`")
    assert s["status"] == "ok" and "exists in region us-east-1 with 1 version(s)" in s["detail"], s
    assert finding(report, "output root")["status"] == "ok"
    last = finding(report, "last run")
    assert last["status"] == "ok" and last["detail"].startswith("published"), last
    assert finding(report, "unit ordering")["status"] == "skip"
    assert "healthy: nothing stands between this node and its secrets" in text
    after = {p.name: p.lstat() for p in outdir.iterdir()}
    assert {k: (v.st_ino, v.st_mtime_ns) for k, v in after.items()} == \
        {k: (v.st_ino, v.st_mtime_ns) for k, v in before.items()}, "doctor writes nothing"


def test_what_a_run_would_trip_on_fails_with_a_hint(moto, imds_factory, outdir, name, tmp_path):
    imds = imds_factory(role="doctor")
    m = aws_manifest(outdir, imds, moto, [
        {"path": "a", "ref": f"{name}/missing"},
        {"path": "b", "ref": f"{name}/also-missing", "optional": True},
    ])
    code, report, text = doctor(m, tmp_path)
    assert code == 1, text
    a = finding(report, "secret `a`")
    assert a["status"] == "fail" and "not found" in a["detail"] and "in region us-east-1" in a["detail"]
    assert "kubelet would not start" in a["hint"]
    assert finding(report, "secret `b`")["status"] == "warn", "optional: a warning"
    assert finding(report, "output root")["status"] == "warn", "not created yet: a warning"
    assert "NOT healthy" in text and "hint: " in text


def test_a_least_privilege_role_cannot_be_checked_without_reading(moto, imds, outdir, name,
                                                                  tmp_path):
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString=CANARY)
    code, report, _ = doctor(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}]),
                             tmp_path)
    s = finding(report, "secret `a`")
    assert s["status"] == "warn" and "secretsmanager:DescribeSecret" in s["detail"], s
    assert code == 0, report


def test_identity_failures_come_with_their_fix(moto, imds_factory, outdir, name, tmp_path):
    for kw, needle in [({"role": None}, "attach an instance profile"),
                       ({"hang_token_puts": math.inf}, "hop limit")]:
        imds = imds_factory(**kw)
        code, report, _ = doctor(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": "x"}]), tmp_path)
        assert code == 1
        ident = finding(report, "identity `aws`")
        assert ident["status"] == "fail" and needle in ident["hint"], (kw, ident)
        assert finding(report, "secret `a`")["status"] == "skip"


def test_a_manifest_for_another_cloud_is_named(moto, imds, outdir, name, tmp_path):
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString=CANARY)
    _, report, _ = doctor(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}]),
                          tmp_path, cmdline="BOOT_IMAGE=/x flatcar.oem.id=gce")
    p = finding(report, "platform")
    assert p["status"] == "warn" and "looks like GCP (flatcar.oem.id=gce)" in p["detail"], p
    assert "backend `aws` uses the AWS instance identity" in p["detail"]


def test_an_invalid_manifest_says_so_first(tmp_path):
    code, report, _ = doctor("[settings]\ndeadline_seconds = 0\n", tmp_path)
    assert code == 1
    assert report["checks"][0]["check"] == "manifest" and report["checks"][0]["status"] == "fail"


def test_vault_metadata_versions_and_kv1(bao, outdir, credfile, tmp_path):
    import uuid

    v2, v1 = f"kv-{uuid.uuid4().hex[:8]}", f"kv-{uuid.uuid4().hex[:8]}"
    bao.enable_kv(v2, 2)
    bao.enable_kv(v1, 1)
    bao.put(v2, "db", {"password": CANARY})
    bao.put(v2, "db", {"password": CANARY + "2"})
    bao.api("POST", f"{v2}/delete/db", {"versions": [1]})
    bao.put(v1, "old", {"password": CANARY}, version=1)
    bao.policy("doctor", f'path "{v2}/*" {{ capabilities = ["read"] }}\n'
                         f'path "{v1}/*" {{ capabilities = ["read"] }}\n')
    tok = bao.token(["doctor"])
    auth = {"method": "token", "token_file": str(credfile("t", tok + "\n"))}
    m = vault_manifest(outdir, bao.url, auth, [
        {"path": "current", "ref": "db", "mount": v2, "kv_version": 2},
        {"path": "deleted", "ref": "db", "mount": v2, "kv_version": 2, "version": "1"},
        {"path": "v1", "ref": "old", "mount": v1, "kv_version": 1},
    ])
    code, report, _ = doctor(m, tmp_path, cmdline="ignition.platform.id=metal")
    ident = finding(report, "identity `vault`")["detail"]
    assert ident.startswith(f"the token in {auth['token_file']}, valid at {bao.url}: renewable, "
                            "expires in "), ident
    assert finding(report, "secret `current`")["status"] == "ok"
    d = finding(report, "secret `deleted`")
    assert d["status"] == "fail" and "version 1 is deleted" in d["detail"], d
    assert finding(report, "secret `v1`")["status"] == "skip"
    assert finding(report, "platform")["status"] == "ok", "a token login needs no cloud"
    assert code == 1


def test_azure_versions_and_rbac(azure_imds, key_vault, outdir, tmp_path):
    key_vault.set_secret("db", CANARY)
    m = azure_manifest(outdir, azure_imds, key_vault, [{"path": "x", "ref": "db"},
                                                       {"path": "y", "ref": "nope"}])
    code, report, _ = doctor(m, tmp_path, cmdline="ignition.platform.id=azure")
    # The client id IMDS reported is what an operator grants the vault role to.
    assert (f"system-assigned managed identity (client_id {azure_imds.system.client_id})"
            in finding(report, "identity `kv`")["detail"])
    assert finding(report, "secret `x`")["status"] == "ok"
    y = finding(report, "secret `y`")
    assert y["status"] == "fail" and "not found" in y["detail"], y
    key_vault.allow_only("00000000-0000-0000-0000-000000000000")
    _, report, _ = doctor(m, tmp_path, cmdline="ignition.platform.id=azure")
    assert finding(report, "secret `x`")["status"] == "warn"


def test_gcp_versions_scopes_and_accessor_only(gce_metadata, secret_manager, outdir, tmp_path):
    secret_manager.add_version("db", CANARY.encode())
    m = gcp_manifest(outdir, gce_metadata, secret_manager, [{"path": "x", "ref": "db"}])
    code, report, _ = doctor(m, tmp_path, cmdline="ignition.platform.id=gcp")
    assert code == 0, report
    assert finding(report, "secret `x`")["detail"].startswith("version 1 is enabled"), report
    secret_manager.accessor_only.add(gce_metadata.default_email)
    _, report, _ = doctor(m, tmp_path, cmdline="ignition.platform.id=gcp")
    x = finding(report, "secret `x`")
    assert x["status"] == "warn" and "secretmanager.versions.get" in x["detail"], x


def test_an_unassigned_managed_identity_is_named(azure_imds_factory, key_vault_factory, outdir,
                                                 tmp_path):
    imds = azure_imds_factory(system_assigned=False)
    kv = key_vault_factory(imds)
    code, report, _ = doctor(azure_manifest(outdir, imds, kv, [{"path": "x", "ref": "db"}]),
                             tmp_path, cmdline="ignition.platform.id=azure")
    assert code == 1
    ident = finding(report, "identity `kv`")
    assert ident["status"] == "fail" and "assign the managed identity to the VM" in ident["hint"], ident


def test_access_scopes_that_keep_secret_manager_out_are_named(gce_metadata, secret_manager, outdir,
                                                              tmp_path):
    secret_manager.add_version("db", CANARY.encode())
    gce_metadata.scopes = ["https://www.googleapis.com/auth/devstorage.read_only"]
    _, report, _ = doctor(gcp_manifest(outdir, gce_metadata, secret_manager, [{"path": "x", "ref": "db"}]),
                          tmp_path, cmdline="ignition.platform.id=gcp")
    warn = [c for c in report["checks"] if c["check"] == "identity `gcp`" and c["status"] == "warn"]
    assert warn and "include neither cloud-platform nor secretmanager" in warn[0]["detail"], report


def test_a_diagnosis_never_spends_a_single_use_secret_id(bao, outdir, credfile, bootsecrets,
                                                         tmp_path):
    """A wrapped secret_id is looked up, never unwrapped; a plain one (whose uses the role may
    limit) is not logged in with unless asked. The run after the diagnosis still logs in."""
    import uuid

    import requests
    kv = f"kv-{uuid.uuid4().hex[:8]}"
    bao.enable_kv(kv, 2)
    bao.read_policy(kv, f"{kv}/data/*", f"{kv}/*")
    mount = f"approle-{uuid.uuid4().hex[:6]}"
    bao.enable_auth(mount, "approle")
    bao.api("POST", f"auth/{mount}/role/node", {"token_policies": [kv], "secret_id_num_uses": 1})
    role_id = bao.api("GET", f"auth/{mount}/role/node/role-id")["data"]["role_id"]
    bao.put(kv, "k", {"v": "after-doctor"})
    rid = str(credfile("role-id", role_id))
    secrets = [{"path": "v", "ref": f"{kv}/k", "field": "v"}]

    r = requests.post(f"{bao.url}/v1/auth/{mount}/role/node/secret-id",
                      headers={"X-Vault-Token": "root", "X-Vault-Wrap-TTL": "5m"}, timeout=10)
    wrapping = r.json()["wrap_info"]["token"]
    wrapped = vault_manifest(outdir, bao.url, {
        "method": "approle", "mount": mount, "role_id_file": rid,
        "secret_id_file": str(credfile("wrapped", wrapping)), "secret_id_wrapped": True}, secrets)
    code, report, text = doctor(wrapped, tmp_path, cmdline="ignition.platform.id=metal")
    f = finding(report, "identity `vault`")
    assert f["status"] == "ok" and "is live" in f["detail"] and "not unwrapped" in f["detail"], f
    assert f"auth/{mount}/role/node/secret-id" in f["detail"], f
    assert finding(report, "secret `v`")["status"] == "skip"
    assert wrapping not in text
    r = bootsecrets(wrapped)
    assert r.code == 0, r
    assert (outdir / "v").read_bytes() == b"after-doctor"
    # Now spent: doctor says a run would fail on it.
    code, report, _ = doctor(wrapped, tmp_path, cmdline="ignition.platform.id=metal")
    f = finding(report, "identity `vault`")
    assert code == 1 and f["status"] == "fail" and "already used" in f["detail"], f

    secret_id = bao.api("POST", f"auth/{mount}/role/node/secret-id")["data"]["secret_id"]
    plain = vault_manifest(outdir, bao.url, {
        "method": "approle", "mount": mount, "role_id_file": rid,
        "secret_id_file": str(credfile("plain", secret_id))}, secrets)
    code, report, text = doctor(plain, tmp_path, cmdline="ignition.platform.id=metal")
    f = finding(report, "identity `vault`")
    assert f["status"] == "skip" and "secret_id_num_uses" in f["detail"], f
    assert "--use-secret-id" in f["hint"], f
    r = bootsecrets(plain)
    assert r.code == 0, "doctor spent the secret_id's only use"
    # Asked to, doctor logs in (and spends it).
    fresh = bao.api("POST", f"auth/{mount}/role/node/secret-id")["data"]["secret_id"]
    credfile("plain", fresh)
    m = tmp_path / "asked.toml"
    m.write_text(plain)
    r = subprocess.run(node_argv([str(BIN), "doctor", "--manifest", str(m), "--json",
                                  "--use-secret-id"]), capture_output=True, text=True, timeout=120)
    f = finding(json.loads(r.stdout), "identity `vault`")
    assert f["status"] == "ok" and "approle login" in f["detail"], f


def test_least_privilege_says_once_why_the_secrets_are_not_checked(moto, imds_factory, outdir,
                                                                    name, tmp_path):
    """The documented node policy (GetSecretValue only): doctor may not describe the secrets.
    The first says why, with the hint; the others point to it instead of repeating it."""
    sm = moto.client("secretsmanager")
    for s in ("a", "b", "c", "d"):
        sm.create_secret(Name=f"{name}/{s}", SecretString=CANARY)
    imds = imds_factory(role="node")
    code, report, _ = doctor(aws_manifest(outdir, imds, moto, [
        {"path": s, "ref": f"{name}/{s}"} for s in ("a", "b", "c", "d")]), tmp_path)
    assert code == 0, report
    warned = [c for c in report["checks"] if c["check"].startswith("secret ")
              and c["status"] == "warn"]
    assert len(warned) == 1 and warned[0]["check"] == "secret `a`", report
    assert "DescribeSecret" in warned[0]["detail"] and "a run does not need it" in warned[0]["hint"]
    for s in ("b", "c", "d"):
        f = finding(report, f"secret `{s}`")
        assert f["status"] == "skip" and \
            f["detail"] == "not checked, for the reason given for secret `a`", f


def test_off_any_cloud_doctor_says_so_not_another_cloud(moto, imds, outdir, name, tmp_path):
    vendor = pathlib.Path("/sys/class/dmi/id/sys_vendor")
    if vendor.exists() and vendor.read_text().strip() in ("Amazon EC2", "Microsoft Corporation",
                                                          "Google"):
        pytest.skip("this machine's DMI names a cloud: off a cloud cannot be shown here")
    _, report, _ = doctor(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}]),
                          tmp_path, cmdline="BOOT_IMAGE=/x root=/dev/vda")
    p = finding(report, "platform")
    assert p["status"] == "warn" and "this machine is on no cloud bootsecrets knows" in \
        p["detail"], p
    assert "backend `aws` uses the AWS instance identity" in p["detail"], p
    assert "another cloud" not in p["hint"] and "run doctor on a node of that cloud" in \
        p["hint"], p
