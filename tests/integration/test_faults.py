"""The fault matrix (issue 6; docs/reliability.md): the built binary against moto, a real OpenBao
and the IMDSv2 double, with faults injected by the double's knobs or by the fault proxy
(tests/support/faults.py) placed in front of the backend.

Every test expects one of two outcomes: success within the deadline, or a fail-closed exit
(1 = permanent, 3 = deadline) whose stderr names the secret or backend and the cause. Either way
consumers never see a partial set: a failed run leaves the previously published set byte for
byte (or nothing), and no secret value, token or credential reaches stdout or stderr.
"""

import json
import math
import os
import socket
import time
import uuid

import pytest
import requests

from conftest import aws_manifest, published, status, vault_manifest
from support.faults import (GET_SECRET_VALUE, THROTTLING, Hang, Oversize, ResetMidBody, Respond,
                            Trickle, aws_error)

CANARY = "CANARY-fault-5d1e9b-secret-value"


# -- helpers

@pytest.fixture
def bootsecrets(bootsecrets, request):
    """conftest's runner; with FAULTS_RECORD=FILE set, every run's exit code, time and stderr are
    also appended to FILE (JSON lines), which is where docs/reliability.md's numbers come from."""
    record = os.environ.get("FAULTS_RECORD")
    if not record:
        return bootsecrets

    def run(*args, **kw):
        r = bootsecrets(*args, **kw)
        with open(record, "a") as f:
            f.write(json.dumps({"test": request.node.name, "code": r.code,
                                "elapsed": round(r.elapsed, 2), "stderr": r.stderr}) + "\n")
        return r

    return run


class At:
    """Stands in for the `moto` argument of aws_manifest: only its `url` is used."""

    def __init__(self, url):
        self.url = url


def snapshot(root) -> dict:
    """What a consumer reads under `root`: {relative path: bytes}."""
    return {k: p.read_bytes() for k, p in published(root).items()}


def assert_clean(r, imds=None, *more):
    """No value, token or credential in stdout or stderr."""
    assert CANARY not in r.output, ("the canary value leaked", r)
    assert CANARY[::-1] not in r.output
    for tok in (imds.handed_out if imds else []):
        assert tok not in r.output, ("a token or credential leaked", r)
    for s in more:
        assert s not in r.output, ("a secret leaked", r)


def publish_previous(bootsecrets, manifest, outdir, expected: dict) -> dict:
    """Publishes a first set and returns what consumers see, to compare after a failed run."""
    r = bootsecrets(manifest)
    assert r.code == 0, r
    snap = snapshot(outdir)
    assert snap == expected, snap
    return snap


def gsv(proxy):
    """The GetSecretValue requests the proxy saw, in order."""
    return proxy.entries(target=GET_SECRET_VALUE["X-Amz-Target"])


# -- the proxy itself: it injects what it says, so the tests below prove something

def test_fault_proxy_injects_what_it_says(moto, fault_proxy):
    p = fault_proxy(moto.url)
    url = p.url + "/moto-api/"
    assert requests.get(url, timeout=5).status_code == 200  # forwarded

    rule = p.inject(Respond(503, "busy", [("Retry-After", "3")]), method="GET", times=2, skip=1)
    codes = [requests.get(url, timeout=5).status_code for _ in range(4)]
    assert codes == [200, 503, 503, 200] and rule.applied == 2 and rule.seen == 4
    p.clear()

    # A reset mid-body: the headers promise more than arrives, then a TCP RST.
    p.inject(ResetMidBody(keep=0.5), times=1)
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"GET /moto-api/ HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        with pytest.raises(ConnectionResetError):
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
    head, _, partial = got.partition(b"\r\n\r\n")
    length = int([ln.split(b":")[1] for ln in head.split(b"\r\n")
                  if ln.lower().startswith(b"content-length")][0])
    assert 0 < len(partial) < length
    p.clear()

    # A trickle: 5 bytes per second.
    p.inject(Trickle(5), times=1)
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"GET /moto-api/ HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(65536)  # the headers
        start, n = time.monotonic(), 0
        while time.monotonic() - start < 1.5:
            n += len(s.recv(1))
    assert 4 <= n <= 10, n
    p.clear()

    # Oversize: the announced length, streamed.
    p.inject(Oversize(5 * 2**20, b'{"x":"', b'"}'), times=1)
    r = requests.get(url, timeout=10)
    assert int(r.headers["Content-Length"]) == len(r.content) == 5 * 2**20
    p.clear()

    # A hang: nothing at all comes back.
    p.inject(Hang(), times=1)
    with pytest.raises(requests.ReadTimeout):
        requests.get(url, timeout=1)
    time.sleep(0.3)
    assert [e["action"] for e in p.log][-1] == "hang" and p.log[-1]["status"] is None


# -- 1-3: the identity (IMDSv2)

def test_imds_down_for_the_first_20s(moto, imds_factory, outdir, name, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="after-20s")
    imds = imds_factory(listen_after=20)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}],
                                 settings="deadline_seconds = 60"))
    assert r.code == 0, r
    assert snapshot(outdir) == {"a": b"after-20s"}
    # Up after 20 s; the largest backoff step is 8 s, so the success comes by 28 s.
    assert 19.5 <= r.elapsed <= 29.5, r
    assert "connection refused" in r.stderr and "transient" in r.stderr, r


def test_imds_token_put_hangs_forever_exits_3_at_the_deadline(moto, imds_factory, outdir, name,
                                                              bootsecrets):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString=CANARY)
    good = imds_factory()
    before = publish_previous(bootsecrets, aws_manifest(
        outdir, good, moto, [{"path": "a", "ref": f"{name}/a"}]), outdir, {"a": CANARY.encode()})
    sm.put_secret_value(SecretId=f"{name}/a", SecretString=CANARY + "-2")

    imds = imds_factory(hang_token_puts=math.inf)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}],
                                 settings="deadline_seconds = 8"))
    assert r.code == 3, r
    assert r.elapsed <= 8 + 2, r
    assert "deadline of 8s exceeded" in r.stderr, r
    assert "backend `aws`" in r.stderr and "needed by secret(s) `a`" in r.stderr, r
    # The cause is in the retry warnings: the attempts timed out at IMDS.
    assert "IMDS at" in r.stderr and "not reachable yet" in r.stderr, r
    assert "timed out" in r.stderr or "no answer to the token request" in r.stderr, r
    assert imds.hung >= 1
    assert snapshot(outdir) == before
    assert status(outdir)["run"]["outcome"] == "deadline_exceeded"
    assert_clean(r, imds)
    assert_clean(r, good)


def test_imds_hang_final_error_names_the_cause(moto, imds_factory, outdir, name, bootsecrets):
    """The failure (what .status.json keeps) says what hung, not only that it hung. With a
    7 s deadline the first attempt times out at IMDS after 5 s and the second is cut off by the
    deadline; the first one's cause is kept."""
    imds = imds_factory(hang_token_puts=math.inf)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}],
                                 settings="deadline_seconds = 7"))
    assert r.code == 3, r
    [failure] = status(outdir)["run"]["failures"]
    error = failure["error"]
    assert "IMDS" in error and ("timed out" in error or "token request" in error), error


def test_imds_token_put_hangs_for_the_first_requests_then_answers(moto, imds_factory, outdir,
                                                                  name, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="patient")
    imds = imds_factory(hang_token_puts=2)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}],
                                 settings="deadline_seconds = 40"))
    assert r.code == 0, r
    assert snapshot(outdir) == {"a": b"patient"}
    assert imds.hung == 2
    # Each hung PUT costs one IMDS read timeout (5 s) before the client moves on.
    assert 9 <= r.elapsed <= 30, r


def test_imds_credentials_500_a_few_times_then_work(moto, imds_factory, outdir, name,
                                                    bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="creds-ok")
    imds = imds_factory(fail_creds_times=3)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}],
                                 settings="deadline_seconds = 30"))
    assert r.code == 0, r
    assert snapshot(outdir) == {"a": b"creds-ok"}
    assert imds.failed_creds == 3
    assert "HTTP 500" in r.stderr and "transient" in r.stderr, r
    assert r.elapsed < 15, r


# -- 4-8: Secrets Manager through the fault proxy

def test_secrets_manager_503_burst(moto, imds, fault_proxy, outdir, name, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="after-503")
    p = fault_proxy(moto.url)
    rule = p.inject(Respond(503, "<html>Service Unavailable</html>",
                            [("Content-Type", "text/html")]), headers=GET_SECRET_VALUE, times=3)
    r = bootsecrets(aws_manifest(outdir, imds, At(p.url), [{"path": "a", "ref": f"{name}/a"}],
                                 settings="deadline_seconds = 30"))
    assert r.code == 0, r
    assert snapshot(outdir) == {"a": b"after-503"}
    assert rule.applied == 3 and len(gsv(p)) == 4
    assert "HTTP 503" in r.stderr and "secret `a`" in r.stderr, r
    assert r.elapsed < 10, r


def test_secrets_manager_throttling(moto, imds, fault_proxy, outdir, name, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="after-throttle")
    p = fault_proxy(moto.url)
    rule = p.inject(aws_error(400, *THROTTLING), headers=GET_SECRET_VALUE, times=3)
    r = bootsecrets(aws_manifest(outdir, imds, At(p.url), [{"path": "a", "ref": f"{name}/a"}],
                                 settings="deadline_seconds = 30"))
    assert r.code == 0, r
    assert snapshot(outdir) == {"a": b"after-throttle"}
    assert rule.applied == 3 and len(gsv(p)) == 4
    assert "throttled (ThrottlingException, HTTP 400)" in r.stderr, r
    assert "Rate exceeded" not in r.output, "the body's message is never quoted"


def test_secrets_manager_429_retry_after_is_honoured(moto, imds, fault_proxy, outdir, name,
                                                     bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="after-429")
    p = fault_proxy(moto.url)
    rule = p.inject(Respond(429, "", [("Retry-After", "3")]), headers=GET_SECRET_VALUE, times=1)
    r = bootsecrets(aws_manifest(outdir, imds, At(p.url), [{"path": "a", "ref": f"{name}/a"}],
                                 settings="deadline_seconds = 30"))
    assert r.code == 0, r
    assert snapshot(outdir) == {"a": b"after-429"}
    assert rule.applied == 1
    first, second = gsv(p)
    gap = second["t"] - first["t"]
    # Never sooner than Retry-After; the first backoff step alone would be 125-250 ms.
    assert 3.0 <= gap < 4.5, gap
    assert "HTTP 429" in r.stderr and "retrying in 3" in r.stderr, r


def test_secrets_manager_reset_mid_body(moto, imds, fault_proxy, outdir, name, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString=CANARY)
    p = fault_proxy(moto.url)
    rule = p.inject(ResetMidBody(keep=0.5), headers=GET_SECRET_VALUE, times=2)
    r = bootsecrets(aws_manifest(outdir, imds, At(p.url), [{"path": "a", "ref": f"{name}/a"}],
                                 settings="deadline_seconds = 30"))
    assert r.code == 0, r
    assert snapshot(outdir) == {"a": CANARY.encode()}
    assert rule.applied == 2 and len(gsv(p)) == 3
    assert all(0 < e["sent"] for e in p.entries(action="reset"))
    assert "secret `a`" in r.stderr and "transient" in r.stderr, r
    assert_clean(r, imds)


def test_secrets_manager_trickle_until_the_deadline_exits_3(moto, imds, fault_proxy, outdir,
                                                            name, bootsecrets):
    """Two secrets; only `b` trickles. The run must end at the deadline with the old set."""
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString="a-1")
    sm.create_secret(Name=f"{name}/b", SecretString=CANARY)
    p = fault_proxy(moto.url)
    secrets = [{"path": "a", "ref": f"{name}/a"}, {"path": "b", "ref": f"{name}/b"}]
    m = aws_manifest(outdir, imds, At(p.url), secrets, settings="deadline_seconds = 7",
                     backend_extra="timeout_seconds = 2")
    before = publish_previous(bootsecrets, m, outdir, {"a": b"a-1", "b": CANARY.encode()})
    sm.put_secret_value(SecretId=f"{name}/a", SecretString="a-2")
    sm.put_secret_value(SecretId=f"{name}/b", SecretString=CANARY + "-2")

    rule = p.inject(Trickle(1), headers=GET_SECRET_VALUE, body=f'"{name}/b"')
    r = bootsecrets(m)
    assert r.code == 3, r
    assert r.elapsed <= 7 + 2, r
    assert "secret `b`" in r.stderr and "deadline of 7s exceeded" in r.stderr, r
    assert "timed out" in r.stderr, r
    assert rule.applied >= 2, rule  # retried, each attempt cut by the 2 s request timeout
    assert all(e["sent"] <= 4 for e in p.entries(action="trickle")), p.entries(action="trickle")
    assert snapshot(outdir) == before
    assert_clean(r, imds)


def test_secrets_manager_trickle_then_normal_succeeds(moto, imds, fault_proxy, outdir, name,
                                                      bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString="after-trickle")
    p = fault_proxy(moto.url)
    rule = p.inject(Trickle(1), headers=GET_SECRET_VALUE, times=2)
    r = bootsecrets(aws_manifest(outdir, imds, At(p.url), [{"path": "a", "ref": f"{name}/a"}],
                                 settings="deadline_seconds = 30",
                                 backend_extra="timeout_seconds = 2"))
    assert r.code == 0, r
    assert snapshot(outdir) == {"a": b"after-trickle"}
    assert rule.applied == 2 and len(gsv(p)) == 3
    assert 4 <= r.elapsed < 12, r  # two attempts cut at 2 s each
    assert "timed out" in r.stderr, r


# -- 9: DNS

def test_dns_failure_exits_3_within_the_deadline(moto, imds, outdir, name, bootsecrets):
    moto.client("secretsmanager").create_secret(Name=f"{name}/a", SecretString=CANARY)
    before = publish_previous(bootsecrets, aws_manifest(
        outdir, imds, moto, [{"path": "a", "ref": f"{name}/a"}]), outdir, {"a": CANARY.encode()})
    r = bootsecrets(aws_manifest(outdir, imds, At("http://no-such-host.invalid:4566"),
                                 [{"path": "a", "ref": f"{name}/a"}],
                                 settings="deadline_seconds = 5", backend_extra="allow_http = true"))
    assert r.code == 3, r
    assert r.elapsed <= 5 + 2, r
    assert "secret `a`" in r.stderr and "deadline of 5s exceeded" in r.stderr, r
    assert "cannot reach Secrets Manager" in r.stderr, r
    assert snapshot(outdir) == before
    assert_clean(r, imds)


def test_dns_failure_message_says_the_name_did_not_resolve(imds, outdir, name, bootsecrets):
    r = bootsecrets(aws_manifest(outdir, imds, At("http://no-such-host.invalid:4566"),
                                 [{"path": "a", "ref": f"{name}/a"}],
                                 settings="deadline_seconds = 2", backend_extra="allow_http = true"))
    assert r.code == 3, r
    # The failure's own line (the last line only sums up which secrets failed).
    failure = [line for line in r.stderr.splitlines() if line.startswith("bootsecrets: error: secret `a`")]
    assert len(failure) == 1, r
    assert any(w in failure[0] for w in ("no-such-host.invalid", "resolv", "DNS")), failure


# -- 10: size limits

def gsv_body(name: str, value_prefix: str) -> tuple[bytes, bytes]:
    """The two ends of a well-formed GetSecretValue answer whose SecretString is filled between."""
    head = json.dumps({"ARN": f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}-AbCdEf",
                       "Name": name, "VersionId": str(uuid.uuid4()),
                       "VersionStages": ["AWSCURRENT"], "CreatedDate": 1.7e9})[:-1]
    return (head + ', "SecretString": "' + value_prefix).encode(), b'"}'


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_secrets_manager_oversize_response_is_refused(moto, imds, fault_proxy, outdir, name,
                                                      bootsecrets, chunked):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString="small")
    p = fault_proxy(moto.url)
    m = aws_manifest(outdir, imds, At(p.url), [{"path": "a", "ref": f"{name}/a"}],
                     settings="deadline_seconds = 30")
    before = publish_previous(bootsecrets, m, outdir, {"a": b"small"})
    head, tail = gsv_body(f"{name}/a", CANARY)
    rule = p.inject(Oversize(6 * 2**20, head, tail, fill=CANARY.encode(), chunked=chunked),
                    headers=GET_SECRET_VALUE)
    r = bootsecrets(m)
    assert r.code == 1, r
    assert "secret `a`" in r.stderr and "larger than 4194304 bytes" in r.stderr, r
    assert rule.applied == 1, "refused at once: permanent, not retried"
    assert r.elapsed < 10, r
    assert snapshot(outdir) == before
    assert_clean(r, imds)


def test_secrets_manager_oversize_value_is_refused(moto, imds, fault_proxy, outdir, name,
                                                   bootsecrets):
    """A 1.5 MiB value in a 1.5 MiB answer: under max_response_bytes, over max_secret_bytes."""
    p = fault_proxy(moto.url)
    head, tail = gsv_body(f"{name}/a", CANARY)
    value_len = 3 * 2**19
    body = head + (CANARY.encode() * (value_len // len(CANARY) + 1))[:value_len] + tail
    rule = p.inject(Respond(200, body, [("Content-Type", "application/x-amz-json-1.1")]),
                    headers=GET_SECRET_VALUE)
    r = bootsecrets(aws_manifest(outdir, imds, At(p.url), [{"path": "a", "ref": f"{name}/a"}],
                                 settings="deadline_seconds = 30"))
    assert r.code == 1, r
    assert "secret `a`" in r.stderr and "larger than 1048576 bytes" in r.stderr, r
    assert rule.applied == 1
    assert published(outdir) == {}
    assert_clean(r, imds)


def test_size_limit_settings_are_applied(moto, imds, fault_proxy, outdir, name, bootsecrets):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString=CANARY * 64)  # 2 KiB
    p = fault_proxy(moto.url)
    secret = [{"path": "a", "ref": f"{name}/a"}]
    r = bootsecrets(aws_manifest(outdir, imds, At(p.url), secret,
                                 settings="max_secret_bytes = 1024"))
    assert r.code == 1 and "larger than 1024 bytes" in r.stderr and "secret `a`" in r.stderr, r
    assert_clean(r, imds)
    r = bootsecrets(aws_manifest(outdir, imds, At(p.url), secret,
                                 settings="max_response_bytes = 1024"))
    assert r.code == 1 and "larger than 1024 bytes" in r.stderr and "secret `a`" in r.stderr, r
    assert_clean(r, imds)
    assert published(outdir) == {}
    r = bootsecrets(aws_manifest(outdir, imds, At(p.url), secret,
                                 settings="max_secret_bytes = 4096\nmax_response_bytes = 8192"))
    assert r.code == 0, r


# -- 11-12: values that cannot be transformed

@pytest.mark.parametrize("blob", [
    b'{"password": "' + CANARY.encode() + b'\xff\xfe"}',  # invalid UTF-8 inside the value
    b"\xff" + CANARY.encode() + b"\x80",                   # not text at all
], ids=["in-string", "whole"])
def test_invalid_utf8_where_json_is_required(moto, imds, outdir, name, bootsecrets, blob):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/ok", SecretString="fine")
    sm.create_secret(Name=f"{name}/bin", SecretBinary=blob)
    r = bootsecrets(aws_manifest(outdir, imds, moto, [
        {"path": "ok", "ref": f"{name}/ok"},
        {"path": "pw", "ref": f"{name}/bin", "json_key": "password"}]))
    assert r.code == 1, r
    assert "secret `pw`" in r.stderr and "is not valid JSON" in r.stderr, r
    assert r.elapsed < 10, r
    assert published(outdir) == {}
    assert_clean(r, imds)


def test_json_key_missing(moto, imds, outdir, name, bootsecrets):
    sm = moto.client("secretsmanager")
    sm.create_secret(Name=f"{name}/j", SecretString=json.dumps({"password": CANARY}))
    m = aws_manifest(outdir, imds, moto, [{"path": "pw", "ref": f"{name}/j",
                                           "json_key": "password"}])
    before = publish_previous(bootsecrets, m, outdir, {"pw": CANARY.encode()})
    sm.put_secret_value(SecretId=f"{name}/j", SecretString=json.dumps({"passwd": CANARY + "-2"}))
    r = bootsecrets(m)
    assert r.code == 1, r
    assert "secret `pw`" in r.stderr and "no key `password`" in r.stderr, r
    # The key names it has are listed (names, not values: the canary is never shown).
    assert "(keys present: `passwd`)" in r.stderr, r.stderr
    assert snapshot(outdir) == before
    assert_clean(r, imds)


# -- 13: Vault (OpenBao) through the fault proxy. Sealed then unsealed:
# test_vault.py::test_sealed_then_unsealed_during_the_run_is_retried.

@pytest.fixture
def kv(bao):
    mount = f"kv-{uuid.uuid4().hex[:8]}"
    bao.enable_kv(mount, 2)
    bao.read_policy(mount, f"{mount}/data/*", f"{mount}/*")
    return mount


@pytest.fixture
def vault_token(bao, kv, credfile):
    tok = bao.token([kv])
    return tok, {"method": "token", "token_file": str(credfile("token", tok + "\n"))}


def test_vault_5xx_burst(bao, kv, vault_token, fault_proxy, outdir, bootsecrets):
    bao.put(kv, "s", {"v": "after-5xx"})
    tok, auth = vault_token
    p = fault_proxy(bao.url)
    rule = p.inject(Respond(500, '{"errors":["internal error"]}',
                            [("Content-Type", "application/json")]),
                    method="GET", path=rf"^/v1/{kv}/data/", times=3)
    r = bootsecrets(vault_manifest(outdir, p.url, auth, [{"path": "v", "ref": f"{kv}/s",
                                                          "field": "v"}],
                                   settings="deadline_seconds = 30"))
    assert r.code == 0, r
    assert snapshot(outdir) == {"v": b"after-5xx"}
    assert rule.applied == 3
    assert "server error (500)" in r.stderr and "secret `v`" in r.stderr, r
    assert tok not in r.output


def test_vault_reset_mid_body(bao, kv, vault_token, fault_proxy, outdir, bootsecrets):
    bao.put(kv, "s", {"v": CANARY})
    tok, auth = vault_token
    p = fault_proxy(bao.url)
    rule = p.inject(ResetMidBody(keep=0.5), method="GET", path=rf"^/v1/{kv}/data/", times=2)
    r = bootsecrets(vault_manifest(outdir, p.url, auth, [{"path": "v", "ref": f"{kv}/s",
                                                          "field": "v"}],
                                   settings="deadline_seconds = 30"))
    assert r.code == 0, r
    assert snapshot(outdir) == {"v": CANARY.encode()}
    assert rule.applied == 2
    assert "secret `v`" in r.stderr and "transient" in r.stderr, r
    assert_clean(r, None, tok)


def test_vault_429_retry_after_is_honoured(bao, kv, vault_token, fault_proxy, outdir,
                                           bootsecrets):
    bao.put(kv, "s", {"v": "after-429"})
    _, auth = vault_token
    p = fault_proxy(bao.url)
    rule = p.inject(Respond(429, '{"errors":["rate limit quota exceeded"]}',
                            [("Retry-After", "3"), ("Content-Type", "application/json")]),
                    method="GET", path=rf"^/v1/{kv}/data/", times=1)
    r = bootsecrets(vault_manifest(outdir, p.url, auth, [{"path": "v", "ref": f"{kv}/s",
                                                          "field": "v"}],
                                   settings="deadline_seconds = 30"))
    assert r.code == 0, r
    assert snapshot(outdir) == {"v": b"after-429"}
    assert rule.applied == 1
    reads = [e for e in p.log if e["path"].startswith(f"/v1/{kv}/data/")]
    gap = reads[1]["t"] - reads[0]["t"]
    assert 3.0 <= gap < 4.5, gap


def test_vault_hang_is_bounded_by_the_deadline(bao, kv, vault_token, fault_proxy, outdir,
                                               bootsecrets):
    bao.put(kv, "s", {"v": CANARY})
    tok, auth = vault_token
    p = fault_proxy(bao.url)
    m = vault_manifest(outdir, p.url, auth, [{"path": "v", "ref": f"{kv}/s", "field": "v"}],
                       settings="deadline_seconds = 5")
    before = publish_previous(bootsecrets, m, outdir, {"v": CANARY.encode()})
    bao.put(kv, "s", {"v": CANARY + "-2"})
    rule = p.inject(Hang(), method="GET", path=rf"^/v1/{kv}/data/")
    r = bootsecrets(m)
    assert r.code == 3, r
    assert r.elapsed <= 5 + 2, r
    assert "secret `v`" in r.stderr and "deadline of 5s exceeded" in r.stderr, r
    assert rule.applied >= 1
    assert snapshot(outdir) == before
    assert_clean(r, None, tok)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_vault_oversize_response_is_refused(bao, kv, vault_token, fault_proxy, outdir,
                                            bootsecrets, chunked):
    bao.put(kv, "s", {"v": "small"})
    tok, auth = vault_token
    p = fault_proxy(bao.url)
    m = vault_manifest(outdir, p.url, auth, [{"path": "v", "ref": f"{kv}/s", "field": "v"}],
                       settings="deadline_seconds = 30")
    before = publish_previous(bootsecrets, m, outdir, {"v": b"small"})
    rule = p.inject(Oversize(6 * 2**20, b'{"data":{"data":{"v":"' + CANARY.encode(), b'"}}}',
                             fill=CANARY.encode(), chunked=chunked),
                    method="GET", path=rf"^/v1/{kv}/data/")
    r = bootsecrets(m)
    assert r.code == 1, r
    assert "secret `v`" in r.stderr and "larger than 4194304 bytes" in r.stderr, r
    assert rule.applied == 1
    assert snapshot(outdir) == before
    assert_clean(r, None, tok)
