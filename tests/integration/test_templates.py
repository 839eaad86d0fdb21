"""Files assembled from secrets (`[[template]]`), through the binary as the unit runs it: a
kubeadm JoinConfiguration and a bootstrap kubeconfig from AWS Secrets Manager (moto), read back
by a YAML parser and by `kubectl config view`; an environment file and a registry config.json
from Vault KV v2 (OpenBao), read back by a shell and a JSON parser, every key from one version;
and what `check` and a run refuse."""

import base64
import json
import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import aws_manifest, published, status, vault_manifest

CA_PEM = ("-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUZ3Rlc3Q=\n"
          "-----END CERTIFICATE-----\n")
TOKEN = "abcdef.0123456789abcdef"
HASH = "sha256:" + "9" * 64

JOIN = '''
[[template]]
path = "kubeadm/join.yaml"
format = "yaml"
unless_exists = "{joined}"
text = \'\'\'
apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: {{{{ secret "kubeadm/join.json" key "endpoint" }}}}
    token: {{{{ secret "kubeadm/join.json" key "token" }}}}
    caCertHashes:
      - {{{{ secret "kubeadm/join.json" key "ca_cert_hash" }}}}
nodeRegistration:
  name: {{{{ node "hostname" }}}}
\'\'\'

[[template]]
path = "kubelet/bootstrap-kubeconfig"
format = "yaml"
mode = "0440"
group = "0"
unless_exists = "{joined}"
text = \'\'\'
apiVersion: v1
kind: Config
clusters:
- name: default
  cluster:
    server: "https://{{{{ secret "kubeadm/join.json" key "endpoint" }}}}"
    certificate-authority-data: {{{{ secret "kubernetes/ca.crt" | base64 }}}}
users:
- name: kubelet-bootstrap
  user:
    token: {{{{ secret "kubeadm/join.json" key "token" }}}}
contexts:
- name: bootstrap
  context:
    cluster: default
    user: kubelet-bootstrap
current-context: bootstrap
\'\'\'
'''


def aws_join(moto, imds, outdir, name, joined, settings=""):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/join", SecretString=json.dumps(
        {"token": TOKEN, "ca_cert_hash": HASH, "endpoint": "10.0.0.10:6443"}))
    sm.create_secret(Name=f"{name}/ca", SecretString=CA_PEM)
    m = aws_manifest(outdir, imds, moto, [
        {"path": "kubeadm/join.json", "ref": f"{name}/join", "unless_exists": str(joined)},
        {"path": "kubernetes/ca.crt", "ref": f"{name}/ca"},
    ], settings=settings)
    return m + JOIN.format(joined=joined)


def test_a_kubeadm_join_and_a_bootstrap_kubeconfig_from_aws(
        moto, imds, outdir, name, bootsecrets, binary, tmp_path):
    joined = tmp_path / "kubelet.conf"
    m = aws_join(moto, imds, outdir, name, joined, settings='root_group = "0"')
    r = bootsecrets(m, binary=binary)
    assert r.code == 0, r
    files = published(outdir)
    join = yaml.safe_load(files["kubeadm/join.yaml"].read_text())
    assert join["kind"] == "JoinConfiguration"
    bt = join["discovery"]["bootstrapToken"]
    assert bt == {"apiServerEndpoint": "10.0.0.10:6443", "token": TOKEN,
                  "caCertHashes": [HASH]}, bt
    assert join["nodeRegistration"]["name"] == Path("/proc/sys/kernel/hostname").read_text().strip()
    # kubectl reads the kubeconfig as kubelet's client library would.
    kc = files["kubelet/bootstrap-kubeconfig"]
    view = subprocess.run(["kubectl", "config", "view", "--raw", "-o", "json", "--kubeconfig",
                           str(kc)], capture_output=True, text=True, check=True)
    cfg = json.loads(view.stdout)
    cluster = cfg["clusters"][0]["cluster"]
    assert cluster["server"] == "https://10.0.0.10:6443", cluster
    assert base64.b64decode(cluster["certificate-authority-data"]).decode() == CA_PEM
    assert cfg["users"][0]["user"]["token"] == TOKEN
    # Modes and owners before the first byte, as for any secret.
    for rel, mode in [("kubeadm/join.yaml", 0o400), ("kubelet/bootstrap-kubeconfig", 0o440)]:
        st = os.stat(files[rel])
        assert stat.S_IMODE(st.st_mode) == mode and st.st_uid == 0 and st.st_gid == 0, (rel, st)
    # The log names the templates and their secrets, never a value.
    assert "wrote kubeadm/join.yaml (0400 root:root" in r.stderr, r.stderr
    assert "from the yaml template of `kubeadm/join.json`" in r.stderr, r.stderr
    assert TOKEN not in r.output and "0123456789abcdef" not in r.output
    entries = {e["path"]: e for e in status(outdir)["secrets"]}
    t = entries["kubelet/bootstrap-kubeconfig"]
    assert t["backend_type"] == "template" and t["backend"] == "aws", t
    assert t["ref"] == "yaml template of `kubeadm/join.json`, `kubernetes/ca.crt`", t
    assert "`kubeadm/join.json` " in t["version"], t

    # Joined: the join file and the bootstrap kubeconfig are skipped, and removed from the set.
    joined.write_text("")
    r = bootsecrets(m, binary=binary)
    assert r.code == 0, r
    assert set(published(outdir)) == {"kubernetes/ca.crt"}, published(outdir)
    assert "skipped template kubeadm/join.yaml" in r.stderr, r.stderr
    st = status(outdir)
    assert {s["path"] for s in st["run"]["skipped"]} == {
        "kubeadm/join.json", "kubeadm/join.yaml", "kubelet/bootstrap-kubeconfig"}, st["run"]


def test_an_env_file_and_a_registry_config_from_one_vault_version(
        bao, outdir, credfile, bootsecrets, binary):
    mount = f"kv-{uuid.uuid4().hex[:8]}"
    bao.enable_kv(mount, 2)
    tricky = 'p"a\\s$HOME`id` x'
    bao.put(mount, "app", {"user": "robot", "password": tricky})
    bao.put(mount, "app", {"user": "robot", "password": tricky + "2"})  # version 2
    bao.read_policy(mount, f"{mount}/data/app")
    tok = bao.token([mount])
    auth = {"method": "token", "token_file": str(credfile("t", tok))}
    m = vault_manifest(outdir, bao.url, auth, [
        {"path": "app.json", "ref": "app", "mount": mount, "kv_version": 2}])
    m += '''
[[template]]
path = "app.env"
format = "env"
text = \'\'\'
APP_USER={{ secret "app.json" key "user" }}
APP_PASSWORD={{ secret "app.json" key "password" }}
APP_URL="https://{{ secret "app.json" key "user" }}@registry.example"
\'\'\'

[[template]]
path = "registry/config.json"
format = "json"
text = \'\'\'
{"auths": {"registry.example": {"username": {{ secret "app.json" key "user" }},
  "password": "{{ secret "app.json" key "password" }}"}}}
\'\'\'
'''
    r = bootsecrets(m, binary=binary)
    assert r.code == 0, r
    files = published(outdir)
    sh = subprocess.run(["sh", "-c", '. "$1"; printf "%s\\n%s\\n%s" "$APP_USER" "$APP_PASSWORD" '
                         '"$APP_URL"', "sh", str(files["app.env"])],
                        capture_output=True, text=True, check=True)
    assert sh.stdout.split("\n") == ["robot", tricky + "2", "https://robot@registry.example"]
    cfg = json.loads(files["registry/config.json"].read_text())
    assert cfg["auths"]["registry.example"] == {"username": "robot", "password": tricky + "2"}
    entries = {e["path"]: e for e in status(outdir)["secrets"]}
    assert entries["app.env"]["version"] == "`app.json` 2", entries["app.env"]
    assert tricky not in r.output

    # A refresh with nothing changed leaves the templates unchanged; a new version rewrites them.
    r = bootsecrets(m, binary=binary)
    assert r.code == 0 and "unchanged app.env" in r.stderr, r.stderr
    bao.put(mount, "app", {"user": "robot", "password": "third"})
    r = bootsecrets(m, binary=binary)
    assert r.code == 0 and "wrote app.env" in r.stderr, r.stderr
    assert json.loads(published(outdir)["registry/config.json"].read_text())[
        "auths"]["registry.example"]["password"] == "third"
    assert status(outdir)["run"]["changed"] == ["app.json", "app.env", "registry/config.json"]


def test_check_refuses_what_a_run_could_not_render(moto, imds, outdir, name, bootsecrets,
                                                   tmp_path):
    base = aws_manifest(outdir, imds, moto, [
        {"path": "a.json", "ref": f"{name}/a"},
        {"path": "opt", "ref": f"{name}/o", "optional": True},
    ])
    for text, want in [
        ('{{ secret "nope" }}', "uses secret `nope`, which no [[secret]] writes"),
        ('{{ secret "opt" }}', "uses secret `opt`, which is optional"),
        ("a: '{{ secret \"a.json\" }}'", "inside single quotes"),
        ('{{ secret "a.json" | gzip }}', "only `| base64`"),
        ('x: {{ secret "a.json"', "line 1: `{{` is not closed"),
    ]:
        m = base + f'\n[[template]]\npath = "t"\nformat = "yaml"\ntext = \'\'\'{text}\'\'\'\n'
        r = bootsecrets(m, command="check")
        assert r.code == 2 and want in r.stderr and "template #1 (path `t`)" in r.stderr, \
            (text, r.stderr)
    m = base + '\n[[template]]\npath = "a.json"\nformat = "yaml"\ntext = "x"\n'
    r = bootsecrets(m, command="check")
    assert r.code == 2 and "writes the same output as secret #1" in r.stderr, r.stderr
    m = base + '\n[[template]]\npath = "a.json/x"\nformat = "toml"\ntext = "x"\n'
    r = bootsecrets(m, command="check")
    assert r.code == 2, r
    assert 'format `toml` is not one of "yaml", "json", "env", "verbatim"' in r.stderr, r.stderr
    m = base + '\n[[template]]\npath = "a.json/x"\nformat = "yaml"\ntext = "x"\n'
    r = bootsecrets(m, command="check")
    assert r.code == 2, r
    assert "output `a.json` is a file, but output `a.json/x` needs it to be a directory" in \
        r.stderr, r.stderr
    # The plan names each template, its format and its secrets.
    m = base + '\n[[template]]\npath = "t.env"\nformat = "env"\ntext = \'X={{ secret "a.json" }}\'\n'
    r = bootsecrets(m, "--offline", command="check")
    assert r.code == 0, r
    assert f"0400 root:root  {outdir}/t.env  <- env template of `a.json`" in r.stdout, r.stdout


def test_a_missing_key_fails_the_run_naming_the_keys_and_an_optional_template_is_a_warning(
        moto, imds, outdir, name, bootsecrets):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString=json.dumps({"user": "u", "pass": "hunter2"}))
    base = aws_manifest(outdir, imds, moto, [{"path": "a.json", "ref": f"{name}/a"}])
    req = base + '\n[[template]]\npath = "t"\nformat = "json"\ntext = \'{{ secret "a.json" key "password" }}\'\n'
    r = bootsecrets(req)
    assert r.code == 1, r
    assert ("template `t`: secret `a.json` key `password`: its JSON object has no key "
            "`password` (keys present: `pass`, `user`)") in r.stderr, r.stderr
    assert "could not write template(s) `t`; nothing was published" in r.stderr, r.stderr
    assert "hunter2" not in r.output
    assert published(outdir) == {}
    assert status(outdir)["run"]["failures"][0]["secrets"] == ["t"]

    opt = req.replace('path = "t"\n', 'path = "t"\noptional = true\n')
    r = bootsecrets(opt)
    assert r.code == 0, r
    assert "optional template `t`: secret `a.json` key `password`" in r.stderr, r.stderr
    assert set(published(outdir)) == {"a.json"}
    f = status(outdir)["run"]["failures"]
    assert f and f[0]["optional"] is True and f[0]["secrets"] == ["t"], f


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_a_value_that_is_not_text_needs_base64(moto, imds, outdir, name, bootsecrets, fmt):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/bin", SecretBinary=b"\xff\x00\xfe")
    base = aws_manifest(outdir, imds, moto, [{"path": "k.der", "ref": f"{name}/bin"}])
    t = f'\n[[template]]\npath = "t"\nformat = "{fmt}"\ntext = \'k: {{{{ secret "k.der" }}}}\'\n'
    r = bootsecrets(base + t)
    assert r.code == 1 and "not UTF-8" in r.stderr and "add `| base64`" in r.stderr, r.stderr
    r = bootsecrets(base + t.replace('"k.der" }}', '"k.der" | base64 }}'))
    assert r.code == 0, r
    assert published(outdir)["t"].read_text() == 'k: "/wD+"'
