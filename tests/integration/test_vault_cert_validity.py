"""A cert login's client certificate, read before the login, against a real OpenBao server with
TLS: an expired one is a permanent failure named at once (OpenBao itself would answer 500, which
looks like an outage); one not yet valid (the node's clock behind at boot) is waited for; one near
its end gets a warning in runs, `check` and `doctor`, with a margin the manifest sets."""

import datetime
import uuid

from conftest import vault_manifest
from test_doctor import doctor, finding


def certificate(common_name, start, end):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


def setup(b, credfile, outdir, start, end, extra_auth=None, settings=""):
    mount = f"kv-{uuid.uuid4().hex[:8]}"
    b.enable_kv(mount, 2)
    b.put(mount, "db", {"password": "cert-value"})
    b.read_policy(mount, f"{mount}/data/*")
    cert, key = certificate("node-1.example.internal", start, end)
    auth_mount = f"cert-{uuid.uuid4().hex[:6]}"
    b.enable_auth(auth_mount, "cert")
    b.api("POST", f"auth/{auth_mount}/certs/node", {"certificate": cert, "token_policies": [mount]})
    auth = {"method": "cert", "mount": auth_mount, "name": "node",
            "cert_file": str(credfile(f"{auth_mount}.crt", cert, 0o644)),
            "key_file": str(credfile(f"{auth_mount}.key", key)), **(extra_auth or {})}
    return auth, vault_manifest(outdir, b.url, auth, [{"path": "db", "ref": f"{mount}/db",
                                                       "field": "password"}],
                                backend_extra=f'ca_file = "{b.ca_file}"', settings=settings)


NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def test_an_expired_certificate_is_named_at_once_and_check_and_doctor_fail_it(
        bao_factory, outdir, credfile, bootsecrets, tmp_path):
    b = bao_factory(tls=True)
    auth, m = setup(b, credfile, outdir, NOW - 30 * DAY, NOW - DAY, settings="deadline_seconds = 30")
    r = bootsecrets(m)
    assert r.code == 1 and r.elapsed < 10, r
    assert f"the client certificate in {auth['cert_file']} expired at " in r.stderr, r.stderr
    assert "install a renewed certificate in cert_file" in r.stderr, r.stderr
    assert "server error (500)" not in r.stderr and "transient" not in r.stderr, r.stderr
    r = bootsecrets(m, command="check")
    assert r.code != 0 and "expired at" in r.output, r
    code, report, _ = doctor(m, tmp_path, cmdline="")
    assert code != 0 and any(c["status"] == "fail" and "expired at" in c["detail"]
                             for c in report["checks"]), report


def test_a_certificate_near_its_end_warns_with_the_margin_the_manifest_sets(
        bao_factory, outdir, credfile, bootsecrets, tmp_path):
    b = bao_factory(tls=True)
    auth, m = setup(b, credfile, outdir, NOW - DAY, NOW + 3 * DAY)
    r = bootsecrets(m)
    assert r.code == 0 and (outdir / "db").read_bytes() == b"cert-value", r
    assert f"the client certificate in {auth['cert_file']} expires in 2 d 23 h" in r.stderr, r.stderr
    r = bootsecrets(m, command="check")
    assert r.code == 0 and "expires in 2 d 23 h" in r.output, r
    code, report, _ = doctor(m, tmp_path, cmdline="")
    assert any(c["status"] == "warn" and "expires in 2 d 23 h" in c["detail"]
               for c in report["checks"]), report
    # A margin of two days: no warning.
    _, m = setup(b, credfile, outdir, NOW - DAY, NOW + 3 * DAY, {"expiry_warning_days": 2})
    r = bootsecrets(m)
    assert r.code == 0 and "warning" not in r.stderr, r


def test_a_certificate_not_yet_valid_is_waited_for_as_a_clock_behind(
        bao_factory, outdir, credfile, bootsecrets):
    b = bao_factory(tls=True)
    auth, m = setup(b, credfile, outdir, NOW + datetime.timedelta(hours=1), NOW + 30 * DAY,
                    settings="deadline_seconds = 5")
    r = bootsecrets(m)
    assert r.code == 3, r
    assert f"the client certificate in {auth['cert_file']} is not valid before " in r.stderr, r.stderr
    assert "the clock is probably behind (not yet synchronized at boot)" in r.stderr, r.stderr
