"""examples/: each complete and checked. Terraform (AWS): the HCL parsed, the least-privilege
policy, IMDSv2 with hop limit 1, the Butane it renders up to date, compiled and validated."""

import os
import subprocess
from pathlib import Path

import hcl2
import pytest

from conftest import BIN, ROOT

TF = ROOT / "examples" / "terraform" / "aws"
ZEROS = "0" * 128
BUTANE = Path(os.environ.get("BUTANE", ROOT.parent / "shared" / "tools" / "butane"))


def plain(v):
    """python-hcl2 keeps string quotes and wraps blocks in lists: unwrap both."""
    if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {plain(k): plain(x) for k, x in v.items() if k != "__is_block__"}
    return v


def blocks(doc, kind, type_):
    out = {}
    for entry in doc.get(kind, []):
        for t, named in plain(entry).items():
            if t == type_:
                out.update(named)
    return out


@pytest.fixture(scope="module")
def tf():
    doc = {}
    for f in sorted(TF.glob("*.tf")):
        for k, v in hcl2.load(f.open()).items():
            if isinstance(v, list):
                doc.setdefault(k, []).extend(v)
    return doc


def test_terraform_requires_imdsv2_with_hop_limit_1(tf):
    [lt] = blocks(tf, "resource", "aws_launch_template").values()
    [meta] = lt["metadata_options"]
    assert meta == {"http_endpoint": "enabled", "http_tokens": "required",
                    "http_put_response_hop_limit": 1}, meta
    assert lt["user_data"] == "${base64encode(data.ct_config.worker.rendered)}"
    assert lt["iam_instance_profile"][0]["name"] == "${aws_iam_instance_profile.worker.name}"


def test_terraform_grants_only_what_a_run_needs(tf):
    doc = blocks(tf, "data", "aws_iam_policy_document")["worker_secrets"]
    actions = [a for s in doc["statement"] for a in s["actions"]]
    dynamic = doc["dynamic"][0]["statement"]["content"][0]
    assert actions == ["secretsmanager:GetSecretValue", "s3:GetObject"], actions
    assert dynamic["actions"] == ["kms:Decrypt"]
    assert dynamic["condition"][0]["variable"] == "kms:ViaService"
    assert not any("*" in a for a in actions + dynamic["actions"]), "no wildcard action"
    assert doc["statement"][0]["resources"] == "${var.secret_arns}"


def test_terraform_merges_the_bootsecrets_snippet_and_rolls_out_changes(tf):
    ct = blocks(tf, "data", "ct_config")["worker"]
    assert ct["strict"] is True
    assert ct["content"] == '${file("${path.module}/worker.bu")}'
    assert ct["snippets"] == ['${file("${path.module}/bootsecrets.bu")}']
    for f in ("worker.bu", "bootsecrets.bu", "manifest.toml"):
        assert (TF / f).is_file(), f
    [asg] = blocks(tf, "resource", "aws_autoscaling_group").values()
    assert asg["instance_refresh"][0]["strategy"] == "Rolling"
    assert asg["launch_template"][0]["version"] == "${aws_launch_template.worker.latest_version}"


def render_snippet():
    r = subprocess.run([str(BIN), "render", "butane", "--variant", "flatcar", "--manifest",
                        str(TF / "manifest.toml"), "--refresh", "--binary-url",
                        "s3://example-artifacts/bootsecrets/0.1.0/bootsecrets",
                        "--binary-sha512", ZEROS], capture_output=True, text=True)
    assert r.returncode == 0, r
    return r.stdout


def test_the_committed_snippet_is_what_render_prints():
    """examples/terraform/aws/bootsecrets.bu is generated: BOOTSECRETS_UPDATE_SNIPPETS=1 rewrites
    it (with the command in main.tf's header)."""
    text = render_snippet()
    if os.environ.get("BOOTSECRETS_UPDATE_SNIPPETS"):
        (TF / "bootsecrets.bu").write_text(text)
    assert (TF / "bootsecrets.bu").read_text() == text, "stale: render it again"


def test_the_manifest_passes_check_offline():
    r = subprocess.run([str(BIN), "check", "--offline", "--manifest", str(TF / "manifest.toml")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "skipped when /var/lib/kubelet/kubeconfig exists" in r.stdout, r


@pytest.mark.parametrize("bu", ["worker.bu", "bootsecrets.bu"])
def test_the_butane_compiles_and_validates(tmp_path, bu):
    if not (BUTANE.is_file() and os.access(BUTANE, os.X_OK)):
        pytest.skip(f"butane not found at {BUTANE} (set BUTANE): the real Butane compile was NOT checked")
    r = subprocess.run([str(BUTANE), "--strict", "--files-dir", str(TF), str(TF / bu)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "c.ign"
    out.write_text(r.stdout)
    v = subprocess.run(["ignition-validate", str(out)], capture_output=True, text=True)
    assert v.returncode == 0 and not v.stdout.strip() and not v.stderr.strip(), v
    if bu == "worker.bu":
        assert "--bootstrap-kubeconfig=/run/bootsecrets/kubelet/bootstrap-kubeconfig" in r.stdout
    else:
        assert "RequiredBy=kubelet.service" in r.stdout


# -- Cluster API on AWS, and the Container Linux Config it carries

CAPI = ROOT / "examples" / "cluster-api" / "aws"


def render_clc(manifest, *extra):
    r = subprocess.run([str(BIN), "render", "clc", "--variant", "flatcar", "--manifest", str(manifest),
                        "--binary-url", "s3://example-artifacts/bootsecrets/0.1.0/bootsecrets",
                        "--binary-sha512", ZEROS, *extra], capture_output=True, text=True)
    assert r.returncode == 0, r
    return r.stdout


@pytest.fixture(scope="module")
def capi_docs():
    import yaml
    return {d["kind"]: d for d in yaml.safe_load_all((CAPI / "workers.yaml").read_text())}


def test_the_cluster_api_objects_use_only_fields_their_types_declare(capi_docs):
    from support.schemas import CAPI as SCHEMA, unknown_fields
    assert set(capi_docs) == {"AWSMachineTemplate", "KubeadmConfigTemplate", "MachineDeployment"}
    for kind, doc in capi_docs.items():
        assert unknown_fields(doc, kind, SCHEMA) == [], kind


def test_the_cluster_api_objects_fit_together(capi_docs):
    mt = capi_docs["AWSMachineTemplate"]["spec"]["template"]["spec"]
    assert mt["instanceMetadataOptions"] == {"httpEndpoint": "enabled", "httpTokens": "required",
                                             "httpPutResponseHopLimit": 1}
    assert mt["ignition"]["version"] == "2.3", "CAPI compiles the CLC to Ignition 2.3"
    kct = capi_docs["KubeadmConfigTemplate"]["spec"]["template"]["spec"]
    assert kct["format"] == "ignition"
    assert kct["ignition"]["containerLinuxConfig"]["strict"] is True
    md = capi_docs["MachineDeployment"]["spec"]["template"]["spec"]
    assert md["bootstrap"]["configRef"] == {"apiGroup": "bootstrap.cluster.x-k8s.io",
                                            "kind": "KubeadmConfigTemplate",
                                            "name": capi_docs["KubeadmConfigTemplate"]["metadata"]["name"]}
    assert md["infrastructureRef"]["name"] == capi_docs["AWSMachineTemplate"]["metadata"]["name"]


def test_the_embedded_clc_is_what_render_prints(capi_docs):
    """The additionalConfig is `render clc` of examples/cluster-api/aws/manifest.toml (with
    --kubelet-dropin --refresh), byte for byte; BOOTSECRETS_UPDATE_SNIPPETS=1 rewrites it."""
    want = render_clc(CAPI / "manifest.toml", "--kubelet-dropin", "--refresh")
    have = capi_docs["KubeadmConfigTemplate"]["spec"]["template"]["spec"]["ignition"][
        "containerLinuxConfig"]["additionalConfig"]
    if have != want and os.environ.get("BOOTSECRETS_UPDATE_SNIPPETS"):
        text = (CAPI / "workers.yaml").read_text()
        head, rest = text.split("          additionalConfig: |\n", 1)
        tail = rest[rest.index("\n---\napiVersion: cluster.x-k8s.io/") + 1:]
        block = "".join(("            " + line if line else "") + "\n" for line in want.splitlines())
        (CAPI / "workers.yaml").write_text(head + "          additionalConfig: |\n" + block + tail)
        have = want
    assert have == want, "stale: render it again"


@pytest.mark.parametrize("extra", [[], ["--kubelet-dropin", "--refresh"], ["--install", "sysext"]])
def test_render_clc_uses_only_clc_fields_and_matches_the_ignition_rendering(extra, tmp_path):
    """Field by field: the CLC's files, links and units are the Ignition rendering's."""
    import base64
    import json
    import yaml
    from support.schemas import CLC, unknown_fields

    manifest = ROOT / "examples" / "manifest.toml"
    url = (["--image-url", "s3://b/bootsecrets-0.1.0-x86-64.raw", "--image-sha512", ZEROS]
           if "sysext" in extra else ["--binary-url", "s3://b/bootsecrets", "--binary-sha512", ZEROS])
    clc = yaml.safe_load(subprocess.run(
        [str(BIN), "render", "clc", "--variant", "flatcar", "--manifest", str(manifest), *url,
         *extra], capture_output=True, text=True, check=True).stdout)
    assert unknown_fields(clc, "Config", CLC) == []
    ign = json.loads(subprocess.run(
        [str(BIN), "render", "ignition", "--variant", "flatcar", "--manifest", str(manifest), *url,
         *extra], capture_output=True, text=True, check=True).stdout)
    files = clc["storage"]["files"]
    assert [(f["path"], f["mode"], f["filesystem"]) for f in files] == [
        (f["path"], f["mode"], "root") for f in ign["storage"]["files"]]
    remote = files[0]["contents"]["remote"]
    assert remote["url"] == ign["storage"]["files"][0]["contents"]["source"]
    assert f"sha512-{remote['verification']['hash']['sum']}" == \
        ign["storage"]["files"][0]["contents"]["verification"]["hash"]
    data = ign["storage"]["files"][1]["contents"]["source"].split(",", 1)[1]
    assert files[1]["contents"]["inline"] == base64.b64decode(data).decode()
    assert [(l["path"], l["target"]) for l in clc["storage"].get("links", [])] == [
        (l["path"], l["target"]) for l in ign["storage"].get("links", [])]
    assert clc["systemd"]["units"] == ign["systemd"]["units"]


def test_render_clc_refuses_what_clc_cannot_carry():
    for args, says in [(["--variant", "fcos", "--binary-url", "https://x/b"], "use --variant flatcar"),
                       (["--variant", "flatcar", "--binary-url", "gs://b/bootsecrets"], "`gs:`")]:
        r = subprocess.run([str(BIN), "render", "clc", *args, "--binary-sha512", ZEROS,
                            "--manifest", str(ROOT / "examples" / "manifest.toml")],
                           capture_output=True, text=True)
        assert r.returncode == 2 and says in r.stderr, r


# -- A Typhoon-style Flatcar worker

TYPHOON = ROOT / "examples" / "typhoon-style"


def test_the_typhoon_style_worker_takes_its_bootstrap_credential_from_bootsecrets(tmp_path):
    """No credential inline in the user data: kubelet's bootstrap kubeconfig and CA are the files
    bootsecrets publishes, and the manifest makes the bootstrap one conditional."""
    import yaml

    bu = yaml.safe_load((TYPHOON / "worker.bu").read_text())
    files = {f["path"]: f for f in bu["storage"]["files"]}
    assert "/etc/kubernetes/kubeconfig" not in files, "the bootstrap kubeconfig is not inline"
    text = (TYPHOON / "worker.bu").read_text()
    for needle in ("token:", "client-key-data", "client-certificate-data", "BEGIN "):
        assert needle not in text, needle
    [kubelet] = [u for u in bu["systemd"]["units"] if u["name"] == "kubelet.service"]
    assert "--bootstrap-kubeconfig=/run/bootsecrets/kubelet/bootstrap-kubeconfig" in kubelet["contents"]
    assert "-v /run:/run" in kubelet["contents"], "the container sees the tmpfs itself"
    assert "clientCAFile: /run/bootsecrets/kubelet/ca.crt" in files["/etc/kubernetes/kubelet.yaml"][
        "contents"]["inline"]
    r = subprocess.run([str(BIN), "check", "--offline", "--manifest", str(TYPHOON / "manifest.toml")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "kubelet/bootstrap-kubeconfig" in r.stdout and \
        "skipped when /var/lib/kubelet/kubeconfig exists" in r.stdout, r
    if not (BUTANE.is_file() and os.access(BUTANE, os.X_OK)):
        pytest.skip(f"butane not found at {BUTANE} (set BUTANE): the real Butane compile was NOT checked")
    r = subprocess.run([str(BUTANE), "--strict", "--files-dir", str(TYPHOON), str(TYPHOON / "worker.bu")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "w.ign"
    out.write_text(r.stdout)
    v = subprocess.run(["ignition-validate", str(out)], capture_output=True, text=True)
    assert v.returncode == 0 and not v.stdout.strip() and not v.stderr.strip(), v
