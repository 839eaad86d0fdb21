"""`bootsecrets check`: offline validation and the printed plan."""

from conftest import aws_manifest


class Unreachable:
    url = "http://127.0.0.1:9"  # discard port: nothing answers; check must not try


def test_check_prints_the_plan_and_uses_no_network(moto, imds, outdir, bootsecrets):
    """Both endpoints are live listeners that record contact: check must make none."""
    from support.proxy import LateProxy

    backend = LateProxy(moto.port, down_for=0).start()
    try:
        m = aws_manifest(outdir, imds, moto, [
            {"path": "kubelet/token", "ref": "prod/token", "mode": "0440", "group": "0"},
            {"path": "db", "ref": "prod/db", "json_key": "password", "version_stage": "AWSPREVIOUS"},
        ], settings='root_group = "0"').replace(moto.url, f"http://127.0.0.1:{backend.port}")
        r = bootsecrets(m, command="check")
    finally:
        backend.stop()
    assert r.code == 0, r
    assert imds.requests == [] and backend.first_contact is None, "check touched the network"
    assert f"output root  {outdir} (directory 0750" in r.stdout, r
    assert f"0440 root:0  {outdir}/kubelet/token  <- aws prod/token" in r.stdout, r
    assert '[version_stage AWSPREVIOUS] (json_key "password")' in r.stdout, r
    assert "is valid" in r.stdout
    assert not outdir.exists()


def test_check_reports_every_problem_with_exit_2(outdir, bootsecrets):
    m = aws_manifest(outdir, Unreachable, Unreachable, [
        {"path": "a", "ref": "x", "mode": "0644"},
        {"path": "b", "ref": "y", "owner": "no-such-user-here"},
        {"path": "b", "ref": "z"},
        {"path": "c", "ref": "", "encoding": "rot13"},
    ], settings="concurrency = 0")
    r = bootsecrets(m, command="check")
    assert r.code == 2, r
    for needle in ("0644", "no-such-user-here", "concurrency", "`ref` must name a secret", "rot13"):
        assert needle in r.stderr, (needle, r)


def test_unknown_keys_are_errors(outdir, bootsecrets):
    m = aws_manifest(outdir, Unreachable, Unreachable, [{"path": "a", "ref": "x", "jsonkey": "k"}])
    r = bootsecrets(m, command="check")
    assert r.code == 2, r
    assert "unknown field `jsonkey`" in r.stderr, r
    r = bootsecrets(m.replace('type = "aws"', 'type = "awss"'), command="check")
    assert r.code == 2 and "unknown variant `awss`" in r.stderr, r


def test_invalid_manifest_fails_run_with_exit_2(outdir, bootsecrets):
    r = bootsecrets("[settings\n", command="run")
    assert r.code == 2, r
    assert "not valid" in r.stderr
