//! Twilio's `X-Twilio-Signature` on the public URL the call was sent to (see [`PublicUrl`]),
//! with several auth tokens and an optional `AccountSid` allow-list.
//!
//! * a form POST: HMAC-SHA1 over the URL plus every decoded form parameter (repeated ones too);
//! * `Content-Type: application/json`: over the URL alone, whose `bodySHA256` query parameter
//!   must equal the SHA-256 of the raw body;
//! * a GET: over the URL alone.
//!
//! Missing or wrong signature: 401. Genuine, but its `AccountSid` is not allowed: 403.

mod signature;
#[cfg(test)]
mod vectors;

use std::sync::Arc;

use http::Method;

use self::signature::TwilioValidator;
use super::{AuthError, Incoming, PublicUrl, Verified, Verifier};
use crate::{carriers::twilio::form_params, secret::SecretList};

/// Verifies `X-Twilio-Signature`.
#[derive(Debug)]
pub struct TwilioVerifier {
    validator: TwilioValidator,
    tokens: usize,
    public_url: Arc<PublicUrl>,
    account_sids: Vec<String>,
}

impl TwilioVerifier {
    /// Accepts calls signed with any of `tokens` over the URL `public_url` rebuilds. A non-empty
    /// `account_sids` also requires every `AccountSid` of the call to be one of them.
    pub fn new(tokens: SecretList, public_url: Arc<PublicUrl>, account_sids: Vec<String>) -> Self {
        Self {
            tokens: tokens.len(),
            validator: TwilioValidator::new(tokens),
            public_url,
            account_sids,
        }
    }

    /// Whether the body is JSON, which Twilio signs through `bodySHA256` in the URL.
    fn is_json(incoming: &Incoming) -> bool {
        let media_type = incoming
            .header("content-type")
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        media_type.eq_ignore_ascii_case("application/json")
    }

    /// Every `AccountSid` the call carries: form parameters, the query, and a JSON body's
    /// top-level field.
    fn account_sids_of(incoming: &Incoming, form: &[(String, String)]) -> Vec<String> {
        let query = form_urlencoded::parse(incoming.raw_query().as_bytes());
        let mut sids: Vec<String> = form
            .iter()
            .filter(|(k, _)| k == "AccountSid")
            .map(|(_, v)| v.clone())
            .chain(
                query
                    .filter(|(k, _)| k == "AccountSid")
                    .map(|(_, v)| v.into_owned()),
            )
            .collect();
        if Self::is_json(incoming)
            && let Ok(serde_json::Value::Object(map)) =
                serde_json::from_slice::<serde_json::Value>(&incoming.body)
            && let Some(sid) = map.get("AccountSid")
        {
            sids.push(sid.as_str().map_or_else(|| sid.to_string(), str::to_owned));
        }
        sids
    }
}

impl Verifier for TwilioVerifier {
    fn verify<'a>(&self, incoming: &'a Incoming) -> Result<Verified<'a>, AuthError> {
        let signature = incoming
            .header("x-twilio-signature")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::Missing("no X-Twilio-Signature header"))?;
        let url = self.public_url.url_for(incoming)?;
        let mut form = Vec::new();
        let genuine = if Self::is_json(incoming) {
            self.validator
                .validate_url_only(&url, Some(&incoming.body), signature)
        } else if incoming.method == Method::GET || incoming.method == Method::HEAD {
            self.validator.validate_url_only(&url, None, signature)
        } else {
            form = form_params(&incoming.body)
                .map_err(|_| AuthError::Invalid("Twilio form body cannot be decoded"))?;
            self.validator.validate_form(&url, &form, signature)
        };
        if !genuine {
            return Err(AuthError::Invalid(
                "X-Twilio-Signature does not match the public URL and parameters",
            ));
        }
        if !self.account_sids.is_empty() {
            let sids = Self::account_sids_of(incoming, &form);
            if sids.is_empty() || !sids.iter().all(|s| self.account_sids.contains(s)) {
                return Err(AuthError::Forbidden(
                    "AccountSid not in --twilio-account-sids",
                ));
            }
        }
        Ok(Verified::vouch(incoming))
    }

    fn describe(&self) -> String {
        let sids = if self.account_sids.is_empty() {
            String::new()
        } else {
            format!(
                "; AccountSid restricted to {} account(s)",
                self.account_sids.len()
            )
        };
        format!(
            "X-Twilio-Signature HMAC-SHA1 ({} auth token(s)) over the {}{sids}",
            self.tokens,
            self.public_url.describe()
        )
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderMap, Uri, uri::PathAndQuery};
    use proptest::prelude::*;

    use super::signature::sign;
    use super::vectors::{self, Vector};
    use super::*;
    use crate::{
        auth::test_support::{incoming, mutate_ascii as mutate},
        secret::Secret,
    };

    fn verifier(tokens: &[&str], base: &str, sids: &[&str]) -> TwilioVerifier {
        TwilioVerifier::new(
            tokens.iter().map(|t| Secret::new(*t)).collect(),
            Arc::new(PublicUrl::new(Some(base), None).unwrap()),
            sids.iter().map(|s| (*s).to_owned()).collect(),
        )
    }

    /// A request as the server would receive it: the vector's URL split into the configured
    /// public base (scheme and authority) and the request target (path and raw query).
    fn request_for(v: &Vector) -> (String, Incoming) {
        let after_scheme = v.request_url.find("://").unwrap() + 3;
        let split = v.request_url[after_scheme..]
            .find(['/', '?'])
            .map_or(v.request_url.len(), |i| after_scheme + i);
        let base = v.request_url[..split].to_owned();
        let mut target = v.request_url[split..].to_owned();
        if !target.starts_with('/') {
            target.insert(0, '/');
        }
        let (content_type, body) = match &v.body {
            Some(body) => ("application/json", body.clone().into_bytes()),
            None => (
                "application/x-www-form-urlencoded",
                form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(&v.params)
                    .finish()
                    .into_bytes(),
            ),
        };
        let mut headers = HeaderMap::new();
        headers.insert("content-type", content_type.parse().unwrap());
        headers.insert("host", "edge.internal:8080".parse().unwrap());
        headers.insert("x-twilio-signature", v.expected_signature.parse().unwrap());
        let uri = Uri::from_parts({
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(PathAndQuery::try_from(target.as_str()).unwrap());
            parts
        })
        .unwrap();
        let req = Incoming {
            method: Method::POST,
            uri,
            headers,
            body: Bytes::from(body),
            peer: "10.0.0.1:4000".parse().unwrap(),
            destination: None,
        };
        (base, req)
    }

    /// Every official vector through the verifier the server uses, with the public base URL
    /// the deployment would configure; the request reaches the edge under another Host.
    #[test]
    fn official_vectors_through_the_verifier() {
        let vectors = vectors::load();
        assert_eq!(vectors.len(), 37);
        let mut failures = Vec::new();
        for v in &vectors {
            let (base, req) = request_for(v);
            let got = verifier(&[&v.auth_token], &base, &[]).verify(&req).is_ok();
            if got != v.expected_valid {
                failures.push(format!("{} (got {got})", v.id));
            }
            if v.expected_valid {
                // The same request with another token among several still passes (rotation).
                let rotated = verifier_with_extra(&v.auth_token, &base);
                assert!(rotated.verify(&req).is_ok(), "{}", v.id);
                let wrong = verifier(&["not-the-token"], &base, &[]);
                assert_eq!(
                    wrong.verify(&req).unwrap_err(),
                    AuthError::Invalid(
                        "X-Twilio-Signature does not match the public URL and parameters"
                    ),
                    "{}",
                    v.id
                );
            }
        }
        assert!(failures.is_empty(), "failing Twilio vectors: {failures:?}");
    }

    fn verifier_with_extra(token: &str, base: &str) -> TwilioVerifier {
        verifier(&["previous-token", token], base, &[])
    }

    const BASE: &str = "https://hooks.example.com";
    const FORM: &str =
        "MessageSid=SM1&AccountSid=AC1&From=%2B15550001&To=%2B15550002&Body=hi+there";

    fn signed_form(token: &str, target: &str, form: &str) -> Incoming {
        let params: Vec<(String, String)> = form_params(form.as_bytes()).unwrap();
        let sig = sign(token.as_bytes(), &format!("{BASE}{target}"), &params);
        incoming(
            target,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("x-twilio-signature", &sig),
            ],
            form.as_bytes(),
        )
    }

    #[test]
    fn missing_wrong_and_forbidden() {
        let v = verifier(&["tok"], BASE, &[]);
        assert!(v.verify(&signed_form("tok", "/twilio", FORM)).is_ok());
        let unsigned = incoming(
            "/twilio",
            &[("content-type", "application/x-www-form-urlencoded")],
            FORM.as_bytes(),
        );
        assert_eq!(
            v.verify(&unsigned).unwrap_err(),
            AuthError::Missing("no X-Twilio-Signature header")
        );
        assert!(matches!(
            v.verify(&signed_form("other", "/twilio", FORM)),
            Err(AuthError::Invalid(_))
        ));

        let restricted = verifier(&["tok"], BASE, &["AC1", "AC9"]);
        assert!(
            restricted
                .verify(&signed_form("tok", "/twilio", FORM))
                .is_ok()
        );
        let other_account = FORM.replace("AC1", "AC2");
        assert_eq!(
            restricted
                .verify(&signed_form("tok", "/twilio", &other_account))
                .unwrap_err(),
            AuthError::Forbidden("AccountSid not in --twilio-account-sids")
        );
        // A second AccountSid smuggled beside an allowed one is not accepted either.
        let two = format!("{FORM}&AccountSid=AC2");
        assert!(matches!(
            restricted.verify(&signed_form("tok", "/twilio", &two)),
            Err(AuthError::Forbidden(_))
        ));
        let none = "MessageSid=SM1&Body=x";
        assert!(matches!(
            restricted.verify(&signed_form("tok", "/twilio", none)),
            Err(AuthError::Forbidden(_))
        ));
    }

    #[test]
    fn get_and_json_requests() {
        let v = verifier(&["tok"], BASE, &[]);
        let target = "/twilio?MessageSid=SM1&AccountSid=AC1";
        let sig = sign(b"tok", &format!("{BASE}{target}"), &[]);
        let mut get = incoming(target, &[("x-twilio-signature", &sig)], b"");
        get.method = Method::GET;
        assert!(v.verify(&get).is_ok());
        get.uri = "/twilio?MessageSid=SM2&AccountSid=AC1".parse().unwrap();
        assert!(v.verify(&get).is_err());

        let body = br#"{"MessageSid":"SM1","AccountSid":"AC1"}"#;
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body));
        let target = format!("/twilio?bodySHA256={hash}");
        let sig = sign(b"tok", &format!("{BASE}{target}"), &[]);
        let json = incoming(
            &target,
            &[
                ("content-type", "application/json; charset=utf-8"),
                ("x-twilio-signature", &sig),
            ],
            body,
        );
        assert!(v.verify(&json).is_ok());
        let restricted = verifier(&["tok"], BASE, &["AC1"]);
        assert!(
            restricted.verify(&json).is_ok(),
            "AccountSid read from the JSON body"
        );
        let tampered = incoming(
            &target,
            &[
                ("content-type", "application/json"),
                ("x-twilio-signature", &sig),
            ],
            br#"{"MessageSid":"SM2","AccountSid":"AC1"}"#,
        );
        assert!(v.verify(&tampered).is_err());
    }

    #[test]
    fn describe_names_the_scheme_without_secrets() {
        let d = verifier(
            &["s3cret-token"],
            "https://u:pw@hooks.example.com",
            &["AC1"],
        )
        .describe();
        assert!(
            d.contains("X-Twilio-Signature") && d.contains("1 auth token"),
            "{d}"
        );
        assert!(!d.contains("s3cret") && !d.contains(":pw@"), "{d}");
    }

    proptest! {
        /// A signed request with one byte of the body, the URL (path or query) or the signature
        /// changed is rejected by the verifier, unless the change leaves the decoded form
        /// parameters' signed string the same (e.g. `%2B` → `%2b`), which Twilio's signature does
        /// not see.
        #[test]
        fn one_byte_mutations_rejected(which in 0u8..3, idx in 0usize..10_000, delta in 1u8..94) {
            let v = verifier(&["tok"], BASE, &[]);
            let target = "/twilio?tenant=a";
            let good = signed_form("tok", target, FORM);
            prop_assert!(v.verify(&good).is_ok());
            let sig = good.header("x-twilio-signature").unwrap().to_owned();
            let headers = [("content-type", "application/x-www-form-urlencoded"), ("x-twilio-signature", sig.as_str())];
            let (req, same_meaning) = match which {
                0 => {
                    let body = mutate(FORM, idx, delta);
                    // What Twilio signs: each name then its value, sorted, run together; a
                    // mutation that leaves that string the same (`MessageSid=SM1` →
                    // `MessageSid&SM1`) cannot be told apart by anyone.
                    let signed = |form: &str| form_params(form.as_bytes()).ok().map(|mut p| {
                        p.sort();
                        p.into_iter().map(|(k, v)| k + &v).collect::<String>()
                    });
                    let same = signed(&body) == signed(FORM);
                    (incoming(target, &headers, body.as_bytes()), same)
                }
                1 => {
                    let t = mutate(target, idx, delta);
                    match t.parse::<PathAndQuery>() {
                        Ok(_) if t.starts_with('/') => (incoming(&t, &headers, FORM.as_bytes()), false),
                        _ => return Ok(()),
                    }
                }
                _ => {
                    let s = mutate(&sig, idx, delta);
                    (incoming(target, &[headers[0], ("x-twilio-signature", &s)], FORM.as_bytes()), false)
                }
            };
            prop_assert_eq!(v.verify(&req).is_ok(), same_meaning);
        }
    }
}
