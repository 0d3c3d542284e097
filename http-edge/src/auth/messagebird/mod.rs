//! MessageBird's webhook signatures, by configuration (`--messagebird-scheme`):
//!
//! * `jwt`: `MessageBird-Signature-JWT` (HS256/384/512; `url_hash` over the public URL rebuilt
//!   by [`PublicUrl`], `payload_hash` over the raw body), with a small clock leeway;
//! * `legacy`: `MessageBird-Signature` + `MessageBird-Request-Timestamp` (HMAC-SHA256 over the
//!   timestamp, the canonical query and the body's SHA-256), within a freshness window;
//! * `any` (default): the JWT when its header is present; else `MessageBird-Signature:
//!   sha256=<hex>` — our own generic form, HMAC-SHA256(key, raw body) in lowercase hex, which
//!   signs neither the URL nor a time; else the legacy pair.
//!
//! Every failure is a 401. The clock is `SystemTime::now()`.

mod signature;
#[cfg(test)]
mod vectors;

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use self::signature::{MbVerifyError, verify_jwt, verify_legacy};
use super::{AuthError, Incoming, PublicUrl, Verified, Verifier, hmac_body};
use crate::secret::SecretList;

/// Which MessageBird signatures are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MessageBirdScheme {
    /// Only `MessageBird-Signature-JWT`.
    Jwt,
    /// Only the legacy `MessageBird-Signature` + `MessageBird-Request-Timestamp`.
    Legacy,
    /// JWT when present, else `MessageBird-Signature: sha256=<hex>` (body HMAC), else legacy.
    Any,
}

/// Settings of the MessageBird verifier besides its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageBirdPolicy {
    /// Accepted schemes.
    pub scheme: MessageBirdScheme,
    /// Legacy timestamps further than this from now (either way) are rejected.
    pub max_age_secs: u64,
    /// Clock leeway for the JWT's `nbf` and `exp`.
    pub jwt_leeway_secs: u64,
}

/// Verifies MessageBird's signatures.
#[derive(Debug)]
pub struct MessageBirdVerifier {
    keys: SecretList,
    policy: MessageBirdPolicy,
    public_url: Arc<PublicUrl>,
    now: fn() -> i64,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl MessageBirdVerifier {
    /// Accepts calls signed with any of `keys` under `policy`; the JWT's URL is the one
    /// `public_url` rebuilds.
    pub fn new(keys: SecretList, policy: MessageBirdPolicy, public_url: Arc<PublicUrl>) -> Self {
        Self {
            keys,
            policy,
            public_url,
            now: unix_now,
        }
    }

    #[cfg(test)]
    fn with_clock(mut self, now: fn() -> i64) -> Self {
        self.now = now;
        self
    }

    fn jwt(&self, incoming: &Incoming, token: &str) -> Result<(), AuthError> {
        let url = self.public_url.url_for(incoming)?;
        verify_jwt(
            &self.keys.exposed(),
            token.trim(),
            &url,
            &incoming.body,
            (self.now)(),
            self.policy.jwt_leeway_secs,
        )
        .map_err(reason)
    }

    fn legacy(&self, incoming: &Incoming, signature: &str) -> Result<(), AuthError> {
        let timestamp =
            incoming
                .header("messagebird-request-timestamp")
                .ok_or(AuthError::Missing(
                    "no MessageBird-Request-Timestamp header",
                ))?;
        verify_legacy(
            &self.keys.exposed(),
            timestamp.trim(),
            incoming.raw_query(),
            &incoming.body,
            signature.trim(),
            (self.now)(),
            i64::try_from(self.policy.max_age_secs).unwrap_or(i64::MAX),
        )
        .map_err(reason)
    }

    fn body_hmac(&self, incoming: &Incoming, signature: &str) -> Result<(), AuthError> {
        // The `sha256=` form signs the body alone. A GET (or an empty body) carries its event in
        // the unsigned query, so one signature of "" would vouch for any event: refuse it.
        if incoming.method == http::Method::GET || incoming.body.is_empty() {
            return Err(AuthError::Invalid(
                "MessageBird-Signature sha256= signs only a body; this call has none",
            ));
        }
        if hmac_body::verify_hmac_sha256_body(&self.keys.exposed(), &incoming.body, signature) {
            Ok(())
        } else {
            Err(AuthError::Invalid(
                "MessageBird-Signature sha256= does not match the body",
            ))
        }
    }
}

/// A static, secret-free reason for the log.
fn reason(e: MbVerifyError) -> AuthError {
    match e {
        MbVerifyError::Missing => AuthError::Missing("MessageBird signature header empty"),
        MbVerifyError::Malformed => AuthError::Missing("MessageBird signature header malformed"),
        MbVerifyError::BadSignature => {
            AuthError::Invalid("MessageBird signature does not match any signing key")
        }
        MbVerifyError::Stale => {
            AuthError::Invalid("MessageBird signature expired or timestamp too old")
        }
        MbVerifyError::NotYetValid => {
            AuthError::Invalid("MessageBird signature not yet valid (timestamp in the future)")
        }
        MbVerifyError::UnsupportedAlgorithm => {
            AuthError::Invalid("MessageBird JWT algorithm is not HS256, HS384 or HS512")
        }
        MbVerifyError::BadClaims(claim) => AuthError::Invalid(match claim {
            "iss" => "MessageBird JWT iss is not MessageBird",
            "exp" => "MessageBird JWT exp missing or invalid",
            "nbf" => "MessageBird JWT nbf invalid",
            "jti" => "MessageBird JWT jti missing",
            "url_hash" => "MessageBird JWT url_hash does not match the public URL",
            _ => "MessageBird JWT payload_hash does not match the body",
        }),
    }
}

impl Verifier for MessageBirdVerifier {
    fn verify<'a>(&self, incoming: &'a Incoming) -> Result<Verified<'a>, AuthError> {
        let jwt = incoming.header("messagebird-signature-jwt");
        let signature = incoming.header("messagebird-signature");
        match (self.policy.scheme, jwt, signature) {
            (MessageBirdScheme::Jwt | MessageBirdScheme::Any, Some(token), _) => {
                self.jwt(incoming, token)?;
            }
            (MessageBirdScheme::Jwt, None, _) => {
                return Err(AuthError::Missing("no MessageBird-Signature-JWT header"));
            }
            (MessageBirdScheme::Any, None, Some(sig)) if sig.trim().starts_with("sha256=") => {
                self.body_hmac(incoming, sig)?;
            }
            (MessageBirdScheme::Legacy | MessageBirdScheme::Any, _, Some(sig)) => {
                self.legacy(incoming, sig)?;
            }
            (MessageBirdScheme::Legacy | MessageBirdScheme::Any, _, None) => {
                return Err(AuthError::Missing("no MessageBird signature header"));
            }
        }
        Ok(Verified::vouch(incoming))
    }

    fn describe(&self) -> String {
        let n = self.keys.len();
        let p = &self.policy;
        let jwt = format!(
            "MessageBird-Signature-JWT (HS256/384/512, leeway {} s, url_hash over the {})",
            p.jwt_leeway_secs,
            self.public_url.describe()
        );
        let legacy = format!(
            "legacy MessageBird-Signature + MessageBird-Request-Timestamp (window ±{} s)",
            p.max_age_secs
        );
        let schemes = match p.scheme {
            MessageBirdScheme::Jwt => jwt,
            MessageBirdScheme::Legacy => legacy,
            MessageBirdScheme::Any => format!(
                "{jwt}, else MessageBird-Signature: sha256=<hex> (HMAC-SHA256 of the body), else {legacy}"
            ),
        };
        format!("{schemes}; {n} signing key(s)")
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderMap, Method, Uri};
    use jsonwebtoken::Algorithm;
    use proptest::prelude::*;

    use super::signature::{sign_jwt, sign_legacy};
    use super::vectors::load;
    use super::*;
    use crate::{
        auth::{hmac_body::sign_hmac_sha256_body, test_support::mutate_ascii as mutate},
        secret::Secret,
    };

    const POLICY: MessageBirdPolicy = MessageBirdPolicy {
        scheme: MessageBirdScheme::Any,
        max_age_secs: 300,
        jwt_leeway_secs: 30,
    };

    fn verifier(keys: &[&str], base: &str, policy: MessageBirdPolicy) -> MessageBirdVerifier {
        MessageBirdVerifier::new(
            keys.iter().map(|k| Secret::new(*k)).collect(),
            policy,
            Arc::new(PublicUrl::new(Some(base), None).unwrap()),
        )
    }

    fn request(method: Method, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Incoming {
        let mut map = HeaderMap::new();
        map.insert("host", "edge.internal:8080".parse().unwrap());
        for (k, v) in headers {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Incoming {
            method,
            uri: target.parse::<Uri>().unwrap(),
            headers: map,
            body: Bytes::copy_from_slice(body),
            peer: "10.0.0.1:4000".parse().unwrap(),
            destination: None,
        }
    }

    thread_local! {
        static CLOCK: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
    }

    fn pinned() -> i64 {
        CLOCK.with(std::cell::Cell::get)
    }

    fn at(now: i64, v: MessageBirdVerifier) -> MessageBirdVerifier {
        CLOCK.with(|c| c.set(now));
        v.with_clock(pinned)
    }

    /// The 14 legacy vectors through the verifier with each scheme that accepts legacy, the
    /// clock pinned at the vector's timestamp; GET when the body is empty (the legacy webhook).
    #[test]
    fn official_legacy_vectors_through_the_verifier() {
        let file = load();
        assert_eq!(file.legacy_hmac.vectors.len(), 14);
        let mut failures = Vec::new();
        for v in &file.legacy_hmac.vectors {
            let query = match (&v.raw_query_string, &v.query_params) {
                (Some(raw), _) => raw.clone(),
                (None, Some(p)) => form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(p)
                    .finish(),
                (None, None) => String::new(),
            };
            let target = if query.is_empty() {
                "/messagebird".to_owned()
            } else {
                format!("/messagebird?{query}")
            };
            let method = if v.body.is_empty() {
                Method::GET
            } else {
                Method::POST
            };
            let req = request(
                method,
                &target,
                &[
                    ("messagebird-signature", &v.expected_signature),
                    ("messagebird-request-timestamp", &v.timestamp_header),
                ],
                v.body.as_bytes(),
            );
            let now: i64 = v.timestamp_header.parse().unwrap();
            for scheme in [MessageBirdScheme::Legacy, MessageBirdScheme::Any] {
                let policy = MessageBirdPolicy { scheme, ..POLICY };
                let verifier = at(
                    now,
                    verifier(&[&v.signing_key], "https://hooks.example.com", policy),
                );
                let got = verifier.verify(&req).is_ok();
                if got != v.expected_valid {
                    failures.push(format!("{} {scheme:?} (got {got})", v.id));
                }
            }
            let jwt_only = MessageBirdPolicy {
                scheme: MessageBirdScheme::Jwt,
                ..POLICY
            };
            assert!(
                at(
                    now,
                    verifier(&[&v.signing_key], "https://h.example", jwt_only)
                )
                .verify(&req)
                .is_err(),
                "{}: legacy signature accepted with --messagebird-scheme jwt",
                v.id
            );
        }
        assert!(failures.is_empty(), "failing legacy vectors: {failures:?}");
    }

    /// The 44 JWT vectors through the verifier: the vector's URL split into the public base
    /// URL and the request target; the request reaches the edge under another Host.
    #[test]
    fn official_jwt_vectors_through_the_verifier() {
        let file = load();
        assert_eq!(file.jwt.vectors.len(), 44);
        let mut failures = Vec::new();
        for v in &file.jwt.vectors {
            let after_scheme = v.url.find("://").unwrap() + 3;
            let split = v.url[after_scheme..]
                .find(['/', '?'])
                .map_or(v.url.len(), |i| after_scheme + i);
            let (base, target) = v.url.split_at(split);
            let body = v.payload.as_deref().unwrap_or("");
            let method = if v.name.contains("GET") {
                Method::GET
            } else {
                Method::POST
            };
            let req = request(
                method,
                target,
                &[("messagebird-signature-jwt", &v.token)],
                body.as_bytes(),
            );
            let secret = v.secret.as_deref().unwrap_or("no-secret-in-vector");
            for scheme in [MessageBirdScheme::Jwt, MessageBirdScheme::Any] {
                let policy = MessageBirdPolicy { scheme, ..POLICY };
                let verifier = at(v.now_unix.unwrap(), verifier(&[secret], base, policy));
                let got = verifier.verify(&req).is_ok();
                if got != v.valid {
                    failures.push(format!("{} {scheme:?} (got {got})", v.name));
                }
            }
        }
        assert!(failures.is_empty(), "failing JWT vectors: {failures:?}");
    }

    const KEY: &str = "mb-signing-key";
    const BASE: &str = "https://hooks.example.com";
    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] =
        br#"{"id":"mb1","recipient":"31612345678","originator":"31698765432","body":"hi"}"#;

    fn jwt_request(key: &str, target: &str, body: &[u8], nbf: i64) -> Incoming {
        let token = sign_jwt(
            key.as_bytes(),
            Algorithm::HS256,
            &format!("{BASE}{target}"),
            body,
            nbf,
            nbf + 60,
            "jti-1",
        )
        .unwrap();
        request(
            Method::POST,
            target,
            &[("messagebird-signature-jwt", &token)],
            body,
        )
    }

    fn legacy_request(key: &str, target: &str, body: &[u8], ts: i64) -> Incoming {
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let sig = sign_legacy(key.as_bytes(), &ts.to_string(), query, body);
        request(
            if body.is_empty() {
                Method::GET
            } else {
                Method::POST
            },
            target,
            &[
                ("messagebird-signature", &sig),
                ("messagebird-request-timestamp", &ts.to_string()),
            ],
            body,
        )
    }

    #[test]
    fn scheme_selection_freshness_and_rotation() {
        let any = |keys: &[&str]| at(NOW, verifier(keys, BASE, POLICY));
        let only = |scheme| {
            at(
                NOW,
                verifier(&[KEY], BASE, MessageBirdPolicy { scheme, ..POLICY }),
            )
        };
        let jwt = jwt_request(KEY, "/messagebird", BODY, NOW);
        let legacy = legacy_request(KEY, "/messagebird?id=mb1&recipient=31612345678", b"", NOW);
        let generic = request(
            Method::POST,
            "/messagebird",
            &[(
                "messagebird-signature",
                &sign_hmac_sha256_body(KEY.as_bytes(), BODY),
            )],
            BODY,
        );
        for req in [&jwt, &legacy, &generic] {
            assert!(any(&[KEY]).verify(req).is_ok());
            assert!(any(&["old-key", KEY]).verify(req).is_ok(), "rotation");
            assert!(any(&["other-key"]).verify(req).is_err());
        }
        assert!(only(MessageBirdScheme::Jwt).verify(&jwt).is_ok());
        assert!(only(MessageBirdScheme::Jwt).verify(&legacy).is_err());
        assert!(only(MessageBirdScheme::Jwt).verify(&generic).is_err());
        assert!(only(MessageBirdScheme::Legacy).verify(&legacy).is_ok());
        assert!(only(MessageBirdScheme::Legacy).verify(&jwt).is_err());
        assert!(only(MessageBirdScheme::Legacy).verify(&generic).is_err());

        // The body-only form cannot vouch for a GET (its event is in the unsigned query) or an
        // empty body, even with the right signature of that empty body.
        let empty_sig = sign_hmac_sha256_body(KEY.as_bytes(), b"");
        for (method, target) in [
            (
                Method::GET,
                "/messagebird?id=forged&recipient=31612345678&body=FORGED",
            ),
            (Method::POST, "/messagebird?id=forged&recipient=31612345678"),
        ] {
            let forged = request(
                method,
                target,
                &[("messagebird-signature", &empty_sig)],
                b"",
            );
            assert_eq!(
                any(&[KEY]).verify(&forged).unwrap_err(),
                AuthError::Invalid(
                    "MessageBird-Signature sha256= signs only a body; this call has none"
                )
            );
        }

        // Freshness: ±max_age for legacy, leeway for the JWT.
        for (ts, ok) in [
            (NOW - 300, true),
            (NOW - 301, false),
            (NOW + 300, true),
            (NOW + 301, false),
        ] {
            let req = legacy_request(KEY, "/messagebird?id=1", b"", ts);
            assert_eq!(any(&[KEY]).verify(&req).is_ok(), ok, "legacy ts {ts}");
        }
        for (nbf, ok) in [
            (NOW + 30, true),
            (NOW + 31, false),
            (NOW - 89, true),
            (NOW - 90, false),
        ] {
            let req = jwt_request(KEY, "/messagebird", BODY, nbf);
            assert_eq!(any(&[KEY]).verify(&req).is_ok(), ok, "jwt nbf {nbf}");
        }

        let unsigned = request(Method::POST, "/messagebird", &[], BODY);
        assert_eq!(
            any(&[KEY]).verify(&unsigned).unwrap_err(),
            AuthError::Missing("no MessageBird signature header")
        );
        let no_ts = request(
            Method::POST,
            "/messagebird",
            &[("messagebird-signature", "AAAA")],
            BODY,
        );
        assert_eq!(
            any(&[KEY]).verify(&no_ts).unwrap_err(),
            AuthError::Missing("no MessageBird-Request-Timestamp header")
        );
    }

    #[test]
    fn jwt_url_hash_uses_the_public_url_not_the_host() {
        let v = at(NOW, verifier(&[KEY], BASE, POLICY));
        let req = jwt_request(KEY, "/messagebird?x=1", BODY, NOW);
        assert!(v.verify(&req).is_ok());
        let elsewhere = at(NOW, verifier(&[KEY], "https://other.example.com", POLICY));
        assert_eq!(
            elsewhere.verify(&req).unwrap_err(),
            AuthError::Invalid("MessageBird JWT url_hash does not match the public URL")
        );
        let d = v.describe();
        assert!(
            d.contains("MessageBird-Signature-JWT") && d.contains("legacy"),
            "{d}"
        );
        assert!(!d.contains(KEY), "{d}");
    }

    proptest! {
        /// Each scheme, through the verifier: one changed byte of the body, the signature
        /// header, a query value or (legacy) the timestamp is rejected.
        #[test]
        fn mutations_rejected(scheme in 0u8..3, what in 0u8..4, idx in 0usize..10_000, delta in 1u8..94) {
            let v = at(NOW, verifier(&[KEY], BASE, POLICY));
            let target = "/messagebird?id=mb1&recipient=31612345678";
            let body = std::str::from_utf8(BODY).unwrap();
            let (good, sig_header) = match scheme {
                0 => (jwt_request(KEY, target, BODY, NOW), "messagebird-signature-jwt"),
                1 => (legacy_request(KEY, target, BODY, NOW), "messagebird-signature"),
                _ => (request(Method::POST, target, &[("messagebird-signature", &sign_hmac_sha256_body(KEY.as_bytes(), BODY))], BODY), "messagebird-signature"),
            };
            prop_assert!(v.verify(&good).is_ok());
            let mut bad = request(good.method.clone(), target, &[], BODY);
            bad.headers = good.headers.clone();
            match what {
                0 => bad.body = Bytes::from(mutate(body, idx, delta)),
                1 => {
                    let original = good.header(sig_header).unwrap();
                    let s = mutate(original, idx, delta);
                    // Hex is read in either letter case: a case flip is the same signature.
                    prop_assume!(scheme != 2 || !s.eq_ignore_ascii_case(original));
                    bad.headers.insert(sig_header, s.parse().unwrap());
                }
                2 => {
                    if scheme == 2 {
                        // The generic form signs the body only: nothing else to change.
                        bad.body = Bytes::from(mutate(body, idx, delta));
                    } else {
                        let value = mutate("31612345678", idx, delta).replace(['&', '#', '=', '+', '%'], "x");
                        prop_assume!(value != "31612345678");
                        bad.uri = format!("/messagebird?id=mb1&recipient={}", form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>()).parse().unwrap();
                    }
                }
                _ => {
                    if scheme == 1 {
                        let ts = (NOW + 1 + (idx % 200) as i64).to_string();
                        bad.headers.insert("messagebird-request-timestamp", ts.parse().unwrap());
                    } else {
                        bad.uri = "/messagebird?id=mb1&recipient=31612345679".parse().unwrap();
                        if scheme == 2 {
                            bad.body = Bytes::from(mutate(body, idx, delta));
                        }
                    }
                }
            }
            prop_assert!(v.verify(&bad).is_err());
        }
    }
}
