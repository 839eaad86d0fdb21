"""Only what this run needs is checked as this run: a backend that serves only skipped or
optional secrets, or an on_change program that only a refresh runs, never fails a boot. The case
that matters most: a joined node whose first-boot-only credential (a wrapped SecretID for the
kubelet bootstrap token, deleted after use) is gone, rebooted for an OS update."""

from conftest import aws_manifest, status

# Nothing listens there: a run that contacted this Vault would fail.
NO_VAULT = "http://127.0.0.1:9"


def two_backends(outdir, imds, moto, name, vault_auth: str, vault_secret: dict, settings=""):
    m = aws_manifest(outdir, imds, moto, [{"path": "ca.crt", "ref": f"{name}/ca", "backend": "aws"}],
                     settings=settings)
    m += f'''
[backend.bootstrap]
type = "vault"
address = "{NO_VAULT}"

[backend.bootstrap.auth]
{vault_auth}

[[secret]]
backend = "bootstrap"
''' + "".join(f"{k} = {v!r}\n".replace("'", '"') if isinstance(v, str) else f"{k} = {str(v).lower()}\n"
              for k, v in vault_secret.items())
    return m


def test_a_joined_node_reboots_without_its_spent_first_boot_credential(
        moto, imds, outdir, name, tmp_path, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/ca", SecretString="ca-pem")
    kubeconfig = tmp_path / "kubelet.conf"
    kubeconfig.write_text("joined")
    gone = tmp_path / "wrapped-secret-id"  # deleted after the first boot: absent
    m = two_backends(outdir, imds, moto, name,
                     f'method = "approle"\nrole_id_file = "{tmp_path}/role-id"\n'
                     f'secret_id_file = "{gone}"\nsecret_id_wrapped = true',
                     {"path": "bootstrap-token", "ref": "secret/bootstrap", "field": "token",
                      "unless_exists": str(kubeconfig)})
    r = bootsecrets(m, command="check")
    assert r.code == 0, r
    assert "not needed now" in r.output and str(gone) in r.output, r
    r = bootsecrets(m)
    assert r.code == 0, r
    assert (outdir / "ca.crt").read_bytes() == b"ca-pem"
    assert not (outdir / "bootstrap-token").exists()
    assert "127.0.0.1:9" not in r.stderr, "the skipped secret's backend was contacted"
    st = status(outdir)
    assert [s["path"] for s in st["run"]["skipped"]] == ["bootstrap-token"]
    assert st["run"]["failures"] == []

    # The first boot, before the join: the same missing file fails the run (exit 1, a permanent
    # failure of the backend), naming the file, and `check` says a run would fail.
    kubeconfig.unlink()
    r = bootsecrets(m, command="check")
    assert r.code == 2 and "a run on this node would fail" in r.stderr, r
    assert str(gone) in r.stderr and "bootstrap-token" in r.stderr, r
    r = bootsecrets(m)
    assert r.code == 1, r
    assert str(gone) in r.stderr and "backend `bootstrap`" in r.stderr, r
    assert (outdir / "ca.crt").read_bytes() == b"ca-pem", "a failed run keeps the published set"


def test_an_optional_secrets_missing_credential_is_that_secrets_failure(
        moto, imds, outdir, name, tmp_path, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/ca", SecretString="ca-pem")
    token = tmp_path / "absent-token"
    m = two_backends(outdir, imds, moto, name, f'method = "token"\ntoken_file = "{token}"',
                     {"path": "extra", "ref": "secret/extra", "optional": True})
    r = bootsecrets(m, command="check")
    assert r.code == 0 and "only optional secret(s) `extra`" in r.output, r
    r = bootsecrets(m)
    assert r.code == 0, r
    assert (outdir / "ca.crt").read_bytes() == b"ca-pem"
    assert not (outdir / "extra").exists()
    assert "optional secret(s) `extra` not fetched" in r.stderr and str(token) in r.stderr, r
    [f] = status(outdir)["run"]["failures"]
    assert f["optional"] and f["secrets"] == ["extra"] and str(token) in f["error"], f


def test_an_on_change_program_is_checked_when_it_is_about_to_run(
        moto, imds, outdir, name, bootsecrets):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString="one")
    m = aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a",
                                           "on_change": ["/usr/bin/no-such-reload-program"]}])
    r = bootsecrets(m, command="check")
    assert r.code == 0, r
    assert "warning: secret `a`" in r.output and "/usr/bin/no-such-reload-program" in r.output, r
    # A boot runs no on_change command: the missing program cannot fail it.
    r = bootsecrets(m)
    assert r.code == 0, r
    assert (outdir / "a").read_bytes() == b"one"
    # A refresh that changes the secret owes the command: refused now, and still owed.
    sm.put_secret_value(SecretId=f"{name}/a", SecretString="two")
    r = bootsecrets(m)
    assert r.code == 1 and "no-such-reload-program" in r.stderr, r
    assert (outdir / "a").read_bytes() == b"two"
    assert status(outdir)["run"]["pending_actions"] == [["/usr/bin/no-such-reload-program"]]
