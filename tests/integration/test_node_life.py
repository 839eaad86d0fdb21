"""Secrets that know the node's life (`unless_exists`, `optional`), and failures reported in full:
a failed run names every failing secret with its cause, and publishes nothing."""

from conftest import aws_manifest, published, status
from support.faults import aws_error


def seed(moto, name, **values):
    sm = moto.client("secretsmanager")
    for k, v in values.items():
        sm.create_secret(Name=f"{name}/{k}", SecretString=v)
    return sm


def test_a_secret_is_skipped_once_its_path_exists(moto, imds, outdir, name, bootsecrets, tmp_path):
    """The kubelet bootstrap token: fetched while the node has no kubeconfig, skipped after it
    joined, even once the token is gone from the backend."""
    sm = seed(moto, name, token="bootstrap-1", ca="ca-1")
    kubeconfig = tmp_path / "var-lib-kubelet" / "kubeconfig"
    m = aws_manifest(outdir, imds, moto, [
        {"path": "kubelet/bootstrap-token", "ref": f"{name}/token",
         "unless_exists": str(kubeconfig)},
        {"path": "kubelet/ca.crt", "ref": f"{name}/ca"},
    ])
    r = bootsecrets(m)
    assert r.code == 0, r
    assert set(published(outdir)) == {"kubelet/bootstrap-token", "kubelet/ca.crt"}
    assert status(outdir)["run"]["skipped"] == []

    kubeconfig.parent.mkdir()
    kubeconfig.write_text("joined")
    sm.delete_secret(SecretId=f"{name}/token", ForceDeleteWithoutRecovery=True)
    r = bootsecrets(m)
    assert r.code == 0, r
    assert f"skipped kubelet/bootstrap-token: {kubeconfig} exists (unless_exists)" in r.stderr, r
    assert "removed kubelet/bootstrap-token" in r.stderr, r
    assert set(published(outdir)) == {"kubelet/ca.crt"}, "a skipped secret is not published"
    st = status(outdir)
    assert st["run"]["skipped"] == [{"path": "kubelet/bootstrap-token",
                                     "unless_exists": str(kubeconfig)}]
    assert [s["path"] for s in st["secrets"]] == ["kubelet/ca.crt"]


def test_a_skipped_secret_needs_no_backend(moto, imds, outdir, name, bootsecrets, tmp_path):
    """Its backend is not even contacted: a backend only skipped secrets use may be down."""
    seed(moto, name, ca="ca-1")
    flag = tmp_path / "joined"
    flag.write_text("")
    m = aws_manifest(outdir, imds, moto, [
        {"path": "ca", "ref": f"{name}/ca", "backend": "aws"},
        {"path": "token", "ref": "t", "backend": "down", "unless_exists": str(flag)},
    ]) + '\n[backend.down]\ntype = "aws"\nregion = "us-east-1"\nendpoint = "http://127.0.0.1:9"\n' \
        'imds_endpoint = "http://127.0.0.1:9"\n'
    r = bootsecrets(m)
    assert r.code == 0, r
    assert set(published(outdir)) == {"ca"}


def test_without_its_path_a_conditional_secret_fails_closed(moto, imds, outdir, name, bootsecrets,
                                                            tmp_path):
    seed(moto, name, ca="ca-1")
    m = aws_manifest(outdir, imds, moto, [
        {"path": "kubelet/bootstrap-token", "ref": f"{name}/token",
         "unless_exists": str(tmp_path / "no-kubeconfig")},
        {"path": "kubelet/ca.crt", "ref": f"{name}/ca"},
    ])
    r = bootsecrets(m)
    assert r.code == 1, r
    assert "secret `kubelet/bootstrap-token`" in r.stderr and "not found" in r.stderr, r
    assert published(outdir) == {}


def test_an_optional_secret_that_fails_is_a_warning(moto, imds, outdir, name, bootsecrets):
    seed(moto, name, a="a-1")
    m = aws_manifest(outdir, imds, moto, [
        {"path": "a", "ref": f"{name}/a"},
        {"path": "extra", "ref": f"{name}/missing", "optional": True},
    ])
    r = bootsecrets(m)
    assert r.code == 0, r
    assert "warning: optional secret(s) `extra` not published: secret `extra`" in r.stderr, r
    assert "not found" in r.stderr, r
    assert {p: f.read_text() for p, f in published(outdir).items()} == {"a": "a-1"}
    st = status(outdir)
    assert st["run"]["outcome"] == "published" and st["run"]["exit_code"] == 0
    [f] = st["run"]["failures"]
    assert f["secrets"] == ["extra"] and f["optional"] is True and f["class"] == "permanent", f
    assert "not found" in f["error"]


def test_every_failing_secret_is_reported_and_nothing_is_published(moto, imds, outdir, name,
                                                                    bootsecrets):
    sm = seed(moto, name, a="a-1", b="b-1", c="c-1")
    m = aws_manifest(outdir, imds, moto, [
        {"path": "a", "ref": f"{name}/a"}, {"path": "b", "ref": f"{name}/b"},
        {"path": "c", "ref": f"{name}/c"}, {"path": "d", "ref": f"{name}/d", "optional": True},
    ])
    assert bootsecrets(m).code == 0  # d is optional and missing: a warning
    before = {p: f.read_text() for p, f in published(outdir).items()}
    assert before == {"a": "a-1", "b": "b-1", "c": "c-1"}
    sm.delete_secret(SecretId=f"{name}/a", ForceDeleteWithoutRecovery=True)
    sm.put_secret_value(SecretId=f"{name}/b", SecretString="b-2")
    sm.delete_secret(SecretId=f"{name}/c", ForceDeleteWithoutRecovery=True)
    r = bootsecrets(m)
    assert r.code == 1, r
    assert "2 of 4 secrets could not be fetched; nothing was published:" in r.stderr, r
    for path in ("a", "c"):
        assert f"  - secret `{path}` (backend `aws`" in r.stderr, (path, r)
    assert r.stderr.count("not found") >= 3, r  # a, c, and the optional d's warning
    assert {p: f.read_text() for p, f in published(outdir).items()} == before, \
        "b's new value must not be published when a and c failed"
    st = status(outdir)
    assert st["run"]["outcome"] == "failed"
    assert [(f["secrets"], f["optional"]) for f in st["run"]["failures"]] == [
        (["a"], False), (["c"], False), (["d"], True)]


def test_the_exit_code_is_the_most_severe_class(moto, imds_factory, fault_proxy, outdir, name,
                                                bootsecrets):
    """A permanent failure (exit 1) outweighs a deadline (exit 3); deadlines alone give 3."""
    seed(moto, name, a="a-1")
    imds = imds_factory()
    proxy = fault_proxy(moto.url)
    proxy.inject(aws_error(503, "ServiceUnavailable", "down for maintenance"), times=None)
    mixed = aws_manifest(outdir, imds, moto, [
        {"path": "a", "ref": f"{name}/a", "backend": "late"},
        {"path": "b", "ref": f"{name}/missing", "backend": "aws"},
    ], settings="deadline_seconds = 4") + late_backend(proxy, imds)
    r = bootsecrets(mixed)
    assert r.code == 1, r
    assert "2 of 2 secrets could not be fetched" in r.stderr, r
    assert "deadline of 4s exceeded" in r.stderr and "not found" in r.stderr, r
    only_late = aws_manifest(outdir, imds, moto, [
        {"path": "a", "ref": f"{name}/a", "backend": "late"},
    ], settings="deadline_seconds = 3") + late_backend(proxy, imds)
    r = bootsecrets(only_late.replace('[backend.aws]\ntype = "aws"', '[backend.unused]\ntype = "aws"'))
    assert r.code == 3, r


def late_backend(proxy, imds):
    return f'''
[backend.late]
type = "aws"
region = "us-east-1"
endpoint = "{proxy.url}"
imds_endpoint = "{imds.url}"
'''
