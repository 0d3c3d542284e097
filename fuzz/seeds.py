#!/usr/bin/env python3
"""Writes the fuzz seed corpus: fuzz/corpus/<target>/<name>, one call per file.

Sources, all in this repository: every body in the e2e tests (http-edge/tests/e2e/*.rs: the spec's
examples, the carriers' real payloads, the bad inputs) and the signature test vectors
(http-edge/tests/fixtures/*.json). Each becomes calls for every carrier target, unsigned and
signed with the fuzzing secrets of fuzz/src/lib.rs, so the fuzzer starts past every verifier.
The signatures use the current time (MessageBird timestamps and JWTs), so run this right before
fuzzing; `.ci/security.sh` does. Standard library only.

    python3 fuzz/seeds.py            # from anywhere
"""

import base64
import hashlib
import hmac
import json
import re
import shutil
import time
import urllib.parse
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "corpus"

# Keep in step with fuzz/src/lib.rs `secrets`.
PUBLIC_BASE_URL = "https://hooks.example.com"
BANDWIDTH_BASIC = "fuzz-user:fuzz-pass"
BANDWIDTH_KEY = b"fuzz-bandwidth-key"
TWILIO_TOKEN = b"fuzz-twilio-token"
MESSAGEBIRD_KEY = b"fuzz-messagebird-key"
INTELIQUENT_TOKEN = "fuzz-inteliquent-token"
INTELIQUENT_KEY = b"fuzz-inteliquent-key"


def call(method, target, headers, body=b""):
    """The input format of fuzz/src/lib.rs: request line, headers, blank line, raw body."""
    head = [f"{method} {target}"] + [f"{k}: {v}" for k, v in headers]
    return ("\n".join(head) + "\n\n").encode() + body


def body_hmac(key, body):
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def content_type(body):
    return "application/json" if body.lstrip()[:1] in (b"{", b"[") else (
        "application/x-www-form-urlencoded")


def rust_bodies():
    """Raw string literals (r#"…"#) and form-like plain literals of the e2e tests."""
    bodies = {}
    for path in sorted((ROOT / "http-edge" / "tests" / "e2e").glob("*.rs")):
        text = path.read_text()
        for i, m in enumerate(re.finditer(r'r#"(.*?)"#', text, re.S)):
            bodies[f"{path.stem}-raw{i}"] = m.group(1).encode()
        for i, m in enumerate(re.finditer(r'"((?:[A-Za-z0-9_]+=[^"&\s]*&)+[A-Za-z0-9_]+=[^"&\s]*)"', text)):
            bodies[f"{path.stem}-form{i}"] = m.group(1).encode()
    return bodies


def twilio_signature(url, params):
    s = url
    for name in sorted({n for n, _ in params}):
        for value in sorted({v for n, v in params if n == name}):
            s += name + value
    return base64.b64encode(hmac.new(TWILIO_TOKEN, s.encode(), hashlib.sha1).digest()).decode()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def messagebird_jwt(url, body, now):
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"iss": "MessageBird", "nbf": now - 60, "exp": now + 10 * 365 * 86400,
              "jti": str(uuid.uuid4()), "url_hash": hashlib.sha256(url.encode()).hexdigest()}
    if body:
        claims["payload_hash"] = hashlib.sha256(body).hexdigest()
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    mac = hmac.new(MESSAGEBIRD_KEY, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(mac)


def messagebird_legacy(query, body, now):
    params = urllib.parse.parse_qsl(query, keep_blank_values=True)
    canonical = urllib.parse.urlencode(sorted(params))
    msg = str(now).encode() + b"\n" + canonical.encode() + b"\n" + hashlib.sha256(body).digest()
    return str(now), base64.b64encode(hmac.new(MESSAGEBIRD_KEY, msg, hashlib.sha256).digest()).decode()


def main():
    now = int(time.time())
    bodies = rust_bodies()
    forms = {}  # name -> (query target suffix, params) for Twilio / MessageBird
    twilio = json.loads((ROOT / "http-edge/tests/fixtures/twilio_vectors.json").read_text())
    for v in twilio["vectors"]:
        url = urllib.parse.urlsplit(v["request_url"])
        target = urllib.parse.quote(url.path or "/", safe="/%") + (
            "?" + urllib.parse.quote(url.query, safe="=&%+'") if url.query else "")
        params = [(p[0], p[1] if p[1] is not None else "") for p in (v.get("params") or [])]
        forms[f"twilio-vector-{v['id']}"] = (target, params, (v.get("body") or "").encode())
    mb = json.loads((ROOT / "http-edge/tests/fixtures/messagebird_vectors.json").read_text())
    for v in mb["legacy_hmac"]["vectors"]:
        query = urllib.parse.urlencode([tuple(p) for p in v.get("query_params") or []])
        bodies[f"mb-legacy-{v['id']}"] = (v.get("body") or "").encode()
        forms[f"mb-legacy-{v['id']}"] = ("/messagebird" + ("?" + query if query else ""), [],
                                         (v.get("body") or "").encode())

    targets = {name: {} for name in ("bandwidth", "twilio", "messagebird", "inteliquent")}
    for name, body in bodies.items():
        ct = [("Content-Type", content_type(body))]
        basic = "Basic " + base64.b64encode(BANDWIDTH_BASIC.encode()).decode()
        bw = targets["bandwidth"]
        bw[f"{name}-unsigned"] = call("POST", "/bandwidth/1", ct, body)
        bw[f"{name}-basic"] = call("POST", "/bandwidth/1", ct + [("Authorization", basic)], body)
        bw[f"{name}-signed"] = call("POST", "/bandwidth/1", ct + [
            ("Authorization", basic), ("X-Bandwidth-Signature", body_hmac(BANDWIDTH_KEY, body))], body)
        iq = targets["inteliquent"]
        iq[f"{name}-unsigned"] = call("POST", "/webhooks/inteliquent", ct, body)
        iq[f"{name}-signed"] = call("POST", "/webhooks/inteliquent", ct + [
            ("Authorization", f"Bearer {INTELIQUENT_TOKEN}"),
            ("X-Inteliquent-Signature", body_hmac(INTELIQUENT_KEY, body))], body)
        mbird = targets["messagebird"]
        mb_headers = ct + [("Host", "hooks.example.com"), ("X-Forwarded-Proto", "https")]
        url = PUBLIC_BASE_URL + "/messagebird"
        mbird[f"{name}-jwt"] = call("POST", "/messagebird", mb_headers + [
            ("MessageBird-Signature-JWT", messagebird_jwt(url, body, now))], body)
        ts, sig = messagebird_legacy("", body, now)
        mbird[f"{name}-legacy"] = call("POST", "/messagebird", mb_headers + [
            ("MessageBird-Signature", sig), ("MessageBird-Request-Timestamp", ts)], body)
        mbird[f"{name}-sha256"] = call("POST", "/messagebird", mb_headers + [
            ("MessageBird-Signature", body_hmac(MESSAGEBIRD_KEY, body))], body)
        tw = targets["twilio"]
        if ct[0][1] == "application/x-www-form-urlencoded":
            params = urllib.parse.parse_qsl(body.decode(errors="replace"), keep_blank_values=True)
            tw[f"{name}-post"] = call("POST", "/twilio", ct + [
                ("X-Twilio-Signature", twilio_signature(PUBLIC_BASE_URL + "/twilio", params))], body)
            target = "/twilio?" + body.decode(errors="replace")
            tw[f"{name}-get"] = call("GET", target, [
                ("X-Twilio-Signature", twilio_signature(PUBLIC_BASE_URL + target, []))])
            target = "/messagebird?" + body.decode(errors="replace")
            ts, sig = messagebird_legacy(body.decode(errors="replace"), b"", now)
            mbird[f"{name}-get-legacy"] = call("GET", target, [
                ("MessageBird-Signature", sig), ("MessageBird-Request-Timestamp", ts)])
            mbird[f"{name}-get-jwt"] = call("GET", target, [
                ("Host", "hooks.example.com"), ("X-Forwarded-Proto", "https"),
                ("MessageBird-Signature-JWT", messagebird_jwt(PUBLIC_BASE_URL + target, b"", now))])
        else:
            digest = hashlib.sha256(body).hexdigest()
            target = f"/twilio?bodySHA256={digest}"
            tw[f"{name}-json"] = call("POST", target, ct + [
                ("X-Twilio-Signature", twilio_signature(PUBLIC_BASE_URL + target, []))], body)
    for name, (target, params, body) in forms.items():
        if name.startswith("twilio-"):
            target = "/twilio" + target
            form = urllib.parse.urlencode(params).encode() if params else body
            targets["twilio"][name] = call("POST", target, [
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("X-Twilio-Signature", twilio_signature(PUBLIC_BASE_URL + target, params))], form)
        else:
            query = target.partition("?")[2]
            ts, sig = messagebird_legacy(query, body, now)
            targets["messagebird"][name] = call("GET" if not body else "POST", target, [
                ("Content-Type", content_type(body)),
                ("MessageBird-Signature", sig), ("MessageBird-Request-Timestamp", ts)], body)

    shutil.rmtree(OUT, ignore_errors=True)
    for target, seeds in targets.items():
        out = OUT / target
        out.mkdir(parents=True)
        for name, data in seeds.items():
            (out / re.sub(r"[^A-Za-z0-9_.-]", "_", name)).write_bytes(data)
        print(f"fuzz/seeds.py: {len(seeds)} seeds for {target}")


if __name__ == "__main__":
    main()
