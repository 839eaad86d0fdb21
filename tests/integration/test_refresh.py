"""Refresh: a second run after a rotation publishes the new set and runs the `on_change` commands
of the secrets that changed; an unchanged run and the first publication run nothing."""

import os

from conftest import aws_manifest, published, status


def test_on_change_runs_once_per_command_after_a_change_only(moto, imds, outdir, name,
                                                              bootsecrets, tmp_path):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString="a-v1")
    sm.create_secret(Name=f"{name}/b", SecretString="b-v1")
    sm.create_secret(Name=f"{name}/c", SecretString="c-v1")
    log = tmp_path / "actions.log"
    envdump = tmp_path / "env"
    record = ["/bin/sh", "-c", f'echo "$0 $1" >> {log}; env > {envdump}', "restart", "consumer"]
    m = aws_manifest(outdir, imds, moto, [
        {"path": "a", "ref": f"{name}/a", "on_change": record},
        {"path": "b", "ref": f"{name}/b", "on_change": record},
        {"path": "c", "ref": f"{name}/c", "on_change": ["/bin/sh", "-c", f"echo c >> {log}"]},
    ])
    r = bootsecrets(m)
    assert r.code == 0, r
    assert not log.exists(), "no command on the first publication (the boot run)"
    r = bootsecrets(m)
    assert r.code == 0 and "unchanged" in r.stderr, r
    assert not log.exists(), "no command when nothing changed"

    sm.put_secret_value(SecretId=f"{name}/a", SecretString="a-v2")
    sm.put_secret_value(SecretId=f"{name}/b", SecretString="b-v2")
    r = bootsecrets(m)
    assert r.code == 0, r
    assert log.read_text() == "restart consumer\n", "one run for the two secrets sharing it"
    assert published(outdir)["a"].read_text() == "a-v2"
    env = dict(line.split("=", 1) for line in envdump.read_text().splitlines() if "=" in line)
    assert set(env) - {"PWD", "SHLVL", "_"} == {"PATH"}, env
    assert "a-v2" not in envdump.read_text()
    st = status(outdir)
    assert st["run"]["actions"] == [{"command": " ".join(record), "result": "exit 0"}]
    assert sorted(st["run"]["changed"]) == ["a", "b"]


def test_a_failing_on_change_command_fails_the_run_but_keeps_the_new_set(
        moto, imds, outdir, name, bootsecrets):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString="v1")
    m = aws_manifest(outdir, imds, moto, [
        {"path": "a", "ref": f"{name}/a", "on_change": ["/bin/false"]}])
    assert bootsecrets(m).code == 0
    sm.put_secret_value(SecretId=f"{name}/a", SecretString="v2")
    r = bootsecrets(m)
    assert r.code == 1, r
    assert "published, but on_change command(s) failed: `/bin/false` (exit 1)" in r.stderr, r
    assert published(outdir)["a"].read_text() == "v2"
    st = status(outdir)
    assert st["run"]["exit_code"] == 1 and st["run"]["actions"][0]["result"] == "exit 1"
    assert [s["path"] for s in st["secrets"]] == ["a"]


def test_on_change_must_be_an_absolute_command(moto, imds, outdir, name, bootsecrets):
    r = bootsecrets(aws_manifest(outdir, imds, moto, [
        {"path": "a", "ref": f"{name}/a", "on_change": ["systemctl", "restart", "x"]}]),
        command="check")
    assert r.code == 2 and "must be an absolute path" in r.stderr, r
    assert not os.path.exists(outdir)


def test_a_failed_on_change_command_stays_pending_until_it_succeeds(moto, imds, outdir, name,
                                                                    bootsecrets, tmp_path):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString="v1")
    flag, log = tmp_path / "consumer-ready", tmp_path / "ran"
    script = tmp_path / "reload-consumer"
    script.write_text(f"#!/bin/sh\n[ -e {flag} ] || exit 3\necho ran >> {log}\n")
    script.chmod(0o755)
    m = aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a",
                                           "on_change": [str(script)]}])
    assert bootsecrets(m).code == 0
    sm.put_secret_value(SecretId=f"{name}/a", SecretString="v2")
    r = bootsecrets(m)
    assert r.code == 1 and "(exit 3)" in r.stderr, r
    assert status(outdir)["run"]["pending_actions"] == [[str(script)]]
    # Nothing changes any more, but the consumer still has to learn about v2: the next run owes
    # the command and runs it.
    flag.touch()
    r = bootsecrets(m)
    assert r.code == 0 and "unchanged" in r.stderr, r
    assert log.read_text() == "ran\n"
    assert status(outdir)["run"]["pending_actions"] == []
    r = bootsecrets(m)
    assert r.code == 0 and log.read_text() == "ran\n", "paid once, not again"


def test_an_on_change_program_others_could_change_is_refused(moto, imds, outdir, name,
                                                             bootsecrets, tmp_path):
    script = tmp_path / "reload"
    script.write_text("#!/bin/sh\ntrue\n")
    script.chmod(0o757)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [
        {"path": "a", "ref": f"{name}/a", "on_change": [str(script)]}]), command="check")
    # A boot never runs it: `check` warns (a refresh refuses it when it is about to run).
    assert r.code == 0 and "warning: secret `a`: on_change command" in r.stdout \
        and "writable by group or others" in r.stdout, r
    script.chmod(0o644)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [
        {"path": "a", "ref": f"{name}/a", "on_change": [str(script)]}]), command="check")
    assert r.code == 0 and "is not executable" in r.stdout, r


def test_the_boot_gate_hands_owed_commands_to_the_refresh_unit(moto, imds, outdir, name,
                                                                bootsecrets, tmp_path):
    """A `systemctl restart bootsecrets.service` on a running node changes a secret: the gate
    (ExecStart=/opt/bin/bootsecrets with the unit's BOOTSECRETS_ON_CHANGE=defer) must not run an
    on_change that may restart a consumer ordered after it (that would wait on the gate's own
    start job). It records the command as owed and starts the refresh unit without waiting."""
    import subprocess

    from conftest import BIN, node_argv
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString="one")
    marker = tmp_path / "reloaded"
    script = tmp_path / "reload"
    script.write_text(f"#!/bin/sh\necho ran >> {marker}\n")
    script.chmod(0o755)
    calls = tmp_path / "systemctl.calls"
    fake = tmp_path / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    m = aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a",
                                           "on_change": [str(script)]}])
    assert bootsecrets(m).code == 0
    sm.put_secret_value(SecretId=f"{name}/a", SecretString="two")
    mpath = tmp_path / "manifest.toml"  # the fixture's own: the root belongs to it
    gate = subprocess.run(
        node_argv([str(BIN), "--manifest", str(mpath)], binds=[(fake, "/usr/bin/systemctl")]),
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "BOOTSECRETS_ON_CHANGE": "defer"})
    assert gate.returncode == 0, gate.stderr
    assert (outdir / "a").read_bytes() == b"two"
    assert not marker.exists(), "the gate ran an on_change command itself"
    assert calls.read_text() == "start --no-block bootsecrets-refresh.service\n"
    assert "handed to bootsecrets-refresh.service" in gate.stderr, gate.stderr
    assert status(outdir)["run"]["pending_actions"] == [[str(script)]]

    # No refresh unit to start (systemctl fails): still owed, and said so.
    fake.write_text("#!/bin/sh\nexit 5\n")
    sm.put_secret_value(SecretId=f"{name}/a", SecretString="three")
    r = bootsecrets(m, env={"BOOTSECRETS_ON_CHANGE": "defer"},
                    binds=[(fake, "/usr/bin/systemctl")])
    assert r.code == 0 and not marker.exists(), r
    assert "could not be started" in r.stderr and "stay owed" in r.stderr, r
    assert status(outdir)["run"]["pending_actions"] == [[str(script)]]

    # The refresh runs what the gate owed.
    r = bootsecrets(m)
    assert r.code == 0, r
    assert marker.read_text() == "ran\n"
    assert status(outdir)["run"]["pending_actions"] == []
