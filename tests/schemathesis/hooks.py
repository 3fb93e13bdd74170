"""Schemathesis hooks for ecsd (loaded through SCHEMATHESIS_HOOKS by tests/schemathesis/run).

Every request is signed SDK-HMAC-SHA256 with the dev AK/SK by the official
Huawei SDK's own signer (huaweicloudsdkcore), over exactly what goes on the
wire: the signing happens in a `requests` auth hook, i.e. on the final
PreparedRequest (method, encoded path, encoded query, headers, body bytes),
after schemathesis has serialized the case.

So that the handlers are reached, most cases get the dev project as
`project_id` and real server ids (from the credentials file, which lists the
dev fleet) as `server_id` and in request bodies; job and reset request ids
that ecsd answered are fed back into later `job_id` / `request_id`
parameters. A deterministic share of cases keeps the generated values (a
foreign project must be a documented 400 Ecs.0023, an unknown server a 404...).

IAM operations (`/v3`) get fresh tokens of the dev user (its password is in
the credentials file) in most cases, and valid bodies in half of them.

Environment: ECSD_CREDENTIALS, the `--dev` credentials file (endpoint,
project_id, ak, sk, ca_file, servers, domain, user, password).
"""

import json
import os
import zlib
from datetime import datetime, timezone
from urllib.parse import unquote, urlsplit

import requests
import schemathesis
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer

with open(os.environ["ECSD_CREDENTIALS"], encoding="utf-8") as f:
    CREDS = json.load(f)
PROJECT = CREDS["project_id"]
SERVERS = [s["id"] for s in CREDS.get("servers", [])]
SIGNER = Signer(BasicCredentials(CREDS["ak"], CREDS["sk"], PROJECT))
# Satisfies the password rules of every OS (contract §2.4).
STRONG_PASSWORD = "Qz7!mKp2@vXw9tLr"

# Ids ecsd handed out during this run (after_call), offered to later cases.
SEEN = {"job_id": [], "request_id": ["latest"]}


def _pick(value, n):
    """A deterministic choice in range(n) from a generated value, so a case
    replays identically when schemathesis re-runs it (shrinking, flakiness
    checks)."""
    try:
        text = json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return zlib.crc32(text.encode()) % n


def _real_server(generated, salt):
    """A real server id for 4 of 5 generated values; the generated one otherwise."""
    k = _pick([salt, generated], 5 * max(len(SERVERS), 1))
    return SERVERS[k % len(SERVERS)] if SERVERS and k < 4 * len(SERVERS) else generated


def _fix_server_list(servers, key):
    if isinstance(servers, list):
        for i, entry in enumerate(servers):
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                entry["id"] = _real_server(entry["id"], [key, i])


class SdkHmacSha256(requests.auth.AuthBase):
    """Signs the final PreparedRequest with the SDK's Signer (as tests/sdk/conftest.py does)."""

    def __call__(self, r):
        url = urlsplit(r.url)
        # The query as the server reads it: split on & and =, percent-decoded
        # ('+' stays '+', as in ecs-sign); the signer re-encodes and sorts.
        query = []
        for part in url.query.split("&"):
            if part:
                k, _, v = part.partition("=")
                query.append((unquote(k), unquote(v)))
        date = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        r.headers["X-Sdk-Date"] = date
        r.headers["X-Project-Id"] = PROJECT
        signed = {"Host": url.netloc, "X-Sdk-Date": date, "X-Project-Id": PROJECT}
        content_type = r.headers.get("Content-Type")
        if content_type and content_type.startswith("application/json"):
            signed["Content-Type"] = content_type
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        req = SdkRequest(method=r.method, schema=url.scheme, host=url.netloc, resource_path=url.path,
                         uri=url.path, query_params=query, header_params=dict(signed), body=body)
        r.headers["Authorization"] = SIGNER.sign(req).header_params["Authorization"]
        return r


AUTH = SdkHmacSha256()


def _login_body():
    """A valid password login of the dev user (dev-credentials.json) to the dev project."""
    return {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "domain": {"name": CREDS["domain"]}, "name": CREDS["user"], "password": CREDS["password"]}}},
        "scope": {"project": {"id": PROJECT}}}}


def _fresh_token():
    """A new token of the dev user (each case may revoke its own)."""
    r = requests.post(CREDS["endpoint"] + "/v3/auth/tokens", json=_login_body(),
                      verify=CREDS.get("ca_file"), timeout=30)
    return r.headers.get("X-Subject-Token")


def _iam_case(case, key):
    """IAM operations: most cases get real tokens and half the bodies are valid, so that the
    201/200/204 answers are checked too, not only the 401s."""
    if case.path == "/v3/auth/tokens" and case.method == "POST":
        if isinstance(case.body, dict) and key % 2 == 0 and CREDS.get("password"):
            case.body = _login_body()
        return
    if key % 5 == 0 or not CREDS.get("password"):
        return
    token = _fresh_token()
    if not token:
        return
    if case.headers is None:
        case.headers = {}
    case.headers["X-Auth-Token"] = token
    if case.path == "/v3/auth/tokens":
        case.headers["X-Subject-Token"] = token
    elif isinstance(case.body, dict) and (key >> 3) % 2 == 0:
        case.body = {"auth": {"identity": {"methods": ["token"], "token": {"duration_seconds": 900}}}}


@schemathesis.hook
def before_call(context, case, kwargs):
    # One deterministic number per generated case (before we change it) picks what to replace.
    key = _pick([case.method, case.path, case.path_parameters, case.query,
                 case.body if isinstance(case.body, (dict, list, str, int, float, bool)) else None], 1 << 30)
    path = case.path_parameters
    if path is not None:
        # 9 of 10 cases in the dev project; the rest keep the generated (foreign) one,
        # which ecsd must refuse as documented (400 Ecs.0023).
        if "project_id" in path and key % 10 != 0:
            path["project_id"] = PROJECT
        if "server_id" in path:
            path["server_id"] = _real_server(path["server_id"], key)
        for name in ("job_id", "request_id"):
            if name in path and SEEN[name] and key % 3 != 0:
                seen = SEEN[name]
                path[name] = seen[(key // 3) % len(seen)]
    if case.query and isinstance(case.query.get("server_id"), str) and key % 2 == 0:
        case.query["server_id"] = _real_server(case.query["server_id"], key)
    # `wait` (our long poll on outcomes and jobs, 0-50 s): a valid value is cut to 0 s (1 s in
    # one case of ten) so that the run does not sleep through hundreds of waits on resets the
    # dev fleet never completes; invalid values go as generated (400 Ecs.0005).
    if case.query and "wait" in case.query:
        wait = str(case.query["wait"])
        # ASCII digits only: str.isdigit() is also true for '³', which int() refuses.
        if wait.isascii() and wait.isdigit() and int(wait) <= 50:
            case.query["wait"] = "1" if key % 10 == 0 else "0"
    # `seconds` (the life of our event streams, 0-600 s; absent: 600): a valid or absent value
    # is cut to 0 s (the current state only; 1 s in one case of ten) for the same reason.
    if case.path.endswith("/events"):
        if case.query is None:
            case.query = {}
        seconds = str(case.query.get("seconds", "0"))
        if seconds.isascii() and seconds.isdigit() and int(seconds) <= 600:
            case.query["seconds"] = "1" if key % 10 == 0 else "0"
    body = case.body
    if isinstance(body, dict):
        _fix_server_list(body.get("servers"), key)
        for action in ("os-start", "os-stop", "reboot"):
            if isinstance(body.get(action), dict):
                _fix_server_list(body[action].get("servers"), key)
        # Half the reset bodies get a password that passes the rules (and a valid `apply`),
        # so that the request reaches the per-server checks and the store.
        holder = body.get("reset-password") if isinstance(body.get("reset-password"), dict) else body
        if isinstance(holder.get("new_password"), str) and (key >> 4) % 2 == 0:
            holder["new_password"] = STRONG_PASSWORD
            if isinstance(body.get("apply"), str):
                body["apply"] = "now"
    if case.path.startswith("/v3"):
        _iam_case(case, key)
    kwargs["auth"] = AUTH


TRACE = open(os.environ["SCHEMATHESIS_TRACE"], "a", encoding="utf-8") if os.environ.get("SCHEMATHESIS_TRACE") else None


@schemathesis.hook
def after_call(context, case, response):
    if TRACE:  # SCHEMATHESIS_TRACE=file: one line per call (operation, status, the answer's start)
        print(case.method, case.path, response.status_code, json.dumps(case.body, default=str)[:200],
              "->", response.text[:200], file=TRACE, flush=True)
    if response.status_code not in (200, 201):
        return
    try:
        data = response.json()
    except Exception:
        return
    if not isinstance(data, dict):
        return
    # A batch reset's id is its X-Request-Id (the Huawei body has none).
    if case.operation.label.startswith("PUT") and case.path.endswith("/os-reset-passwords"):
        rid = response.headers.get("x-request-id") or response.headers.get("X-Request-Id")
        if isinstance(rid, list):
            rid = rid[0] if rid else None
        if isinstance(rid, str) and rid not in SEEN["request_id"] and len(SEEN["request_id"]) < 50:
            SEEN["request_id"].append(rid)
    for key, bucket in (("job_id", "job_id"), ("request_id", "request_id")):
        value = data.get(key)
        if isinstance(value, str) and value not in SEEN[bucket] and len(SEEN[bucket]) < 50:
            SEEN[bucket].append(value)
