"""bootsecrets demo: real servers and doubles on 127.0.0.1, two secrets, one run.

Usage: examples/demo.sh [--backend moto|localstack|openbao] [--keep]
  --backend moto        (the default) a real moto server, SigV4 signatures and IAM policies
                        enforced, and the IMDSv2 double minting the instance role's credentials
                        through moto's sts:AssumeRole
  --backend localstack  a real LocalStack (Secrets Manager, STS, IAM; it checks no signature),
                        and the IMDSv2 double minting credentials through LocalStack's STS
  --backend openbao     a real OpenBao dev server (the Vault API), KV v2, and a token file
                        holding a token whose policy reads the two secrets and nothing else
  --keep                leave the output directory in /dev/shm
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.imds import ImdsDouble  # noqa: E402
from support.localstack import LocalStack  # noqa: E402
from support.moto import Moto  # noqa: E402
from support.openbao import OpenBao  # noqa: E402

REGION = "eu-central-1"
BOOTSTRAP_TOKEN = "abcdef.0123456789abcdef"
DB = {"username": "app", "password": "hunter2-demo"}


def say(msg):
    print(f"\n\033[1m== {msg}\033[0m", flush=True)


def start_aws(kind, work, stack):
    """moto or LocalStack, and the IMDSv2 double; returns the manifest's backend and secrets."""
    if kind == "moto":
        say("starting moto (signature checking and IAM on) and the IMDSv2 double")
        server = stack(Moto(log_path=work / "moto.log").start())
    else:
        say("starting LocalStack (Secrets Manager, STS, IAM on 127.0.0.1) and the IMDSv2 double")
        server = stack(LocalStack(log_path=work / "localstack.log").start())
        print(f"LocalStack ready in {server.started_in:.1f} s")
    imds = stack(ImdsDouble(server, role="node", region=REGION).start())
    shown = {"moto": "moto", "localstack": "LocalStack"}[kind]
    print(f"{shown} at {server.url}, IMDS double at {imds.url} (instance role `node`, region {REGION}, "
          f"credentials from {shown}'s sts:AssumeRole)")
    say("seeding two secrets in Secrets Manager")
    sm = server.client("secretsmanager", region=REGION)
    sm.create_secret(Name="prod/kubelet/bootstrap", SecretString=BOOTSTRAP_TOKEN)
    sm.create_secret(Name="prod/db", SecretString=json.dumps(DB))
    print("prod/kubelet/bootstrap (a string), prod/db (a JSON object)")
    backend = f"""\
[backend.aws]
type = "aws"
# region: from the instance identity document
endpoint = "{server.url}"
imds_endpoint = "{imds.url}"
"""
    return backend, ["prod/kubelet/bootstrap"], ["prod/db", 'json_key = "password"']


def start_openbao(work, stack):
    say("starting a real OpenBao dev server (the Vault API)")
    bao = stack(OpenBao(log_path=work / "bao.log").start())
    print(f"OpenBao at {bao.url}")
    say("seeding two secrets in KV v2 at secret/, and a token that may read only those")
    bao.put("secret", "prod/kubelet/bootstrap", {"token": BOOTSTRAP_TOKEN})
    bao.put("secret", "prod/db", DB)
    bao.read_policy("bootsecrets-demo", "secret/data/prod/kubelet/bootstrap", "secret/data/prod/db")
    token_file = work / "vault-token"
    token_file.write_text(bao.token(["bootsecrets-demo"], ttl="10m") + "\n")
    token_file.chmod(0o600)
    print(f"secret/prod/kubelet/bootstrap (field token), secret/prod/db (fields username, password);"
          f" the token is in {token_file} (mode 0600)")
    backend = f"""\
[backend.vault]
type = "vault"
address = "{bao.url}"

[backend.vault.auth]
method = "token"
token_file = "{token_file}"
"""
    return backend, ["secret/prod/kubelet/bootstrap", 'field = "token"'], \
        ["secret/prod/db", 'field = "password"']


def main():
    ap = argparse.ArgumentParser(prog="examples/demo.sh", description=__doc__.splitlines()[0])
    ap.add_argument("binary", help=argparse.SUPPRESS)
    ap.add_argument("--backend", choices=["moto", "localstack", "openbao"], default="moto",
                    help="which real server the secrets come from (default: moto)")
    ap.add_argument("--keep", action="store_true", help="leave the output directory in /dev/shm")
    args = ap.parse_args()
    binary = Path(args.binary).resolve()
    keep = args.keep
    work = Path(tempfile.mkdtemp(prefix="bootsecrets-demo-"))
    out = Path(f"/dev/shm/bootsecrets-demo-{uuid.uuid4().hex[:8]}")
    started = []

    def stack(server):
        started.append(server)
        return server

    try:
        if args.backend == "openbao":
            backend, token_ref, db_ref = start_openbao(work, stack)
        else:
            backend, token_ref, db_ref = start_aws(args.backend, work, stack)

        group = "nogroup" if os.geteuid() == 0 else str(os.getegid())
        manifest = work / "manifest.toml"
        secrets = [
            ["kubelet/bootstrap-token", *token_ref, 'mode = "0440"', f'group = "{group}"'],
            ["db/password", *db_ref],
        ]
        manifest.write_text(f"""\
# Names and references only: no value ever appears in a manifest.
[settings]
output_root = "{out}"
root_group = "{group}"
deadline_seconds = 30

{backend}""" + "".join(f'\n[[secret]]\npath = "{path}"\nref = "{ref}"\n' + "".join(f"{k}\n" for k in keys)
                       for path, ref, *keys in secrets))
        say(f"the manifest ({manifest})")
        print(manifest.read_text())
        say("bootsecrets check")
        subprocess.run([binary, "check", "--manifest", manifest], check=True)
        say("bootsecrets run")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        r = subprocess.run([binary, "run", "--manifest", manifest], env=env)
        print(f"exit code {r.returncode}")
        say(f"the output root {out}: one version directory, published by the ..data link")
        subprocess.run(["ls", "-la", str(out)], check=True)
        say("what a consumer sees (through the links): modes and owners of each file")
        subprocess.run(["find", "-L", str(out), "-mindepth", "1", "(", "-name", "..*", "-o",
                        "-name", ".status.json", ")", "-prune", "-o",
                        "-printf", "%M %u:%g %6s  %p\n"], check=True)
        subprocess.run(["stat", "-f", "-c", "filesystem type: %T", str(out)], check=True)
        say(f"{out}/.status.json (mode 0600; digests and sizes, never values)")
        print((out / ".status.json").read_text())
        if not keep:
            print(f"\n(removing {out}; run with --keep to leave it)")
        return r.returncode
    finally:
        for server in reversed(started):
            server.stop()
            if isinstance(server, OpenBao):
                shutil.rmtree(server.home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        if not keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
