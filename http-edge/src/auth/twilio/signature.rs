//! Twilio `X-Twilio-Signature` validation (pure: no I/O, no clock).
//!
//! Scheme (as implemented by every official Twilio SDK):
//! * key: the account auth token's bytes; MAC: HMAC-SHA1; encoding: standard base64 with padding.
//! * string to sign: the full public URL Twilio requested (query kept byte for byte), then — for an
//!   `application/x-www-form-urlencoded` POST — every parameter name sorted by code point and, for
//!   each name, its decoded values sorted and de-duplicated, each appended as `name` + `value`.
//! * GET callbacks: nothing is appended (the parameters are in the URL).
//! * JSON bodies: Twilio adds `bodySHA256=<lowercase hex sha256(raw body)>` to the query; the
//!   signature covers the URL alone and the body hash must equal that parameter.
//!
//! URL variants tried (any configured token matching any variant is accepted):
//! * the URL as given;
//! * when it has an explicit port: the URL with the port removed (any port, as the SDKs do);
//! * when it has none and the scheme is http/https: the URL with `:80` / `:443` added;
//! * each of the above with the query re-serialised the way a WHATWG URL parser does (bytes of the
//!   special-query percent-encode set, e.g. `'` → `%27`, are percent-encoded). twilio-node builds
//!   its candidates with `new URL(...)`, so requests validated by it were signed that way; the
//!   variant only differs from the raw URL when the query holds such a byte.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::SecretList;

type HmacSha1 = Hmac<Sha1>;

/// Validates `X-Twilio-Signature`.
#[derive(Clone)]
pub(crate) struct TwilioValidator {
    auth_tokens: SecretList,
}

impl fmt::Debug for TwilioValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioValidator")
            .field(
                "auth_tokens",
                &format_args!("<{} redacted>", self.auth_tokens.len()),
            )
            .finish()
    }
}

impl TwilioValidator {
    /// Several auth tokens may be configured (rotation, subaccounts). Empty tokens are ignored,
    /// so a validator without a usable token rejects everything.
    pub(crate) fn new(auth_tokens: SecretList) -> Self {
        Self {
            auth_tokens: auth_tokens
                .iter()
                .filter(|t| !t.expose().is_empty())
                .cloned()
                .collect(),
        }
    }

    /// Form-encoded POST: `url` is the full public URL Twilio requested (query bytes verbatim),
    /// `params` the decoded form parameters in received order (repeated names allowed).
    pub(crate) fn validate_form(
        &self,
        url: &str,
        params: &[(String, String)],
        signature: &str,
    ) -> bool {
        let suffix = form_suffix(params);
        self.validate_variants(url, &suffix, signature)
    }

    /// GET callbacks (params are in the URL; nothing appended) and JSON bodies: the URL must
    /// carry `bodySHA256`, which must equal lowercase hex sha256(body) (constant-time compare),
    /// when `body` is Some; the signature covers the URL alone.
    pub(crate) fn validate_url_only(
        &self,
        url: &str,
        body: Option<&[u8]>,
        signature: &str,
    ) -> bool {
        if let Some(body) = body
            && !body_hash_matches(url, body)
        {
            return false;
        }
        self.validate_variants(url, "", signature)
    }

    fn validate_variants(&self, url: &str, suffix: &str, signature: &str) -> bool {
        if self.auth_tokens.is_empty() || signature.is_empty() {
            return false;
        }
        let mut ok = false;
        for candidate in url_variants(url) {
            for token in self.auth_tokens.iter() {
                let expected = compute(token.expose(), &candidate, suffix);
                // No early exit: every candidate/token pair is computed and compared.
                ok |= bool::from(expected.as_bytes().ct_eq(signature.as_bytes()));
            }
        }
        ok
    }
}

/// Computes the `X-Twilio-Signature` value for a form POST (or, with empty `params`, for a GET /
/// JSON request whose URL already carries `bodySHA256`). Used by tests.
#[cfg(test)]
pub(crate) fn sign(auth_token: &[u8], url: &str, params: &[(String, String)]) -> String {
    compute(auth_token, url, &form_suffix(params))
}

fn compute(token: &[u8], url: &str, suffix: &str) -> String {
    let mut mac = HmacSha1::new_from_slice(token).expect("HMAC accepts any key length");
    mac.update(url.as_bytes());
    mac.update(suffix.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Names sorted by code point (byte order of UTF-8 is code point order); per name the values
/// sorted and de-duplicated; each emitted as `name` + `value`.
fn form_suffix(params: &[(String, String)]) -> String {
    let mut grouped: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, value) in params {
        grouped.entry(name).or_default().push(value);
    }
    let mut out = String::new();
    for (name, mut values) in grouped {
        values.sort_unstable();
        values.dedup();
        for value in values {
            out.push_str(name);
            out.push_str(value);
        }
    }
    out
}

/// `bodySHA256` must occur exactly once in the query and equal lowercase hex sha256(body).
fn body_hash_matches(url: &str, body: &[u8]) -> bool {
    let Some(query) = split_url(url).map(|p| p.query) else {
        return false;
    };
    let mut found: Option<Cow<'_, str>> = None;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name == "bodySHA256" {
            if found.is_some() {
                return false;
            }
            found = Some(value);
        }
    }
    let Some(claimed) = found else {
        return false;
    };
    let actual = hex::encode(Sha256::digest(body));
    bool::from(actual.as_bytes().ct_eq(claimed.as_bytes()))
}

/// A URL split into the parts the variants need; `prefix` is `scheme://[userinfo@]host`,
/// `rest` is path (may be empty), without query or fragment.
struct UrlParts<'a> {
    scheme: &'a str,
    prefix: &'a str,
    port: Option<&'a str>,
    rest: &'a str,
    /// Query without the leading '?'; empty when absent.
    query: &'a str,
    has_query: bool,
    /// Fragment including the leading '#', kept verbatim; empty when absent.
    fragment: &'a str,
}

fn split_url(url: &str) -> Option<UrlParts<'_>> {
    let scheme_end = url.find("://")?;
    let scheme = &url[..scheme_end];
    let after_scheme = scheme_end + 3;
    let authority_len = url[after_scheme..]
        .find(['/', '?', '#'])
        .unwrap_or(url.len() - after_scheme);
    let authority_end = after_scheme + authority_len;
    let authority = &url[after_scheme..authority_end];
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let hostport = &authority[host_start..];
    // For a bracketed IPv6 host the port colon comes after ']'.
    let search_from = hostport.rfind(']').map_or(0, |i| i + 1);
    let (host_len, port) = match hostport[search_from..].rfind(':') {
        Some(i) => {
            let colon = search_from + i;
            (colon, Some(&hostport[colon + 1..]))
        }
        None => (hostport.len(), None),
    };
    let prefix = &url[..after_scheme + host_start + host_len];

    let tail = &url[authority_end..];
    let (before_fragment, fragment) = match tail.find('#') {
        Some(i) => (&tail[..i], &tail[i..]),
        None => (tail, ""),
    };
    let (rest, query, has_query) = match before_fragment.find('?') {
        Some(i) => (&before_fragment[..i], &before_fragment[i + 1..], true),
        None => (before_fragment, "", false),
    };
    Some(UrlParts {
        scheme,
        prefix,
        port,
        rest,
        query,
        has_query,
        fragment,
    })
}

/// All candidate URLs, the given one first, de-duplicated.
fn url_variants(url: &str) -> Vec<Cow<'_, str>> {
    let mut out: Vec<Cow<'_, str>> = vec![Cow::Borrowed(url)];
    let Some(parts) = split_url(url) else {
        return out;
    };
    let default_port = if parts.scheme.eq_ignore_ascii_case("https") {
        Some("443")
    } else if parts.scheme.eq_ignore_ascii_case("http") {
        Some("80")
    } else {
        None
    };
    let normalized_query = whatwg_query(parts.query);
    let queries: &[&str] = if normalized_query.as_ref() == parts.query {
        &[parts.query]
    } else {
        &[parts.query, normalized_query.as_ref()]
    };
    let ports: Vec<Option<&str>> = match (parts.port, default_port) {
        (Some(p), _) => vec![Some(p), None],
        (None, Some(d)) => vec![None, Some(d)],
        (None, None) => vec![None],
    };
    for port in &ports {
        for query in queries {
            let mut s = String::with_capacity(url.len() + 8);
            s.push_str(parts.prefix);
            if let Some(p) = port {
                s.push(':');
                s.push_str(p);
            }
            s.push_str(parts.rest);
            if parts.has_query {
                s.push('?');
                s.push_str(query);
            }
            s.push_str(parts.fragment);
            if !out.iter().any(|c| c.as_ref() == s) {
                out.push(Cow::Owned(s));
            }
        }
    }
    out
}

/// Percent-encodes the bytes of the WHATWG "special-query percent-encode set" (C0 controls, space,
/// `"`, `#`, `<`, `>`, `'`, and bytes above 0x7E) — what `new URL(..)` does to an http(s) query.
fn whatwg_query(query: &str) -> Cow<'_, str> {
    let needs = |b: u8| b <= 0x20 || b >= 0x7F || matches!(b, b'"' | b'#' | b'<' | b'>' | b'\'');
    if !query.bytes().any(needs) {
        return Cow::Borrowed(query);
    }
    let mut out = String::with_capacity(query.len() + 16);
    for b in query.bytes() {
        if needs(b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::mutate_ascii_in_place as mutate;
    use crate::auth::twilio::vectors::load;
    use crate::secret::Secret;
    use proptest::prelude::*;

    /// A validator over exactly these tokens (no list parsing: tokens may hold commas).
    fn validator(tokens: &[&[u8]]) -> TwilioValidator {
        TwilioValidator::new(tokens.iter().map(|t| Secret::new(*t)).collect())
    }

    #[test]
    fn official_vectors() {
        let vectors = load();
        let mut failures = Vec::new();
        for v in &vectors {
            let validator = validator(&[v.auth_token.as_bytes()]);
            let valid = match &v.body {
                Some(body) => validator.validate_url_only(
                    &v.request_url,
                    Some(body.as_bytes()),
                    &v.expected_signature,
                ),
                None => validator.validate_form(&v.request_url, &v.params, &v.expected_signature),
            };
            if valid != v.expected_valid {
                failures.push(format!("{} (got {valid})", v.id));
            }
        }
        assert!(failures.is_empty(), "failing Twilio vectors: {failures:?}");
        assert_eq!(vectors.len(), 37, "expected 37 Twilio vectors");
    }

    #[test]
    fn json_body_must_match_body_sha256() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        let sig = "a9nBmqA0ju/hNViExpshrM61xv4=";
        let v = validator(&[b"12345"]);
        assert!(v.validate_url_only(url, Some(br#"{"property": "value", "boolean": true}"#), sig));
        assert!(!v.validate_url_only(
            url,
            Some(br#"{"property": "value", "boolean": false}"#),
            sig
        ));
        // URL without bodySHA256 but a body: rejected even with a valid signature over the URL.
        let plain = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let plain_sig = sign(b"12345", plain, &[]);
        assert!(!v.validate_url_only(plain, Some(b"{}"), &plain_sig));
        // GET: URL only.
        assert!(v.validate_url_only(plain, None, &plain_sig));
        // Duplicate bodySHA256 rejected.
        let dup = format!("{url}&bodySHA256=00");
        let dup_sig = sign(b"12345", &dup, &[]);
        assert!(!v.validate_url_only(
            &dup,
            Some(br#"{"property": "value", "boolean": true}"#),
            &dup_sig
        ));
    }

    #[test]
    fn key_rotation() {
        let url = "https://example.com/twilio/sms?x=1";
        let params = vec![
            ("Body".to_string(), "hi".to_string()),
            ("From".to_string(), "+15550001".to_string()),
        ];
        let v = validator(&[b"old-token", b"new-token"]);
        assert!(v.validate_form(url, &params, &sign(b"old-token", url, &params)));
        assert!(v.validate_form(url, &params, &sign(b"new-token", url, &params)));
        assert!(!v.validate_form(url, &params, &sign(b"other-token", url, &params)));
        assert!(!validator(&[]).validate_form(url, &params, &sign(b"", url, &params)));
        assert!(!validator(&[b""]).validate_form(url, &params, &sign(b"", url, &params)));
        let dbg = format!("{v:?}");
        assert!(
            !dbg.contains("old-token") && !dbg.contains("new-token") && dbg.contains("redacted")
        );
    }

    #[test]
    fn url_variant_shapes() {
        let got: Vec<String> = url_variants("https://u:p@[::1]:8443/a?b='c'")
            .into_iter()
            .map(Cow::into_owned)
            .collect();
        assert_eq!(
            got,
            [
                "https://u:p@[::1]:8443/a?b='c'",
                "https://u:p@[::1]:8443/a?b=%27c%27",
                "https://u:p@[::1]/a?b='c'",
                "https://u:p@[::1]/a?b=%27c%27",
            ]
        );
        let got: Vec<String> = url_variants("http://h")
            .into_iter()
            .map(Cow::into_owned)
            .collect();
        assert_eq!(got, ["http://h", "http://h:80"]);
    }

    fn params() -> Vec<(String, String)> {
        vec![
            ("MessageSid".into(), "SM123".into()),
            ("Body".into(), "Hello there".into()),
            ("From".into(), "+14158675309".into()),
            ("To".into(), "+18005551212".into()),
        ]
    }

    proptest! {
        #[test]
        fn form_mutations_rejected(which in 0u8..3, idx in 0usize..1000, delta in 1u8..94) {
            let url = "https://ingest.example.com/twilio/sms?tenant=a";
            let params = params();
            let v = validator(&[b"secret-token"]);
            let sig = sign(b"secret-token", url, &params);
            prop_assert!(v.validate_form(url, &params, &sig));
            match which {
                0 => {
                    let mut bytes = url.as_bytes().to_vec();
                    mutate(&mut bytes, idx, delta);
                    let m = String::from_utf8(bytes).unwrap();
                    // A port-only change such as `:443` cannot arise from one byte here, so
                    // every one-byte change must be rejected.
                    prop_assert!(!v.validate_form(&m, &params, &sig), "url {}", m);
                }
                1 => {
                    let mut p = params.clone();
                    let k = idx % p.len();
                    let mut bytes = p[k].1.as_bytes().to_vec();
                    mutate(&mut bytes, idx / p.len(), delta);
                    p[k].1 = String::from_utf8(bytes).unwrap();
                    prop_assert!(!v.validate_form(url, &p, &sig));
                }
                _ => {
                    let mut bytes = sig.as_bytes().to_vec();
                    mutate(&mut bytes, idx, delta);
                    let m = String::from_utf8(bytes).unwrap();
                    prop_assert!(!v.validate_form(url, &params, &m));
                }
            }
        }

        #[test]
        fn json_body_mutations_rejected(idx in 0usize..1000, bit in 0u8..8) {
            let body = br#"{"MessageSid":"SM123","Body":"hi"}"#.to_vec();
            let url = format!(
                "https://ingest.example.com/twilio/json?bodySHA256={}",
                hex::encode(Sha256::digest(&body))
            );
            let v = validator(&[b"secret-token"]);
            let sig = sign(b"secret-token", &url, &[]);
            prop_assert!(v.validate_url_only(&url, Some(&body), &sig));
            let mut m = body.clone();
            let i = idx % m.len();
            m[i] ^= 1 << bit;
            prop_assert!(!v.validate_url_only(&url, Some(&m), &sig));
        }
    }
}
