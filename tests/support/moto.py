"""A real moto server with signature checking and IAM enforcement turned on.

moto checks SigV4 signatures and IAM policies once its first INITIAL_NO_AUTH_ACTION_COUNT requests
have been served. Those three requests bootstrap an admin user; everything after is signed with
real keys. Two roles exist: `node` may call secretsmanager:GetSecretValue, `nobody` may not.
Credentials for a role come from a real sts:AssumeRole, exactly what an instance profile yields.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import boto3
from botocore.config import Config

from .net import free_port, wait_http

ACCOUNT = "123456789012"
BOOTSTRAP_CALLS = 3
TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
}
ROLE_POLICIES = {
    "node": ["secretsmanager:GetSecretValue"],
    # What `bootsecrets doctor` may use too, to check references without reading values.
    "doctor": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
    "nobody": ["s3:GetObject"],
}


class Moto:
    def __init__(self, port: int | None = None, log_path: Path | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc = None
        self.admin = None

    def start(self) -> "Moto":
        exe = Path(sys.executable).with_name("moto_server")
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(BOOTSTRAP_CALLS))
        log = open(self.log_path or os.devnull, "wb")
        self.proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        wait_http(f"{self.url}/moto-api/")
        self._bootstrap()
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def _client(self, service, creds, region="us-east-1"):
        return boto3.client(
            service, endpoint_url=self.url, region_name=region,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds.get("SessionToken"),
            config=Config(retries={"max_attempts": 1}),
        )

    def _bootstrap(self) -> None:
        anon = {"AccessKeyId": "AKIABOOTSTRAPBOOTSTR", "SecretAccessKey": "bootstrap"}
        iam = self._client("iam", anon)
        iam.create_user(UserName="admin")
        iam.put_user_policy(
            UserName="admin", PolicyName="all",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
        )
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        self.admin = {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}
        iam = self.client("iam")
        for role, actions in ROLE_POLICIES.items():
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(TRUST))
            iam.put_role_policy(
                RoleName=role, PolicyName="p",
                PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                    {"Effect": "Allow", "Action": actions, "Resource": "*"}]}),
            )

    def client(self, service: str, region: str = "us-east-1"):
        """A boto3 client signed with the admin user's keys."""
        return self._client(service, self.admin, region)

    def assume_role(self, role: str) -> dict:
        """Temporary credentials for `role`, minted by moto's STS."""
        c = self.client("sts").assume_role(
            RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{role}", RoleSessionName="i-0123456789abcdef0",
        )["Credentials"]
        return {
            "AccessKeyId": c["AccessKeyId"],
            "SecretAccessKey": c["SecretAccessKey"],
            "Token": c["SessionToken"],
            "Expiration": c["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
