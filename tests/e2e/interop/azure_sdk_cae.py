#!/usr/bin/env python3
"""Interop check: Microsoft's Azure SDK for Python (azure-core) against cae-proxy's claims challenges.

The requests go through azure-core's real pipeline and its real ``BearerTokenCredentialPolicy``,
the policy every Azure SDK client uses. On a 401 whose ``WWW-Authenticate`` carries
``error="insufficient_claims"`` the policy decodes ``claims``, asks the credential for a new token
with those claims and retries the request once. The credentials here get real tokens from
cae-proxy's development issuer (``POST {issuer}/token``) and record every call the policy makes.

For every credential protocol the policy supports (``get_token_info``, as azure-identity's
credentials have it, and the older ``get_token``-only ``TokenCredential``), the script checks:

  a         a CAE client (policy built with ``enable_cae=True``, token with ``xms_cc: ["cp1"]``)
            calls the revocation route: 200, one token request, no claims.
  a-legacy  a non-CAE client (no ``enable_cae``, token without ``xms_cc``) of the same session: 200.
  (then the script revokes the session through the admin API, after the tokens' issue second)
  b         the CAE client calls again: the proxy answers 401 ``insufficient_claims`` with an
            ``nbf`` claims request; the policy asks the credential for a token with exactly those
            claims (``nbf`` value = the revocation time), retries once, and the retry gets 200.
  b-legacy  the non-CAE client calls again: 401 ``invalid_token``; the policy neither asks for a
            token nor retries (a client without cp1 never gets a claims challenge).
  c         the CAE client calls the step-up route: 401 ``insufficient_claims`` asking for
            ``acrs`` ``c1``; the policy re-acquires with those claims and the retry gets 200 (the
            upstream sees ``acrs`` ``c1``); a second call reuses the cached token.

Exit status: 0 when every expectation held, 1 when one did not (``FAIL`` lines say which), 2 on a
usage or setup error. Output: one ``ok <step>: ...`` or ``FAIL <step>: ...`` line per step, the
token requests and the exchanges on the wire indented below it, then ``RESULT <json>`` and a
summary line.

tests/e2e/interop.rs runs it against an in-process proxy over TLS. To run it by hand against the demo
(plain HTTP on loopback, so the script lets the policy send tokens without TLS):

    python3 -m venv /tmp/azvenv && /tmp/azvenv/bin/pip install azure-core requests
    cargo run -- demo            # in another terminal; leaves the demo running
    /tmp/azvenv/bin/python tests/e2e/interop/azure_sdk_cae.py \\
        --proxy http://127.0.0.1:29080 --issuer http://127.0.0.1:29101 \\
        --admin http://127.0.0.1:29901

or run the automated test: ``CAE_PYTHON=/tmp/azvenv/bin/python cargo test --test e2e interop``.
"""

import argparse
import base64
import json
import sys
import time
import uuid

try:
    import requests
    import azure.core
    from azure.core.credentials import AccessToken, AccessTokenInfo
    from azure.core.pipeline import Pipeline
    from azure.core.pipeline.policies import BearerTokenCredentialPolicy, SansIOHTTPPolicy
    from azure.core.pipeline.transport import RequestsTransport
    from azure.core.rest import HttpRequest
except ImportError as e:  # pragma: no cover - setup error
    print(f"SETUP: cannot import azure-core and requests: {e}", file=sys.stderr)
    sys.exit(2)


class SetupError(Exception):
    """Something outside the SDK's behaviour went wrong (issuer or admin API unreachable, ...)."""


def b64url_json(part):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def jwt_payload(token):
    return b64url_json(token.split(".")[1])


def describe(token):
    p = jwt_payload(token)
    return f"iat={p.get('iat')} sid={p.get('sid')} xms_cc={p.get('xms_cc')} acrs={p.get('acrs')}"


class IssuerClient:
    """Token requests to the development issuer, as an identity library would send them."""

    def __init__(self, issuer, sub, sid, session):
        self.issuer = issuer.rstrip("/")
        self.sub = sub
        self.sid = sid
        self.session = session

    def fetch(self, claims, enable_cae):
        form = {
            "sub": self.sub,
            "sid": self.sid,
            # azure-identity asks for the CP1 client capability only when CAE is enabled; an
            # empty xms_cc makes the development issuer leave the capability out of the token.
            "xms_cc": "cp1" if enable_cae else "",
        }
        if claims:
            form["claims"] = claims
        try:
            r = self.session.post(f"{self.issuer}/token", data=form, timeout=10)
        except requests.RequestException as e:
            raise SetupError(f"token endpoint {self.issuer}/token unreachable: {e}") from e
        if r.status_code != 200:
            raise SetupError(f"token endpoint answered {r.status_code}: {r.text}")
        body = r.json()
        token = body["access_token"]
        return token, int(jwt_payload(token)["exp"])


class DevIssuerCredential:
    """A credential with both methods, like azure-identity's: the policy should call
    ``get_token_info`` (the newer ``SupportsTokenInfo`` protocol)."""

    def __init__(self, client, name):
        self.client = client
        self.name = name
        self.calls = []

    def _record(self, method, scopes, claims, enable_cae, tenant_id):
        token, exp = self.client.fetch(claims, enable_cae)
        self.calls.append(
            {
                "method": method,
                "scopes": list(scopes),
                "claims": claims,
                "enable_cae": enable_cae,
                "tenant_id": tenant_id,
                "token": token,
            }
        )
        return token, exp

    def get_token_info(self, *scopes, options=None):
        options = dict(options or {})
        token, exp = self._record(
            "get_token_info",
            scopes,
            options.get("claims"),
            bool(options.get("enable_cae", False)),
            options.get("tenant_id"),
        )
        return AccessTokenInfo(token, exp, token_type="Bearer")

    def get_token(self, *scopes, claims=None, tenant_id=None, enable_cae=False, **kwargs):
        token, exp = self._record("get_token", scopes, claims, bool(enable_cae), tenant_id)
        return AccessToken(token, exp)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass


class LegacyDevIssuerCredential:
    """A credential with ``get_token`` only (the original ``TokenCredential`` protocol)."""

    def __init__(self, client, name):
        self._inner = DevIssuerCredential(client, name)
        self.name = name

    @property
    def calls(self):
        return self._inner.calls

    def get_token(self, *scopes, claims=None, tenant_id=None, enable_cae=False, **kwargs):
        return self._inner.get_token(
            *scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae, **kwargs
        )


class WireRecorder(SansIOHTTPPolicy):
    """Placed after the bearer policy: sees every request the policy sends, retries included."""

    def __init__(self):
        super().__init__()
        self.exchanges = []

    def on_response(self, request, response):
        auth = request.http_request.headers.get("Authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        self.exchanges.append(
            {
                "method": request.http_request.method,
                "url": request.http_request.url,
                "status": response.http_response.status_code,
                "www_authenticate": response.http_response.headers.get("WWW-Authenticate"),
                "token": token,
            }
        )


class Client:
    """One SDK-style client: a pipeline with the bearer policy, its credential and a recorder."""

    def __init__(self, name, credential, scope, enable_cae, transport_kwargs, enforce_https):
        self.name = name
        self.credential = credential
        self.recorder = WireRecorder()
        policy_kwargs = {"enable_cae": True} if enable_cae else {}
        self.policy = BearerTokenCredentialPolicy(credential, scope, **policy_kwargs)
        self.pipeline = Pipeline(
            transport=RequestsTransport(**transport_kwargs),
            policies=[self.policy, self.recorder],
        )
        self.enforce_https = enforce_https

    def get(self, url):
        calls_before = len(self.credential.calls)
        wire_before = len(self.recorder.exchanges)
        kwargs = {} if self.enforce_https else {"enforce_https": False}
        response = self.pipeline.run(HttpRequest("GET", url), **kwargs).http_response
        return (
            response,
            self.credential.calls[calls_before:],
            self.recorder.exchanges[wire_before:],
        )


def challenge_param(header, name):
    """A quoted parameter of a challenge, parsed independently of azure-core."""
    if not header:
        return None
    marker = f'{name}="'
    for part in header.split(", "):
        part = part.strip()
        if part.lower().startswith("bearer "):
            part = part[len("bearer ") :]
        if part.startswith(marker) and part.endswith('"'):
            return part[len(marker) : -1]
    return None


class Run:
    def __init__(self):
        self.passed = []
        self.failed = []
        self.result = {"azure_core": azure.core.__version__, "variants": {}}

    def step(self, step_id, expectations, summary, calls, wire):
        failures = [msg for ok, msg in expectations if not ok]
        if failures:
            self.failed.append(step_id)
            print(f"FAIL {step_id}: " + "; ".join(failures))
        else:
            self.passed.append(step_id)
            print(f"ok {step_id}: {summary}")
        for c in calls:
            print(
                f"    {c['method']}(scopes={c['scopes']}, claims={c['claims']!r}, "
                f"enable_cae={c['enable_cae']}) -> token {describe(c['token'])}"
            )
        for w in wire:
            challenge = f"  WWW-Authenticate: {w['www_authenticate']}" if w["www_authenticate"] else ""
            print(f"    {w['method']} {w['url']} -> {w['status']}{challenge}")
        sys.stdout.flush()


def call_record(c):
    return {k: c[k] for k in ("method", "scopes", "claims", "enable_cae")} | {
        "token_claims": jwt_payload(c["token"])
    }


def wire_record(w):
    return {"status": w["status"], "www_authenticate": w["www_authenticate"], "url": w["url"]}


def run_variant(run, args, variant, credential_class, expected_method, session):
    proxy = args.proxy.rstrip("/")
    api = proxy + args.api_path
    stepup = proxy + args.stepup_path
    scope = args.scope
    sid = f"interop-{variant}-{uuid.uuid4().hex[:12]}"
    sub = f"interop-{variant}"
    enforce_https = proxy.lower().startswith("https")
    transport_kwargs = {"use_env_settings": False}
    if args.ca_file:
        transport_kwargs["connection_verify"] = args.ca_file
    issuer_client = IssuerClient(args.issuer, sub, sid, session)
    cae = Client(
        "cae",
        credential_class(issuer_client, "cae"),
        scope,
        True,
        transport_kwargs,
        enforce_https,
    )
    legacy = Client(
        "legacy",
        credential_class(issuer_client, "legacy"),
        scope,
        False,
        transport_kwargs,
        enforce_https,
    )
    record = {"sid": sid, "sub": sub, "steps": {}}
    run.result["variants"][variant] = record

    def keep(step, response, calls, wire, **extra):
        record["steps"][step] = {
            "status": response.status_code,
            "calls": [call_record(c) for c in calls],
            "wire": [wire_record(w) for w in wire],
        } | extra

    # a: the CAE client's first call.
    r, calls, wire = cae.get(api)
    keep("a", r, calls, wire)
    run.step(
        f"{variant}/a",
        [
            (r.status_code == 200, f"expected 200, got {r.status_code}: {r.text()[:300]}"),
            (len(calls) == 1, f"expected 1 token request, got {len(calls)}"),
            (all(c["method"] == expected_method for c in calls), f"expected {expected_method}"),
            (all(c["claims"] is None for c in calls), "the first token request has no claims"),
            (all(c["enable_cae"] for c in calls), "the policy passed enable_cae=True"),
            (all(c["scopes"] == [scope] for c in calls), f"scopes are [{scope!r}]"),
            (
                all("cp1" in jwt_payload(c["token"]).get("xms_cc", []) for c in calls),
                "the CAE token carries xms_cc cp1",
            ),
        ],
        f"CAE client got 200 with a cp1 token from {expected_method}",
        calls,
        wire,
    )
    first_iat = max(jwt_payload(c["token"])["iat"] for c in calls) if calls else int(time.time())

    # a-legacy: the non-CAE client of the same session.
    r, calls, wire = legacy.get(api)
    keep("a-legacy", r, calls, wire)
    run.step(
        f"{variant}/a-legacy",
        [
            (r.status_code == 200, f"expected 200, got {r.status_code}: {r.text()[:300]}"),
            (len(calls) == 1, f"expected 1 token request, got {len(calls)}"),
            (all(not c["enable_cae"] for c in calls), "enable_cae is off without the keyword"),
            (
                all("xms_cc" not in jwt_payload(c["token"]) for c in calls),
                "the non-CAE token has no xms_cc",
            ),
        ],
        "non-CAE client got 200 with a token without xms_cc",
        calls,
        wire,
    )
    if calls:
        first_iat = max(first_iat, jwt_payload(calls[0]["token"])["iat"])

    # Revocation times have a one-second resolution and a token issued in the revocation's
    # second counts as issued after it: revoke only once the tokens' second has passed.
    while int(time.time()) <= first_iat:
        time.sleep(0.02)
    iss = jwt_payload(cae.credential.calls[0]["token"])["iss"] if cae.credential.calls else args.issuer
    headers = {"content-type": "application/json"}
    if args.admin_token:
        headers["authorization"] = f"Bearer {args.admin_token}"
    try:
        rr = session.post(
            args.admin.rstrip("/") + "/admin/revoke",
            data=json.dumps({"key": {"type": "session", "iss": iss, "sid": sid}}),
            headers=headers,
            timeout=10,
        )
    except requests.RequestException as e:
        raise SetupError(f"admin API unreachable: {e}") from e
    if rr.status_code != 200:
        raise SetupError(f"admin revoke answered {rr.status_code}: {rr.text}")
    revoked_at = int(rr.json()["stored"]["at"])
    record["revoked_at"] = revoked_at
    print(f"   revoked session {sid} of {iss} at {revoked_at} (tokens issued at {first_iat})")
    if revoked_at <= first_iat:
        raise SetupError(f"revocation time {revoked_at} is not after the tokens' iat {first_iat}")

    # b: the CAE client calls with its cached, now revoked token.
    expected_claims = {"access_token": {"nbf": {"essential": True, "value": str(revoked_at)}}}
    r, calls, wire = cae.get(api)
    first = wire[0] if wire else {}
    header = first.get("www_authenticate")
    encoded = challenge_param(header, "claims")
    try:
        decoded = base64.b64decode(encoded, validate=True).decode() if encoded else None
    except ValueError:
        decoded = None
    sdk_claims = calls[0]["claims"] if calls else None
    try:
        sdk_claims_json = json.loads(sdk_claims) if sdk_claims else None
    except ValueError:
        sdk_claims_json = None
    keep("b", r, calls, wire, expected_claims=expected_claims)
    run.step(
        f"{variant}/b",
        [
            (len(wire) == 2, f"expected 2 requests on the wire (401, retry), got {len(wire)}"),
            (first.get("status") == 401, f"the first answer is 401, got {first.get('status')}"),
            (
                bool(header) and 'error="insufficient_claims"' in header,
                f"the challenge has error=\"insufficient_claims\": {header!r}",
            ),
            (decoded is not None, f"claims is standard base64: {encoded!r}"),
            (len(calls) == 1, f"expected 1 token request, got {len(calls)}"),
            (all(c["method"] == expected_method for c in calls), f"expected {expected_method}"),
            (
                sdk_claims_json == expected_claims,
                f"the policy passed claims {sdk_claims!r}, expected {json.dumps(expected_claims)}",
            ),
            (sdk_claims == decoded, f"the policy passed the challenge's claims verbatim ({decoded!r})"),
            (all(c["enable_cae"] for c in calls), "the policy passed enable_cae=True"),
            (
                all(jwt_payload(c["token"])["iat"] >= revoked_at for c in calls),
                "the new token is issued at or after the revocation",
            ),
            (
                len(wire) == 2 and bool(calls) and wire[1]["token"] == calls[0]["token"],
                "the retry carries the new token",
            ),
            (r.status_code == 200, f"expected 200 after the retry, got {r.status_code}: {r.text()[:300]}"),
        ],
        f"401 insufficient_claims, {expected_method}(claims=<nbf {revoked_at}>), retry 200",
        calls,
        wire,
    )

    # b-legacy: a client without cp1 gets invalid_token and no claims challenge.
    r, calls, wire = legacy.get(api)
    header = wire[0]["www_authenticate"] if wire else None
    keep("b-legacy", r, calls, wire)
    run.step(
        f"{variant}/b-legacy",
        [
            (r.status_code == 401, f"expected 401, got {r.status_code}"),
            (
                bool(header) and 'error="invalid_token"' in header and "claims=" not in header,
                f"the challenge is invalid_token without claims: {header!r}",
            ),
            (len(calls) == 0, f"expected no token request, got {len(calls)}"),
            (len(wire) == 1, f"expected no retry, got {len(wire)} requests"),
        ],
        "401 invalid_token, the policy did not re-acquire nor retry",
        calls,
        wire,
    )

    # c: step-up route wants auth context c1.
    expected_claims = {"access_token": {"acrs": {"essential": True, "value": "c1"}}}
    r, calls, wire = cae.get(stepup)
    first = wire[0] if wire else {}
    header = first.get("www_authenticate")
    sdk_claims = calls[0]["claims"] if calls else None
    try:
        sdk_claims_json = json.loads(sdk_claims) if sdk_claims else None
    except ValueError:
        sdk_claims_json = None
    body = {}
    if r.status_code == 200:
        try:
            body = json.loads(r.text())
        except ValueError:
            body = {}
    upstream_acrs = (body.get("headers") or {}).get("x-user-acrs", "")
    # And the policy keeps the stepped-up token: the next call needs no new token.
    r2, calls2, wire2 = cae.get(stepup)
    keep(
        "c",
        r,
        calls,
        wire,
        expected_claims=expected_claims,
        upstream_acrs=upstream_acrs,
        reuse={
            "status": r2.status_code,
            "calls": [call_record(c) for c in calls2],
            "wire": [wire_record(w) for w in wire2],
        },
    )
    expectations = [
        (len(wire) == 2, f"expected 2 requests on the wire (401, retry), got {len(wire)}"),
        (first.get("status") == 401, f"the first answer is 401, got {first.get('status')}"),
        (
            bool(header) and 'error="insufficient_claims"' in header,
            f"the challenge has error=\"insufficient_claims\": {header!r}",
        ),
        (len(calls) == 1, f"expected 1 token request, got {len(calls)}"),
        (
            sdk_claims_json == expected_claims,
            f"the policy passed claims {sdk_claims!r}, expected {json.dumps(expected_claims)}",
        ),
        (
            all("c1" in jwt_payload(c["token"]).get("acrs", []) for c in calls),
            "the new token has acrs c1",
        ),
        (r.status_code == 200, f"expected 200 after the retry, got {r.status_code}: {r.text()[:300]}"),
        ("c1" in upstream_acrs, f"the upstream saw x-user-acrs c1, got {upstream_acrs!r}"),
    ]
    expectations += [
        (r2.status_code == 200, f"a second call got {r2.status_code}"),
        (len(calls2) == 0 and len(wire2) == 1, "a second call reuses the cached token"),
    ]
    run.step(
        f"{variant}/c",
        expectations,
        f"401 insufficient_claims (acrs c1), {expected_method}(claims=<acrs c1>), retry 200; "
        "the next call reuses the token",
        calls + calls2,
        wire + wire2,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--proxy", required=True, help="proxy listener base URL (https:// or http://)")
    p.add_argument("--issuer", required=True, help="development issuer URL (POST {issuer}/token)")
    p.add_argument("--admin", required=True, help="admin API base URL (POST {admin}/admin/revoke)")
    p.add_argument("--admin-token", default=None, help="admin API bearer token, if it needs one")
    p.add_argument("--ca-file", default=None, help="CA certificate (PEM) to verify the proxy with")
    p.add_argument("--api-path", default="/api/orders", help="a route with revocation checks")
    p.add_argument("--stepup-path", default="/api/admin/settings", help="a route needing acrs c1")
    p.add_argument("--scope", default="api://cae-demo/.default", help="scope the policy asks for")
    args = p.parse_args()

    print(f"azure-core {azure.core.__version__} (Python {sys.version.split()[0]}), proxy {args.proxy}")
    if not args.proxy.lower().startswith("https"):
        print("   note: plain-HTTP proxy URL, requests run with enforce_https=False")
    session = requests.Session()
    session.trust_env = False
    run = Run()
    try:
        run_variant(run, args, "token_info", DevIssuerCredential, "get_token_info", session)
        run_variant(run, args, "token", LegacyDevIssuerCredential, "get_token", session)
    except SetupError as e:
        print(f"SETUP: {e}")
        return 2
    except Exception as e:  # the SDK raised: that is a failed expectation, say where
        import traceback

        traceback.print_exc()
        print(f"FAIL exception: {type(e).__name__}: {e}")
        run.failed.append("exception")
    run.result["passed"] = run.passed
    run.result["failed"] = run.failed
    print("RESULT " + json.dumps(run.result, sort_keys=True))
    total = len(run.passed) + len(run.failed)
    if run.failed:
        print(f"interop FAILED: {len(run.failed)} of {total} steps failed: {', '.join(run.failed)}")
        return 1
    print(f"interop ok: all {total} steps passed with azure-core {azure.core.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
