"""bootsecrets demo: real moto + IMDSv2 double on 127.0.0.1, two secrets, one run.

Usage: examples/demo.sh [--keep]   (--keep leaves the output directory in /dev/shm)
"""

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
from support.moto import Moto  # noqa: E402


def say(msg):
    print(f"\n\033[1m== {msg}\033[0m", flush=True)


def main():
    binary = Path(sys.argv[1]).resolve()
    keep = "--keep" in sys.argv[2:]
    work = Path(tempfile.mkdtemp(prefix="bootsecrets-demo-"))
    out = Path(f"/dev/shm/bootsecrets-demo-{uuid.uuid4().hex[:8]}")
    say("starting moto (signature checking and IAM on) and the IMDSv2 double")
    moto = Moto(log_path=work / "moto.log").start()
    imds = ImdsDouble(moto, role="node", region="eu-central-1").start()
    print(f"moto at {moto.url}, IMDS double at {imds.url} (instance role `node`, region eu-central-1)")
    try:
        say("seeding two secrets in Secrets Manager")
        sm = moto.client("secretsmanager", region="eu-central-1")
        sm.create_secret(Name="prod/kubelet/bootstrap", SecretString="abcdef.0123456789abcdef")
        sm.create_secret(Name="prod/db", SecretString=json.dumps({"username": "app", "password": "hunter2-demo"}))
        print("prod/kubelet/bootstrap (a string), prod/db (a JSON object)")

        group = "nogroup" if os.geteuid() == 0 else str(os.getegid())
        manifest = work / "manifest.toml"
        manifest.write_text(f"""\
# Names and references only: no value ever appears in a manifest.
[settings]
output_root = "{out}"
root_group = "{group}"
deadline_seconds = 30

[backend.aws]
type = "aws"
# region: from the instance identity document
endpoint = "{moto.url}"
imds_endpoint = "{imds.url}"

[[secret]]
path = "kubelet/bootstrap-token"
ref = "prod/kubelet/bootstrap"
mode = "0440"
group = "{group}"

[[secret]]
path = "db/password"
ref = "prod/db"
json_key = "password"
""")
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
        imds.stop()
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
        if not keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
