"""RS256 JWTs signed with a test key, for the metadata doubles and the Vault jwt-based logins.

A real OpenBao jwt auth method verifies these against `public_pem()`; nothing here is a real
credential.
"""

import base64
import json
import time
import uuid

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """One RSA key; `sign(claims)` returns a compact RS256 JWT with iat/nbf/exp/jti filled in."""

    def __init__(self, kid: str | None = None):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = kid or uuid.uuid4().hex[:16]

    def public_pem(self) -> str:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def sign(self, claims: dict, *, lifetime: int = 3600) -> str:
        now = int(time.time())
        body = {"iat": now, "nbf": now - 5, "exp": now + lifetime, "jti": uuid.uuid4().hex, **claims}
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(body).encode())}"
        sig = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(sig)}"


def claims(token: str) -> dict:
    """The (unverified) claims of a compact JWT, for assertions in tests."""
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
