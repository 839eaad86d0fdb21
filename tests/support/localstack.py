"""A real LocalStack (PyPI `localstack-core`), started on the host without Docker.

LocalStack runs from its own venv, `.venv-localstack` (tests/setup.sh creates it from
tests/requirements-localstack.txt: its pinned dependencies clash with moto's, and
localstack-core 2026.3.0 needs Python 3.12 or newer). It is started as
`python -m localstack.runtime.main`, bound to 127.0.0.1 only, with Secrets Manager, STS and IAM,
and everything it writes under a temporary directory:

* `GATEWAY_LISTEN=127.0.0.1:PORT` with `GATEWAY_SERVER=hypercorn` (the default server listens on
  0.0.0.0 whatever GATEWAY_LISTEN says);
* `OVERRIDE_IN_DOCKER=0` (else it believes it runs in a container and writes /var/lib/localstack);
* `DNS_ADDRESS=0`: no DNS server (it would bind 0.0.0.0:53 where an upstream resolver is found);
* `DISABLE_EVENTS=1`, `SKIP_SSL_CERT_DOWNLOAD=1`: nothing is sent or fetched from outside;
* `FILESYSTEM_ROOT`, `TMPDIR`, `HOME` under the temporary directory.

It is ready when its log says "Ready." (1-3 s here; the IAM roles below take 2 s more, as
LocalStack loads a service on its first request, and stopping it takes about 3 s). Unlike moto it does not check SigV4
signatures and does not enforce IAM policies (those are Pro features): any key is accepted and
every principal may read every secret, so the signature and access-denied tests stay on moto.
Credentials come from its real `sts:AssumeRole` (access keys `LSIA...`, which LocalStack maps
back to the role's account, 000000000000), the same shape moto's STS gives.

The same interface as support.moto.Moto for what the tests and the IMDSv2 double use: `url`,
`port`, `client(service, region)`, `assume_role(role)`, `start()`, `stop()`.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config

from .net import free_port

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-localstack"
ACCOUNT = "000000000000"
TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
}
# The same roles as support.moto (LocalStack accepts the policies but does not enforce them).
ROLE_POLICIES = {
    "node": ["secretsmanager:GetSecretValue"],
    "nobody": ["s3:GetObject"],
}


class LocalStack:
    def __init__(self, port: int | None = None, log_path: Path | None = None,
                 venv: Path = VENV, services: str = "secretsmanager,sts,iam"):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.venv = Path(venv)
        self.services = services
        self.home = Path(tempfile.mkdtemp(prefix="localstack-"))
        self.log_path = Path(log_path) if log_path else self.home / "localstack.log"
        self.proc = None
        self.started_in = None  # seconds from exec to "Ready."
        self.keys = {"AccessKeyId": "test", "SecretAccessKey": "test"}  # any key: no SigV4 checks

    def env(self) -> dict:
        (self.home / "fs").mkdir(exist_ok=True)
        (self.home / "tmp").mkdir(exist_ok=True)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "GATEWAY_LISTEN": f"127.0.0.1:{self.port}",
            "GATEWAY_SERVER": "hypercorn",
            "OVERRIDE_IN_DOCKER": "0",
            "SERVICES": self.services,
            "DNS_ADDRESS": "0",
            "DISABLE_EVENTS": "1",
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "FILESYSTEM_ROOT": str(self.home / "fs"),
            "TMPDIR": str(self.home / "tmp"),
        }

    def start(self, timeout: float = 60) -> "LocalStack":
        python = self.venv / "bin" / "python"
        if not python.exists():
            raise RuntimeError(f"{python} is missing: run tests/setup.sh (it creates {self.venv.name})")
        log = open(self.log_path, "wb")
        begin = time.monotonic()
        self.proc = subprocess.Popen(
            [str(python), "-m", "localstack.runtime.main"], stdout=log, stderr=subprocess.STDOUT,
            env=self.env(), cwd=self.home, start_new_session=True,
        )
        end = begin + timeout
        while time.monotonic() < end:
            text = self.log_path.read_text(errors="replace")
            if "\nReady." in text:
                self.started_in = time.monotonic() - begin
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"LocalStack exited ({self.proc.returncode}): {text[-3000:]}")
            time.sleep(0.05)
        else:
            self.stop()
            raise TimeoutError(f"LocalStack was not ready within {timeout}s: "
                               f"{self.log_path.read_text(errors='replace')[-3000:]}")
        self._bootstrap()
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            # SIGINT: it shuts down in about 3 s; after SIGTERM it hangs in its shutdown.
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.home in self.log_path.parents:  # keep the log for a look after a failure
            shutil.rmtree(self.home / "fs", ignore_errors=True)
            shutil.rmtree(self.home / "tmp", ignore_errors=True)
        else:
            shutil.rmtree(self.home, ignore_errors=True)

    def _client(self, service, creds, region="us-east-1"):
        return boto3.client(
            service, endpoint_url=self.url, region_name=region,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds.get("SessionToken"),
            config=Config(retries={"max_attempts": 1}),
        )

    def _bootstrap(self) -> None:
        iam = self.client("iam")
        for role, actions in ROLE_POLICIES.items():
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(TRUST))
            iam.put_role_policy(
                RoleName=role, PolicyName="p",
                PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                    {"Effect": "Allow", "Action": actions, "Resource": "*"}]}),
            )

    def client(self, service: str, region: str = "us-east-1"):
        """A boto3 client for this LocalStack (signed with placeholder keys, which it accepts)."""
        return self._client(service, self.keys, region)

    def assume_role(self, role: str) -> dict:
        """Temporary credentials for `role`, minted by LocalStack's STS."""
        c = self.client("sts").assume_role(
            RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{role}", RoleSessionName="i-0123456789abcdef0",
        )["Credentials"]
        return {
            "AccessKeyId": c["AccessKeyId"],
            "SecretAccessKey": c["SecretAccessKey"],
            "Token": c["SessionToken"],
            "Expiration": c["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def rss_kib(self) -> int | None:
        """The resident set size of the LocalStack process, in KiB (for the timings in the docs)."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None
