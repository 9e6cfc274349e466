"""Development keys, tokens and security events for trying cae-proxy with compose.yaml.

NOT for production: it writes private keys into a plain volume. Needs only `cryptography`.

  devkeys.py init DIR                     issuer and transmitter key pairs + their JWKS files
  devkeys.py token DIR SUB [--cp1] [--ttl SECONDS]
                                          an access token of the dev issuer for subject SUB
  devkeys.py set DIR SUB [--event credential-change|session-revoked|account-disabled|account-enabled]
                                          a signed SET about SUB, ready to POST to the push path
"""

import base64
import json
import os
import secrets
import sys
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ISSUER = "https://idp.dev.local"          # must match [[issuer]] issuer in cae-proxy.toml
AUDIENCE = "api://dev-app"                # must match [[issuer]] audiences
TRANSMITTER = "https://ssf.dev.local"     # must match [[transmitter]] issuer
RECEIVER = "https://cae-proxy.dev.local/ssf"  # must match [[transmitter]] audiences

CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"
EVENTS = {
    "credential-change": CAEP + "credential-change",
    "session-revoked": CAEP + "session-revoked",
    "account-disabled": RISC + "account-disabled",
    "account-enabled": RISC + "account-enabled",
}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(n: int) -> str:
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def init(directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    for name in ("issuer", "transmitter"):
        pem_path = os.path.join(directory, f"{name}-key.pem")
        if os.path.exists(pem_path):
            print(f"{pem_path} exists; keeping it", file=sys.stderr)
            key = load(directory, name)
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            fd = os.open(pem_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ))
        pub = key.public_key().public_numbers()
        jwks = {"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": f"{name}-1",
                          "n": uint(pub.n), "e": uint(pub.e)}]}
        with open(os.path.join(directory, f"{name}-jwks.json"), "w") as f:
            json.dump(jwks, f)
        print(f"wrote {name}-jwks.json", file=sys.stderr)


def load(directory: str, name: str):
    with open(os.path.join(directory, f"{name}-key.pem"), "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def sign(directory: str, name: str, header: dict, claims: dict) -> str:
    key = load(directory, name)
    signing_input = (b64(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + b64(json.dumps(claims, separators=(",", ":")).encode()))
    sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64(sig)


def token(directory: str, sub: str, cp1: bool, ttl: int) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "nbf": now,
              "exp": now + ttl, "jti": secrets.token_hex(8), "sid": "session-" + sub,
              "scp": "api.read"}
    if cp1:
        claims["xms_cc"] = ["cp1"]
    return sign(directory, "issuer", {"alg": "RS256", "typ": "JWT", "kid": "issuer-1"}, claims)


def security_event(directory: str, sub: str, event: str) -> str:
    now = int(time.time())
    body = {"event_timestamp": now}
    if event == "credential-change":
        body.update({"credential_type": "password", "change_type": "update"})
    claims = {"iss": TRANSMITTER, "aud": RECEIVER, "iat": now, "jti": secrets.token_hex(16),
              "sub_id": {"format": "iss_sub", "iss": ISSUER, "sub": sub},
              "events": {EVENTS[event]: body}}
    header = {"alg": "RS256", "typ": "secevent+jwt", "kid": "transmitter-1"}
    return sign(directory, "transmitter", header, claims)


def main(argv: list) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, directory, rest = argv[0], argv[1], argv[2:]
    if cmd == "init":
        init(directory)
    elif cmd == "token" and rest:
        ttl = int(rest[rest.index("--ttl") + 1]) if "--ttl" in rest else 3600
        print(token(directory, rest[0], "--cp1" in rest, ttl))
    elif cmd == "set" and rest:
        event = rest[rest.index("--event") + 1] if "--event" in rest else "credential-change"
        print(security_event(directory, rest[0], event), end="")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
