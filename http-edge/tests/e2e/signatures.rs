//! Carrier signatures end to end, through the running edge: for each carrier and scheme a
//! correctly signed call is accepted and spooled; the same call with one byte of the body, a
//! parameter, the URL, the timestamp or the signature changed is rejected and spools nothing.
//! Signatures are computed here independently of the edge's own code, the way each carrier
//! documents them. The test client is 127.0.0.1, so its `Host` is never the public URL.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::{harness::Edge, servers::free_port, spec::BANDWIDTH_INBOUND};

pub(crate) const PUBLIC: &str = "https://hooks.example.com";

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Twilio: base64 HMAC-SHA1(token, url + each name+value, names sorted, values sorted).
pub(crate) fn twilio_signature(token: &str, url: &str, form: &str) -> String {
    let mut params: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes())
        .into_owned()
        .collect();
    params.sort();
    params.dedup();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(url.as_bytes());
    for (k, v) in &params {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// MessageBird legacy: base64 HMAC-SHA256(key, ts \n sorted query \n sha256(body) raw).
pub(crate) fn messagebird_legacy(key: &str, ts: i64, query: &str, body: &[u8]) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let canonical = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&pairs)
        .finish();
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{ts}\n{canonical}\n").as_bytes());
    mac.update(&Sha256::digest(body));
    STANDARD.encode(mac.finalize().into_bytes())
}

/// MessageBird JWT (HS256), valid from `nbf` for 60 s.
fn messagebird_jwt(key: &str, url: &str, body: &[u8], nbf: i64) -> String {
    let mut claims = serde_json::json!({
        "iss": "MessageBird",
        "nbf": nbf,
        "exp": nbf + 60,
        "jti": format!("jti-{nbf}-{}", body.len()),
        "url_hash": hex::encode(Sha256::digest(url.as_bytes())),
    });
    if !body.is_empty() {
        claims["payload_hash"] = hex::encode(Sha256::digest(body)).into();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// `sha256=<hex>` of HMAC-SHA256(key, body): X-Bandwidth-Signature, X-Inteliquent-Signature,
/// and the generic MessageBird-Signature form.
fn body_hmac(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The same text with the byte at `i` replaced by the next letter or digit.
fn one_byte(s: &str, i: usize) -> String {
    let mut b = s.as_bytes().to_vec();
    b[i] = match b[i] {
        b'z' => b'a',
        b'Z' => b'A',
        b'9' => b'0',
        c if c.is_ascii_alphanumeric() => c + 1,
        _ => b'x',
    };
    String::from_utf8(b).unwrap()
}

/// Sends a request; returns the status.
async fn send(
    edge: &Edge,
    method: reqwest::Method,
    target: &str,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> u16 {
    edge.request(method, target, content_type, headers, body.to_owned())
        .await
        .status()
        .as_u16()
}

/// Asserts `status` is one of `want` and that nothing more was spooled than `spooled`.
fn rejected(edge: &Edge, what: &str, status: u16, want: &[u16], spooled: usize) {
    assert!(
        want.contains(&status),
        "{what}: got {status}, want {want:?}\n{}",
        edge.log()
    );
    assert_eq!(
        edge.spooled_count(),
        spooled,
        "{what}: a rejected call was spooled"
    );
}

fn assert_log_clean(edge: &Edge, secrets: &[&str]) {
    let log = edge.log();
    for s in secrets {
        assert!(!log.contains(s), "{s:?} leaked into the log");
    }
}

const FORM: &str = "MessageSid=SMsig1&AccountSid=AC0123456789abcdef0123456789abcdef&From=%2B15559876543&To=%2B15551234567&Body=Hello+there&NumMedia=0";

async fn twilio_post(edge: &Edge, target: &str, form: &str, signature: Option<&str>) -> u16 {
    let headers: Vec<(&str, &str)> = signature
        .map(|s| vec![("x-twilio-signature", s)])
        .unwrap_or_default();
    send(
        edge,
        reqwest::Method::POST,
        target,
        Some("application/x-www-form-urlencoded"),
        &headers,
        form,
    )
    .await
}

#[tokio::test]
async fn twilio_signed_form_accepted_tampering_rejected_tokens_rotate() {
    let edge = Edge::start(
        &["--public-base-url", &format!("{PUBLIC}/")],
        &[(
            "INGEST_TWILIO_AUTH_TOKENS",
            "old-twilio-token,new-twilio-token",
        )],
    )
    .await;
    let target = "/twilio?tenant=a%20b&x=y*z";
    let url = format!("{PUBLIC}{target}");
    let sig = twilio_signature("old-twilio-token", &url, FORM);

    // Tampered or unsigned: 401, nothing spooled.
    let body_byte = FORM.replace("Hello+there", "Hello+therf");
    let extra_param = format!("{FORM}&SmsStatus=received");
    let changed_param = FORM.replace("%2B15559876543", "%2B15559876544");
    for (what, target, form, sig) in [
        ("no signature", target, FORM, None),
        (
            "one body byte",
            target,
            body_byte.as_str(),
            Some(sig.clone()),
        ),
        ("extra parameter", target, &extra_param, Some(sig.clone())),
        (
            "changed parameter",
            target,
            &changed_param,
            Some(sig.clone()),
        ),
        (
            "other query",
            "/twilio?tenant=a%20c&x=y*z",
            FORM,
            Some(sig.clone()),
        ),
        ("no query", "/twilio", FORM, Some(sig.clone())),
        ("one signature byte", target, FORM, Some(one_byte(&sig, 3))),
    ] {
        let status = twilio_post(&edge, target, form, sig.as_deref()).await;
        rejected(&edge, what, status, &[401], 0);
    }
    // Signed over the URL the edge itself sees (its Host), not the public one: rejected.
    let local = format!("{}{target}", edge.base);
    let status = twilio_post(
        &edge,
        target,
        FORM,
        Some(&twilio_signature("old-twilio-token", &local, FORM)),
    )
    .await;
    rejected(&edge, "signed over the internal URL", status, &[401], 0);

    assert_eq!(twilio_post(&edge, target, FORM, Some(&sig)).await, 200);
    assert_eq!(edge.spooled_count(), 1);
    // The new token, on another message, while both are configured.
    let second = FORM.replace("SMsig1", "SMsig2");
    let sig2 = twilio_signature("new-twilio-token", &url, &second);
    assert_eq!(twilio_post(&edge, target, &second, Some(&sig2)).await, 200);
    assert_eq!(edge.spooled_count(), 2);
    // Twilio signs some calls with the default port spelled out.
    let third = FORM.replace("SMsig1", "SMsig3");
    let with_port = format!("https://hooks.example.com:443{target}");
    let sig3 = twilio_signature("new-twilio-token", &with_port, &third);
    assert_eq!(twilio_post(&edge, target, &third, Some(&sig3)).await, 200);
    assert_eq!(edge.spooled_count(), 3);

    let log = edge.log();
    assert!(
        log.contains("X-Twilio-Signature HMAC-SHA1 (2 auth token(s))"),
        "{log}"
    );
    assert!(
        log.contains("X-Twilio-Signature does not match"),
        "rejections are logged with their reason"
    );
    assert_log_clean(&edge, &["old-twilio-token", "new-twilio-token", &sig]);
}

#[tokio::test]
async fn twilio_behind_a_trusted_proxy_uses_forwarded_host() {
    let edge = Edge::start(
        &["--trusted-proxies", "127.0.0.1,::1"],
        &[
            ("INGEST_TWILIO_AUTH_TOKENS", "proxy-token"),
            (
                "INGEST_TWILIO_ACCOUNT_SIDS",
                "AC0123456789abcdef0123456789abcdef",
            ),
        ],
    )
    .await;
    let url = "https://public.example.org/twilio";
    let sig = twilio_signature("proxy-token", url, FORM);
    let forwarded = [
        ("x-twilio-signature", sig.as_str()),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "public.example.org"),
    ];
    let post = async |headers: &[(&str, &str)], form: &str| {
        send(
            &edge,
            reqwest::Method::POST,
            "/twilio",
            Some("application/x-www-form-urlencoded"),
            headers,
            form,
        )
        .await
    };
    // Without the forwarding headers the edge sees http://127.0.0.1:PORT: not what was signed.
    rejected(
        &edge,
        "no forwarding headers",
        post(&forwarded[..1], FORM).await,
        &[401],
        0,
    );
    let wrong_host = [
        forwarded[0],
        forwarded[1],
        ("x-forwarded-host", "other.example.org"),
    ];
    rejected(
        &edge,
        "other forwarded host",
        post(&wrong_host, FORM).await,
        &[401],
        0,
    );
    // A leftmost entry is what the client wrote; only the proxy's own (last) entry counts.
    let spoofed_first = [
        forwarded[0],
        forwarded[1],
        ("x-forwarded-host", "other.example.org, public.example.org"),
    ];
    assert_eq!(post(&spoofed_first, FORM).await, 200);
    assert_eq!(edge.spooled_count(), 1);
    let spoofed_last = [
        forwarded[0],
        forwarded[1],
        ("x-forwarded-host", "public.example.org, other.example.org"),
    ];
    rejected(
        &edge,
        "proxy's entry names another host",
        post(&spoofed_last, FORM).await,
        &[401],
        1,
    );

    // RFC 7239 Forwarded, too.
    let second = FORM.replace("SMsig1", "SMsig2");
    let sig2 = twilio_signature("proxy-token", url, &second);
    let rfc = [
        ("x-twilio-signature", sig2.as_str()),
        (
            "forwarded",
            "for=203.0.113.7;proto=https;host=public.example.org",
        ),
    ];
    assert_eq!(post(&rfc, &second).await, 200);
    assert_eq!(edge.spooled_count(), 2);

    // Genuine, but from an account not in --twilio-account-sids: 403.
    let other = FORM
        .replace("SMsig1", "SMsig3")
        .replace("AC0123456789abcdef0123456789abcdef", "AC9999");
    let sig3 = twilio_signature("proxy-token", url, &other);
    let headers = [
        ("x-twilio-signature", sig3.as_str()),
        forwarded[1],
        forwarded[2],
    ];
    rejected(
        &edge,
        "other account",
        post(&headers, &other).await,
        &[403],
        2,
    );
    assert!(edge.log().contains("AccountSid restricted to 1 account(s)"));
}

#[tokio::test]
async fn twilio_forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let edge = Edge::start(
        &[
            "--public-base-url",
            PUBLIC,
            "--trusted-proxies",
            "10.0.0.0/8",
        ],
        &[("INGEST_TWILIO_AUTH_TOKENS", "proxy-token")],
    )
    .await;
    let spoofed_url = "https://attacker.example/twilio";
    let sig = twilio_signature("proxy-token", spoofed_url, FORM);
    let headers = [
        ("x-twilio-signature", sig.as_str()),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "attacker.example"),
    ];
    let status = send(
        &edge,
        reqwest::Method::POST,
        "/twilio",
        Some("application/x-www-form-urlencoded"),
        &headers,
        FORM,
    )
    .await;
    rejected(
        &edge,
        "forwarded host from untrusted peer",
        status,
        &[401],
        0,
    );
    // Signed over the configured public URL, the same headers change nothing.
    let sig = twilio_signature("proxy-token", &format!("{PUBLIC}/twilio"), FORM);
    let headers = [("x-twilio-signature", sig.as_str()), headers[1], headers[2]];
    let status = send(
        &edge,
        reqwest::Method::POST,
        "/twilio",
        Some("application/x-www-form-urlencoded"),
        &headers,
        FORM,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(edge.spooled_count(), 1);
}

/// Runs the binary with `env` until it exits (it must, within 15 s); returns code and stderr.
fn run_to_exit(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_http-edge"))
        .args([
            "--embedded-core",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .args(["--grpc-listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(dir.path().join("spool"))
        .env_clear()
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("http-edge did not exit on a configuration error");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), std::fs::read_to_string(stderr).unwrap())
}

#[test]
fn url_signing_schemes_without_a_public_url_refuse_to_start() {
    let (code, stderr) = run_to_exit(&[("INGEST_TWILIO_AUTH_TOKENS", "refuse-token")]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("Twilio signatures cover the public URL"),
        "{stderr}"
    );
    let (code, stderr) = run_to_exit(&[("INGEST_MESSAGEBIRD_SIGNING_KEYS", "refuse-key")]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("MessageBird JWT signatures"), "{stderr}");
    let (code, stderr) = run_to_exit(&[
        ("INGEST_TWILIO_AUTH_TOKENS", "refuse-token"),
        ("INGEST_PUBLIC_BASE_URL", PUBLIC),
        ("INGEST_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("INGEST_TWILIO_ACCOUNT_SIDS", "refuse-token"),
    ]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--trusted-proxies"), "{stderr}");
    assert!(stderr.contains("--twilio-account-sids"), "{stderr}");
    assert!(!stderr.contains("refuse-token"), "{stderr}");
}

const MB_JSON: &str = r#"{"id":"mb-sig-1","recipient":"31612345678","originator":"31698765432","body":"hi","createdDatetime":"2024-01-15T10:30:00+00:00"}"#;
const MB_QUERY: &str = "id=mb-sig-get&recipient=31612345678&originator=31698765432&body=hello+there&createdDatetime=2024-01-15T10%3A30%3A00%2B00%3A00";

#[tokio::test]
async fn messagebird_jwt_legacy_and_body_hmac_end_to_end() {
    let edge = Edge::start(
        &["--public-base-url", PUBLIC],
        &[("INGEST_MESSAGEBIRD_SIGNING_KEYS", "old-mb-key,new-mb-key")],
    )
    .await;
    let post = async |target: &str, headers: &[(&str, &str)], body: &str| {
        send(
            &edge,
            reqwest::Method::POST,
            target,
            Some("application/json"),
            headers,
            body,
        )
        .await
    };
    let get = async |target: &str, headers: &[(&str, &str)]| {
        send(&edge, reqwest::Method::GET, target, None, headers, "").await
    };
    let t = now();
    let mut spooled = 0;

    // --- JWT, JSON POST
    let url = format!("{PUBLIC}/messagebird");
    let jwt = messagebird_jwt("old-mb-key", &url, MB_JSON.as_bytes(), t);
    let h = |token: &str| vec![("messagebird-signature-jwt", token.to_owned())];
    let body_byte = MB_JSON.replace("\"hi\"", "\"hj\"");
    let expired = messagebird_jwt("old-mb-key", &url, MB_JSON.as_bytes(), t - 200);
    let other_url = messagebird_jwt("old-mb-key", &format!("{url}?x=1"), MB_JSON.as_bytes(), t);
    for (what, target, token, body) in [
        (
            "jwt: one body byte",
            "/messagebird",
            jwt.clone(),
            body_byte.as_str(),
        ),
        ("jwt: other URL", "/messagebird?x=2", jwt.clone(), MB_JSON),
        (
            "jwt: signed for another URL",
            "/messagebird",
            other_url,
            MB_JSON,
        ),
        (
            "jwt: one signature byte",
            "/messagebird",
            one_byte(&jwt, jwt.len() - 5),
            MB_JSON,
        ),
        ("jwt: expired", "/messagebird", expired, MB_JSON),
    ] {
        let headers = h(&token);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        rejected(
            &edge,
            what,
            post(target, &headers, body).await,
            &[401],
            spooled,
        );
    }
    rejected(
        &edge,
        "unsigned",
        post("/messagebird", &[], MB_JSON).await,
        &[401],
        spooled,
    );
    assert_eq!(
        post(
            "/messagebird",
            &[("messagebird-signature-jwt", &jwt)],
            MB_JSON
        )
        .await,
        200
    );
    spooled += 1;
    assert_eq!(edge.spooled_count(), spooled);

    // --- JWT, legacy GET webhook (no body, so no payload_hash), with the new key
    let target = format!("/messagebird?{MB_QUERY}");
    let jwt = messagebird_jwt("new-mb-key", &format!("{PUBLIC}{target}"), b"", t);
    let tampered = target.replace("hello+there", "hello+thera");
    rejected(
        &edge,
        "jwt GET: changed parameter",
        get(&tampered, &[("messagebird-signature-jwt", &jwt)]).await,
        &[401],
        spooled,
    );
    assert_eq!(
        get(&target, &[("messagebird-signature-jwt", &jwt)]).await,
        200
    );
    spooled += 1;
    assert_eq!(edge.spooled_count(), spooled);

    // --- legacy signature + timestamp, JSON POST with a query
    let body = MB_JSON.replace("mb-sig-1", "mb-sig-2");
    let target = "/messagebird?tenant=a";
    let sig = messagebird_legacy("old-mb-key", t, "tenant=a", body.as_bytes());
    let ts = t.to_string();
    let legacy = |sig: &str, ts: &str| {
        vec![
            ("messagebird-signature", sig.to_owned()),
            ("messagebird-request-timestamp", ts.to_owned()),
        ]
    };
    let stale = t - 400;
    let future = t + 400;
    let stale_sig = messagebird_legacy("old-mb-key", stale, "tenant=a", body.as_bytes());
    let future_sig = messagebird_legacy("old-mb-key", future, "tenant=a", body.as_bytes());
    let changed_body = body.replace("\"hi\"", "\"hj\"");
    for (what, target, headers, body) in [
        (
            "legacy: one body byte",
            target,
            legacy(&sig, &ts),
            changed_body.as_str(),
        ),
        (
            "legacy: changed query",
            "/messagebird?tenant=b",
            legacy(&sig, &ts),
            body.as_str(),
        ),
        (
            "legacy: changed timestamp",
            target,
            legacy(&sig, &(t + 1).to_string()),
            body.as_str(),
        ),
        (
            "legacy: one signature byte",
            target,
            legacy(&one_byte(&sig, 2), &ts),
            body.as_str(),
        ),
        (
            "legacy: stale",
            target,
            legacy(&stale_sig, &stale.to_string()),
            body.as_str(),
        ),
        (
            "legacy: future",
            target,
            legacy(&future_sig, &future.to_string()),
            body.as_str(),
        ),
        (
            "legacy: no timestamp",
            target,
            legacy(&sig, &ts)[..1].to_vec(),
            body.as_str(),
        ),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        rejected(
            &edge,
            what,
            post(target, &headers, body).await,
            &[401],
            spooled,
        );
    }
    let headers = legacy(&sig, &ts);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(post(target, &headers, &body).await, 200);
    spooled += 1;
    assert_eq!(edge.spooled_count(), spooled);

    // --- legacy signature, legacy GET webhook (empty body)
    let query = MB_QUERY.replace("mb-sig-get", "mb-sig-get2");
    let sig = messagebird_legacy("new-mb-key", t, &query, b"");
    let headers = legacy(&sig, &ts);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    rejected(
        &edge,
        "legacy GET: changed parameter",
        get(
            &format!(
                "/messagebird?{}",
                query.replace("31612345678", "31612345679")
            ),
            &headers,
        )
        .await,
        &[401],
        spooled,
    );
    assert_eq!(get(&format!("/messagebird?{query}"), &headers).await, 200);
    spooled += 1;
    assert_eq!(edge.spooled_count(), spooled);

    // --- our generic form: MessageBird-Signature: sha256=<hex of HMAC-SHA256(key, body)>
    let body = MB_JSON.replace("mb-sig-1", "mb-sig-3");
    let sig = body_hmac("new-mb-key", body.as_bytes());
    let changed_body = body.replace("\"hi\"", "\"hj\"");
    for (what, sig, body) in [
        ("sha256=: one body byte", sig.clone(), changed_body.as_str()),
        (
            "sha256=: one signature byte",
            one_byte(&sig, 10),
            body.as_str(),
        ),
    ] {
        let status = post("/messagebird", &[("messagebird-signature", &sig)], body).await;
        rejected(&edge, what, status, &[401], spooled);
    }
    assert_eq!(
        post("/messagebird", &[("messagebird-signature", &sig)], &body).await,
        200
    );
    spooled += 1;
    assert_eq!(edge.spooled_count(), spooled);

    assert!(
        edge.log()
            .contains("MessageBird-Signature-JWT (HS256/384/512")
    );
    assert_log_clean(&edge, &["old-mb-key", "new-mb-key", &sig]);
}

#[tokio::test]
async fn messagebird_legacy_only_needs_no_public_url_and_refuses_jwt() {
    let edge = Edge::start(
        &["--messagebird-scheme", "legacy"],
        &[("INGEST_MESSAGEBIRD_SIGNING_KEYS", "legacy-key")],
    )
    .await;
    let t = now();
    let target = format!("/messagebird?{MB_QUERY}");
    // A JWT that would be valid for the URL the edge sees: not accepted in legacy mode.
    let jwt = messagebird_jwt("legacy-key", &format!("{}{target}", edge.base), b"", t);
    let status = send(
        &edge,
        reqwest::Method::GET,
        &target,
        None,
        &[("messagebird-signature-jwt", &jwt)],
        "",
    )
    .await;
    rejected(&edge, "jwt in legacy mode", status, &[401], 0);
    let sig = messagebird_legacy("legacy-key", t, MB_QUERY, b"");
    let ts = t.to_string();
    let headers = [
        ("messagebird-signature", sig.as_str()),
        ("messagebird-request-timestamp", ts.as_str()),
    ];
    let status = send(&edge, reqwest::Method::GET, &target, None, &headers, "").await;
    assert_eq!(status, 200);
    assert_eq!(edge.spooled_count(), 1);
}

#[tokio::test]
async fn bandwidth_basic_and_body_signature() {
    // Both configured: both are required.
    let edge = Edge::start(
        &[],
        &[
            ("INGEST_BANDWIDTH_BASIC_AUTH", "bw-user:bw-pass"),
            ("INGEST_BANDWIDTH_SIGNING_KEYS", "old-bw-key,new-bw-key"),
        ],
    )
    .await;
    let basic = format!("Basic {}", STANDARD.encode("bw-user:bw-pass"));
    let sig = body_hmac("old-bw-key", BANDWIDTH_INBOUND.as_bytes());
    let post = async |headers: &[(&str, &str)], body: &str| {
        send(
            &edge,
            reqwest::Method::POST,
            "/bandwidth/15551234567",
            Some("application/json"),
            headers,
            body,
        )
        .await
    };
    let changed = BANDWIDTH_INBOUND.replace("Hello", "Hellp");
    assert_ne!(changed, BANDWIDTH_INBOUND);
    for (what, headers, body) in [
        (
            "basic only",
            vec![("authorization", basic.as_str())],
            BANDWIDTH_INBOUND,
        ),
        (
            "signature only",
            vec![("x-bandwidth-signature", sig.as_str())],
            BANDWIDTH_INBOUND,
        ),
        (
            "one body byte",
            vec![
                ("authorization", basic.as_str()),
                ("x-bandwidth-signature", sig.as_str()),
            ],
            changed.as_str(),
        ),
        (
            "one signature byte",
            vec![
                ("authorization", basic.as_str()),
                ("x-bandwidth-signature", &one_byte(&sig, 12)),
            ],
            BANDWIDTH_INBOUND,
        ),
    ] {
        rejected(&edge, what, post(&headers, body).await, &[401], 0);
    }
    let sig_new = body_hmac("new-bw-key", BANDWIDTH_INBOUND.as_bytes());
    let status = post(
        &[
            ("authorization", basic.as_str()),
            ("x-bandwidth-signature", sig_new.as_str()),
        ],
        BANDWIDTH_INBOUND,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(edge.spooled_count(), 1);
    let log = edge.log();
    assert!(
        log.contains("HTTP Basic (1 credential pairs accepted) AND X-Bandwidth-Signature"),
        "{log}"
    );
    assert_log_clean(&edge, &["bw-pass", "old-bw-key", "new-bw-key", &sig]);
}

#[tokio::test]
async fn bandwidth_and_inteliquent_body_signature_alone() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("iq-keys");
    std::fs::write(&keys, "file-iq-key\n").unwrap();
    let edge = Edge::start(
        &[],
        &[
            ("INGEST_BANDWIDTH_SIGNING_KEYS", "only-bw-key"),
            ("INGEST_INTELIQUENT_HMAC_KEYS_FILE", keys.to_str().unwrap()),
        ],
    )
    .await;
    let sig = body_hmac("only-bw-key", BANDWIDTH_INBOUND.as_bytes());
    let bw = async |headers: &[(&str, &str)]| {
        send(
            &edge,
            reqwest::Method::POST,
            "/bandwidth/15551234567",
            Some("application/json"),
            headers,
            BANDWIDTH_INBOUND,
        )
        .await
    };
    rejected(&edge, "bandwidth unsigned", bw(&[]).await, &[401], 0);
    assert_eq!(bw(&[("x-bandwidth-signature", &sig)]).await, 200);
    assert_eq!(edge.spooled_count(), 1);

    let iq = async |headers: &[(&str, &str)], body: &str| {
        send(
            &edge,
            reqwest::Method::POST,
            "/webhooks/inteliquent",
            Some("application/json"),
            headers,
            body,
        )
        .await
    };
    let sig = body_hmac("file-iq-key", IQ_SMS.as_bytes());
    rejected(
        &edge,
        "inteliquent unsigned",
        iq(&[], IQ_SMS).await,
        &[401],
        1,
    );
    let other = body_hmac("other-key", IQ_SMS.as_bytes());
    rejected(
        &edge,
        "inteliquent wrong key",
        iq(&[("x-inteliquent-signature", &other)], IQ_SMS).await,
        &[403],
        1,
    );
    assert_eq!(iq(&[("x-inteliquent-signature", &sig)], IQ_SMS).await, 200);
    assert_eq!(edge.spooled_count(), 2);
}

const IQ_SMS: &str = r#"{"messageId":"iq-sig-1","type":"sms","from":"+15559876543","to":"+15551234567","text":"x","timestamp":"2024-01-15T10:30:00Z"}"#;

#[tokio::test]
async fn inteliquent_bearer_and_body_signature() {
    let edge = Edge::start(
        &[],
        &[
            ("INGEST_INTELIQUENT_TOKENS", "old-iq-token,new-iq-token"),
            ("INGEST_INTELIQUENT_HMAC_KEYS", "old-iq-key,new-iq-key"),
        ],
    )
    .await;
    let post = async |headers: &[(&str, &str)], body: &str| {
        send(
            &edge,
            reqwest::Method::POST,
            "/webhooks/inteliquent",
            Some("application/json"),
            headers,
            body,
        )
        .await
    };
    let sig = body_hmac("old-iq-key", IQ_SMS.as_bytes());
    let changed = IQ_SMS.replace("\"x\"", "\"y\"");
    for (what, headers, body, want) in [
        ("no credentials", vec![], IQ_SMS, 401),
        (
            "bearer only",
            vec![("authorization", "Bearer old-iq-token")],
            IQ_SMS,
            401,
        ),
        (
            "signature only",
            vec![("x-inteliquent-signature", sig.as_str())],
            IQ_SMS,
            401,
        ),
        (
            "wrong bearer",
            vec![
                ("authorization", "Bearer nope"),
                ("x-inteliquent-signature", sig.as_str()),
            ],
            IQ_SMS,
            403,
        ),
        (
            "one body byte",
            vec![
                ("authorization", "Bearer old-iq-token"),
                ("x-inteliquent-signature", sig.as_str()),
            ],
            changed.as_str(),
            403,
        ),
    ] {
        rejected(&edge, what, post(&headers, body).await, &[want], 0);
    }
    let sig_new = body_hmac("new-iq-key", IQ_SMS.as_bytes());
    let status = post(
        &[
            ("authorization", "Bearer new-iq-token"),
            ("x-inteliquent-signature", sig_new.as_str()),
        ],
        IQ_SMS,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(edge.spooled_count(), 1);
    assert!(
        edge.log()
            .contains("bearer token (2 accepted) AND X-Inteliquent-Signature")
    );
    assert_log_clean(&edge, &["old-iq-token", "new-iq-key", &sig]);
}

#[tokio::test]
async fn twilio_get_webhook_signed_over_the_url_alone() {
    let edge = Edge::start(
        &["--public-base-url", PUBLIC],
        &[("INGEST_TWILIO_AUTH_TOKENS", "get-token")],
    )
    .await;
    let target = format!("/twilio?{FORM}");
    // GET: the signature covers the full URL, query included; nothing is appended.
    let signature = twilio_signature("get-token", &format!("{PUBLIC}{target}"), "");
    let get = async |target: &str, sig: &str| {
        send(
            &edge,
            reqwest::Method::GET,
            target,
            None,
            &[("x-twilio-signature", sig)],
            "",
        )
        .await
    };
    let tampered = target.replace("Hello+there", "Hello+thera");
    rejected(
        &edge,
        "GET: changed parameter",
        get(&tampered, &signature).await,
        &[401],
        0,
    );
    rejected(
        &edge,
        "GET: wrong signature",
        get(&target, &one_byte(&signature, 3)).await,
        &[401],
        0,
    );
    assert_eq!(get(&target, &signature).await, 200);
    let spooled = edge.spooled("inbound");
    assert_eq!(spooled.len(), 1);
    assert_eq!(spooled[0]["inbound"]["carrierMessageId"], "SMsig1");
    assert_eq!(spooled[0]["inbound"]["text"], "Hello there");
}

#[tokio::test]
async fn a_configured_public_url_beats_forwarding_headers_even_from_a_trusted_proxy() {
    let edge = Edge::start(
        &[
            "--public-base-url",
            PUBLIC,
            "--trusted-proxies",
            "127.0.0.1,::1",
        ],
        &[("INGEST_TWILIO_AUTH_TOKENS", "shared-token")],
    )
    .await;
    // Signed for another app that shares the token (staging, a subaccount), replayed here with
    // forwarding headers naming that app's host.
    let elsewhere = twilio_signature("shared-token", "https://other-app.example.net/twilio", FORM);
    let replay = [
        ("x-twilio-signature", elsewhere.as_str()),
        ("forwarded", "host=other-app.example.net;proto=https"),
        ("x-forwarded-host", "other-app.example.net"),
    ];
    let status = send(
        &edge,
        reqwest::Method::POST,
        "/twilio",
        Some("application/x-www-form-urlencoded"),
        &replay,
        FORM,
    )
    .await;
    rejected(&edge, "signature for another host", status, &[401], 0);
    let ours = twilio_signature("shared-token", &format!("{PUBLIC}/twilio"), FORM);
    let status = send(
        &edge,
        reqwest::Method::POST,
        "/twilio",
        Some("application/x-www-form-urlencoded"),
        &[("x-twilio-signature", ours.as_str()), replay[1], replay[2]],
        FORM,
    )
    .await;
    assert_eq!(status, 200);
}
