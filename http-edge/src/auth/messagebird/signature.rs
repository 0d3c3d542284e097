//! MessageBird webhook signatures (pure: no I/O; the clock is passed in as `now_unix`).
//!
//! Legacy scheme — headers `MessageBird-Signature` (base64) and `MessageBird-Request-Timestamp`:
//! base64(HMAC-SHA256(key, timestamp + "\n" + canonical_query + "\n" + sha256(raw body))), the
//! body digest being the 32 raw bytes (the digest of the empty body when there is none). The
//! canonical query is the request's query parameters, decoded, stably sorted by key and
//! form-encoded again (space as `+`). The SDKs disagree only on whether `*` and `~` are escaped
//! (Go/Python: `~` kept, `*` escaped; PHP: both escaped; WHATWG form encoding: `*` kept, `~`
//! escaped), so those three encodings are all tried; they coincide unless the query holds `*`/`~`.
//!
//! JWT scheme — header `MessageBird-Signature-JWT`: a compact JWS, HS256/HS384/HS512 only, keyed
//! with the signing key's bytes; claims `iss` = `MessageBird`, `exp` (required), `nbf` (checked
//! when present; MessageBird's Go SDK tolerates its absence), `jti` (non-empty), `url_hash` = hex
//! sha256(full URL), `payload_hash` = hex sha256(raw body), present exactly when the body is
//! non-empty. Times follow RFC 7519 / PyJWT: valid while `now < exp + leeway` and
//! `now >= nbf - leeway`.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
#[cfg(test)]
use jsonwebtoken::{EncodingKey, Header};
#[cfg(test)]
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Why a MessageBird signature was rejected. Never carries key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MbVerifyError {
    /// A required header (signature, timestamp or token) is absent or empty.
    Missing,
    /// The header is present but cannot be parsed (bad base64, timestamp, JWT shape or JSON).
    Malformed,
    /// No configured key produces this signature.
    BadSignature,
    /// The timestamp is older than the window, or the JWT has expired.
    Stale,
    /// The timestamp is ahead of the window, or the JWT's `nbf` is in the future.
    NotYetValid,
    /// A JWT claim is missing or wrong; names the claim.
    BadClaims(&'static str),
    /// The JWT's `alg` is not HS256, HS384 or HS512 (e.g. `none`, RS*, ES*, unknown).
    UnsupportedAlgorithm,
}

impl fmt::Display for MbVerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("signature header missing"),
            Self::Malformed => f.write_str("signature header malformed"),
            Self::BadSignature => f.write_str("signature does not match any configured key"),
            Self::Stale => f.write_str("signature expired or timestamp too old"),
            Self::NotYetValid => f.write_str("signature not yet valid (timestamp in the future)"),
            Self::BadClaims(claim) => write!(f, "invalid JWT claim: {claim}"),
            Self::UnsupportedAlgorithm => f.write_str("unsupported signature algorithm"),
        }
    }
}

impl std::error::Error for MbVerifyError {}

// ---------------------------------------------------------------------------------------------
// Legacy HMAC scheme
// ---------------------------------------------------------------------------------------------

/// Which bytes besides ASCII alphanumerics are left unescaped when re-encoding the query.
#[derive(Clone, Copy)]
enum QueryStyle {
    /// Go `url.Values.Encode` / Python `urlencode`: `-_.~` kept.
    Go,
    /// PHP `http_build_query` (RFC 1738): `-_.` kept.
    Php,
    /// WHATWG `application/x-www-form-urlencoded` (the `form_urlencoded` crate): `*-._` kept.
    Whatwg,
}

const QUERY_STYLES: [QueryStyle; 3] = [QueryStyle::Go, QueryStyle::Php, QueryStyle::Whatwg];

fn encode_component(out: &mut String, s: &str, style: QueryStyle) {
    if let QueryStyle::Whatwg = style {
        out.extend(form_urlencoded::byte_serialize(s.as_bytes()));
        return;
    }
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.')
            || (b == b'~' && matches!(style, QueryStyle::Go));
        if keep {
            out.push(char::from(b));
        } else if b == b' ' {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Decodes `raw_query` (form semantics: `+` is a space), sorts the pairs by key (stable, so
/// repeated keys keep their order) and re-encodes them.
fn canonical_query(raw_query: &str, style: QueryStyle) -> String {
    let mut pairs: Vec<_> = form_urlencoded::parse(raw_query.as_bytes()).collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::with_capacity(raw_query.len() + 16);
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_component(&mut out, k, style);
        out.push('=');
        encode_component(&mut out, v, style);
    }
    out
}

fn legacy_mac(key: &[u8], timestamp: &str, canonical: &str, body_digest: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b"\n");
    mac.update(canonical.as_bytes());
    mac.update(b"\n");
    mac.update(body_digest);
    mac
}

/// Legacy scheme: base64 HMAC-SHA256(key, timestamp + "\n" + canonical_query + "\n" + sha256(body) RAW 32 bytes).
/// `raw_query` is the request's raw query string (without '?', may be empty); canonical query = params sorted by key, form-encoded (space '+').
///
/// The signature is checked first; only an authentic request is then reported as `Stale` /
/// `NotYetValid` when its timestamp is more than `window_secs` from `now_unix`.
pub(crate) fn verify_legacy<K: AsRef<[u8]>>(
    keys: &[K],
    timestamp: &str,
    raw_query: &str,
    body: &[u8],
    signature_b64: &str,
    now_unix: i64,
    window_secs: i64,
) -> Result<(), MbVerifyError> {
    if timestamp.is_empty() || signature_b64.is_empty() {
        return Err(MbVerifyError::Missing);
    }
    // Unix seconds: ASCII digits only (no sign, no spaces), small enough for i64.
    if timestamp.len() > 18 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MbVerifyError::Malformed);
    }
    let ts: i64 = timestamp.parse().map_err(|_| MbVerifyError::Malformed)?;
    let claimed = STANDARD
        .decode(signature_b64)
        .map_err(|_| MbVerifyError::Malformed)?;
    if claimed.len() != 32 {
        return Err(MbVerifyError::BadSignature);
    }

    let body_digest = Sha256::digest(body);
    let mut canonicals: Vec<String> = Vec::with_capacity(QUERY_STYLES.len());
    for style in QUERY_STYLES {
        let c = canonical_query(raw_query, style);
        if !canonicals.contains(&c) {
            canonicals.push(c);
        }
    }
    let mut ok = false;
    for key in keys.iter().map(AsRef::as_ref).filter(|k| !k.is_empty()) {
        for canonical in &canonicals {
            ok |= legacy_mac(key, timestamp, canonical, &body_digest)
                .verify_slice(&claimed)
                .is_ok();
        }
    }
    if !ok {
        return Err(MbVerifyError::BadSignature);
    }

    let window = window_secs.max(0);
    if ts < now_unix.saturating_sub(window) {
        return Err(MbVerifyError::Stale);
    }
    if ts > now_unix.saturating_add(window) {
        return Err(MbVerifyError::NotYetValid);
    }
    Ok(())
}

/// The `MessageBird-Signature` value for a request (Go/Python canonical query encoding).
#[cfg(test)]
pub(crate) fn sign_legacy(key: &[u8], timestamp: &str, raw_query: &str, body: &[u8]) -> String {
    let canonical = canonical_query(raw_query, QueryStyle::Go);
    let mac = legacy_mac(key, timestamp, &canonical, &Sha256::digest(body));
    STANDARD.encode(mac.finalize().into_bytes())
}

// ---------------------------------------------------------------------------------------------
// JWT scheme
// ---------------------------------------------------------------------------------------------

const HMAC_ALGS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// Only to classify a header that `jsonwebtoken` refused (e.g. `"alg":"none"` is not an
/// `Algorithm`); never used to accept anything.
fn raw_header_alg(token: &str) -> Option<String> {
    let segment = token.split('.').next()?;
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    let header: Value = serde_json::from_slice(&bytes).ok()?;
    header.get("alg")?.as_str().map(str::to_owned)
}

fn numeric_claim(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, MbVerifyError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else {
                match n.as_f64() {
                    Some(f) if f.is_finite() && f.abs() < 9.0e15 => Ok(Some(f.floor() as i64)),
                    _ => Err(MbVerifyError::BadClaims(name)),
                }
            }
        }
        Some(_) => Err(MbVerifyError::BadClaims(name)),
    }
}

/// A string claim; `null` and `""` count as absent (as in the reference SDKs).
fn string_claim<'a>(
    claims: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, MbVerifyError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(MbVerifyError::BadClaims(name)),
    }
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// JWT scheme: `MessageBird-Signature-JWT` header value. HS256/HS384/HS512 only (reject none/RS*/ES*/unknown),
/// key = UTF-8 bytes of the signing key; iss == "MessageBird"; nbf/exp with `leeway_secs`; jti present;
/// url_hash == hex sha256(full url); payload_hash present exactly when body non-empty and == hex sha256(body).
pub(crate) fn verify_jwt<K: AsRef<[u8]>>(
    keys: &[K],
    token: &str,
    full_url: &str,
    body: &[u8],
    now_unix: i64,
    leeway_secs: u64,
) -> Result<(), MbVerifyError> {
    if token.is_empty() {
        return Err(MbVerifyError::Missing);
    }
    let header = match jsonwebtoken::decode_header(token) {
        Ok(h) => h,
        Err(_) => {
            return Err(match raw_header_alg(token) {
                Some(alg) if !matches!(alg.as_str(), "HS256" | "HS384" | "HS512") => {
                    MbVerifyError::UnsupportedAlgorithm
                }
                _ => MbVerifyError::Malformed,
            });
        }
    };
    if !HMAC_ALGS.contains(&header.alg) {
        return Err(MbVerifyError::UnsupportedAlgorithm);
    }

    // The library checks the algorithm and the signature; every claim is checked below against
    // the injected clock, so its own (system-clock) time checks are switched off.
    let mut validation = Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;

    let mut claims: Option<Map<String, Value>> = None;
    for key in keys.iter().map(AsRef::as_ref).filter(|k| !k.is_empty()) {
        let Ok(decoding_key) = DecodingKey::from_secret(key) else {
            continue;
        };
        match jsonwebtoken::decode::<Map<String, Value>>(token, &decoding_key, &validation) {
            Ok(data) => {
                claims = Some(data.claims);
                break;
            }
            Err(e) => match e.kind() {
                ErrorKind::InvalidSignature => {}
                ErrorKind::InvalidAlgorithm
                | ErrorKind::UnsupportedAlgorithm
                | ErrorKind::InvalidAlgorithmName => {
                    return Err(MbVerifyError::UnsupportedAlgorithm);
                }
                _ => return Err(MbVerifyError::Malformed),
            },
        }
    }
    let claims = claims.ok_or(MbVerifyError::BadSignature)?;

    if string_claim(&claims, "iss")? != Some("MessageBird") {
        return Err(MbVerifyError::BadClaims("iss"));
    }
    let leeway = i64::try_from(leeway_secs).unwrap_or(i64::MAX);
    let exp = numeric_claim(&claims, "exp")?.ok_or(MbVerifyError::BadClaims("exp"))?;
    if now_unix >= exp.saturating_add(leeway) {
        return Err(MbVerifyError::Stale);
    }
    if let Some(nbf) = numeric_claim(&claims, "nbf")?
        && nbf > now_unix.saturating_add(leeway)
    {
        return Err(MbVerifyError::NotYetValid);
    }
    if string_claim(&claims, "jti")?.is_none() {
        return Err(MbVerifyError::BadClaims("jti"));
    }
    let url_hash =
        string_claim(&claims, "url_hash")?.ok_or(MbVerifyError::BadClaims("url_hash"))?;
    if !bool::from(
        hex_sha256(full_url.as_bytes())
            .as_bytes()
            .ct_eq(url_hash.as_bytes()),
    ) {
        return Err(MbVerifyError::BadClaims("url_hash"));
    }
    match (string_claim(&claims, "payload_hash")?, body.is_empty()) {
        (None, true) => {}
        (Some(_), true) => return Err(MbVerifyError::BadClaims("payload_hash set but body empty")),
        (None, false) => {
            return Err(MbVerifyError::BadClaims(
                "payload_hash missing but body present",
            ));
        }
        (Some(claimed), false) => {
            if !bool::from(hex_sha256(body).as_bytes().ct_eq(claimed.as_bytes())) {
                return Err(MbVerifyError::BadClaims("payload_hash"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[derive(Serialize)]
struct OutgoingClaims<'a> {
    iss: &'static str,
    nbf: i64,
    exp: i64,
    jti: &'a str,
    url_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_hash: Option<String>,
}

/// A `MessageBird-Signature-JWT` value as MessageBird would send it (tests and documentation).
/// `alg` must be HS256, HS384 or HS512 and `key` non-empty.
#[cfg(test)]
pub(crate) fn sign_jwt(
    key: &[u8],
    alg: Algorithm,
    full_url: &str,
    body: &[u8],
    nbf: i64,
    exp: i64,
    jti: &str,
) -> Result<String, MbVerifyError> {
    if !HMAC_ALGS.contains(&alg) {
        return Err(MbVerifyError::UnsupportedAlgorithm);
    }
    let claims = OutgoingClaims {
        iss: "MessageBird",
        nbf,
        exp,
        jti,
        url_hash: hex_sha256(full_url.as_bytes()),
        payload_hash: (!body.is_empty()).then(|| hex_sha256(body)),
    };
    let encoding_key = EncodingKey::from_secret(key).map_err(|_| MbVerifyError::Malformed)?;
    jsonwebtoken::encode(&Header::new(alg), &claims, &encoding_key)
        .map_err(|_| MbVerifyError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::messagebird::vectors::{JwtVector, LegacyVector, load};
    use crate::auth::test_support::mutate_ascii;
    use proptest::prelude::*;

    fn raw_query_of(v: &LegacyVector) -> String {
        match (&v.raw_query_string, &v.query_params) {
            (Some(raw), _) => raw.clone(),
            (None, Some(params)) => form_urlencoded::Serializer::new(String::new())
                .extend_pairs(params)
                .finish(),
            (None, None) => String::new(),
        }
    }

    fn legacy_checked() -> usize {
        let file = load();
        let mut failures = Vec::new();
        for v in &file.legacy_hmac.vectors {
            let raw_query = raw_query_of(v);
            // The canonical query and the string to sign must be what the vector says.
            let canonical = canonical_query(&raw_query, QueryStyle::Go);
            if canonical != v.canonical_query {
                failures.push(format!("{}: canonical query {canonical:?}", v.id));
            }
            let mut to_sign = format!("{}\n{}\n", v.timestamp_header, canonical).into_bytes();
            to_sign.extend_from_slice(&Sha256::digest(v.body.as_bytes()));
            if hex::encode(&to_sign) != v.string_to_sign_hex {
                failures.push(format!("{}: string to sign", v.id));
            }
            let now: i64 = v.timestamp_header.parse().unwrap();
            let result = verify_legacy(
                &[v.signing_key.as_bytes().to_vec()],
                &v.timestamp_header,
                &raw_query,
                v.body.as_bytes(),
                &v.expected_signature,
                now,
                300,
            );
            if result.is_ok() != v.expected_valid {
                failures.push(format!("{}: got {result:?}", v.id));
            }
            if v.expected_valid {
                let signed = sign_legacy(
                    v.signing_key.as_bytes(),
                    &v.timestamp_header,
                    &raw_query,
                    v.body.as_bytes(),
                );
                if signed != v.expected_signature {
                    failures.push(format!("{}: sign_legacy gave {signed}", v.id));
                }
            }
        }
        assert!(failures.is_empty(), "failing legacy vectors: {failures:?}");
        file.legacy_hmac.vectors.len()
    }

    fn expected_error(reason: &str) -> Option<MbVerifyError> {
        if reason.contains("nbf") {
            Some(MbVerifyError::NotYetValid)
        } else if reason.contains("exp") {
            Some(MbVerifyError::Stale)
        } else if reason.contains("signing method") {
            Some(MbVerifyError::UnsupportedAlgorithm)
        } else if reason.contains("signature is invalid") {
            Some(MbVerifyError::BadSignature)
        } else {
            None
        }
    }

    fn run_jwt_vector(v: &JwtVector) -> Result<(), MbVerifyError> {
        let secret = v.secret.as_deref().unwrap_or("no-secret-in-vector");
        let now = v.now_unix.expect("vector pins the clock");
        verify_jwt(
            &[secret.as_bytes().to_vec()],
            &v.token,
            &v.url,
            v.payload.as_deref().unwrap_or("").as_bytes(),
            now,
            1,
        )
    }

    fn jwt_checked() -> usize {
        let file = load();
        let mut failures = Vec::new();
        for v in &file.jwt.vectors {
            let result = run_jwt_vector(v);
            if result.is_ok() != v.valid {
                failures.push(format!("{}: got {result:?}", v.name));
                continue;
            }
            if let (Err(got), Some(reason)) = (result, &v.reason) {
                let claim_reason = reason.contains("url_hash") || reason.contains("payload_hash");
                let matches = match expected_error(reason) {
                    Some(expected) => got == expected,
                    None => claim_reason && matches!(got, MbVerifyError::BadClaims(_)),
                };
                if !matches {
                    failures.push(format!("{}: error {got:?} for reason {reason:?}", v.name));
                }
            }
            if v.timestamp != "2021-07-05T12:00:00+02:00" || v.now_unix != Some(1_625_479_200) {
                failures.push(format!("{}: unexpected clock fields", v.name));
            }
        }
        assert!(failures.is_empty(), "failing JWT vectors: {failures:?}");
        file.jwt.vectors.len()
    }

    #[test]
    fn official_vectors() {
        let legacy = legacy_checked();
        let jwt = jwt_checked();
        assert_eq!(legacy, 14, "expected 14 legacy vectors");
        assert_eq!(jwt, 44, "expected 44 JWT vectors");
        assert_eq!(legacy + jwt, 58, "expected 58 MessageBird vectors");
    }

    #[test]
    fn go_extra_vector_without_nbf_is_accepted() {
        let file = load();
        assert_eq!(file.jwt.extra_vectors.len(), 1);
        let mut v = file.jwt.extra_vectors.into_iter().next().unwrap();
        v.now_unix = Some(1_625_479_200);
        assert!(v.valid);
        assert_eq!(run_jwt_vector(&v), Ok(()));
    }

    const KEY: &[u8] = b"test-signing-key";
    const URL: &str = "https://ingest.example.com/messagebird/sms?tenant=a";
    const NOW: i64 = 1_700_000_000;

    #[test]
    fn legacy_window_and_errors() {
        let keys = vec![KEY.to_vec()];
        let q = "id=1&recipient=31612345678";
        let ts = NOW.to_string();
        let sig = sign_legacy(KEY, &ts, q, b"");
        assert_eq!(verify_legacy(&keys, &ts, q, b"", &sig, NOW, 300), Ok(()));
        assert_eq!(
            verify_legacy(&keys, &ts, q, b"", &sig, NOW + 300, 300),
            Ok(())
        );
        assert_eq!(
            verify_legacy(&keys, &ts, q, b"", &sig, NOW + 301, 300),
            Err(MbVerifyError::Stale)
        );
        assert_eq!(
            verify_legacy(&keys, &ts, q, b"", &sig, NOW - 301, 300),
            Err(MbVerifyError::NotYetValid)
        );
        assert_eq!(
            verify_legacy(&keys, "", q, b"", &sig, NOW, 300),
            Err(MbVerifyError::Missing)
        );
        assert_eq!(
            verify_legacy(&keys, &ts, q, b"", "", NOW, 300),
            Err(MbVerifyError::Missing)
        );
        assert_eq!(
            verify_legacy(&keys, "-1", q, b"", &sig, NOW, 300),
            Err(MbVerifyError::Malformed)
        );
        assert_eq!(
            verify_legacy(&keys, &ts, q, b"", "%%%", NOW, 300),
            Err(MbVerifyError::Malformed)
        );
        assert_eq!(
            verify_legacy(&keys, &ts, q, b"", "AAAA", NOW, 300),
            Err(MbVerifyError::BadSignature)
        );
        assert_eq!(
            verify_legacy::<&[u8]>(&[], &ts, q, b"", &sig, NOW, 300),
            Err(MbVerifyError::BadSignature)
        );
        // Query order and percent-encoding case do not matter (canonicalised); values do.
        assert_eq!(
            verify_legacy(
                &keys,
                &ts,
                "recipient=31612345678&id=1",
                b"",
                &sig,
                NOW,
                300
            ),
            Ok(())
        );
        assert_eq!(
            verify_legacy(
                &keys,
                &ts,
                "recipient=31612345679&id=1",
                b"",
                &sig,
                NOW,
                300
            ),
            Err(MbVerifyError::BadSignature)
        );
    }

    #[test]
    fn legacy_star_and_tilde_encodings() {
        let keys = vec![KEY.to_vec()];
        let ts = NOW.to_string();
        let q = "b=x*y~z&a=1";
        let body = b"{}";
        for style in QUERY_STYLES {
            let canonical = canonical_query(q, style);
            let sig = STANDARD.encode(
                legacy_mac(KEY, &ts, &canonical, &Sha256::digest(body))
                    .finalize()
                    .into_bytes(),
            );
            assert_eq!(
                verify_legacy(&keys, &ts, q, body, &sig, NOW, 60),
                Ok(()),
                "{canonical}"
            );
        }
        assert_eq!(canonical_query(q, QueryStyle::Go), "a=1&b=x%2Ay~z");
        assert_eq!(canonical_query(q, QueryStyle::Php), "a=1&b=x%2Ay%7Ez");
        assert_eq!(canonical_query(q, QueryStyle::Whatwg), "a=1&b=x*y%7Ez");
        assert_eq!(canonical_query("s=a b+c:d", QueryStyle::Go), "s=a+b+c%3Ad");
    }

    #[test]
    fn legacy_key_rotation() {
        let keys = vec![b"old".to_vec(), b"new".to_vec()];
        let ts = NOW.to_string();
        for k in [&b"old"[..], b"new"] {
            let sig = sign_legacy(k, &ts, "a=1", b"body");
            assert_eq!(
                verify_legacy(&keys, &ts, "a=1", b"body", &sig, NOW, 60),
                Ok(())
            );
        }
        let sig = sign_legacy(b"other", &ts, "a=1", b"body");
        assert_eq!(
            verify_legacy(&keys, &ts, "a=1", b"body", &sig, NOW, 60),
            Err(MbVerifyError::BadSignature)
        );
    }

    #[test]
    fn jwt_key_rotation() {
        let keys = vec![b"old".to_vec(), b"new".to_vec()];
        for k in [&b"old"[..], b"new"] {
            let token = sign_jwt(k, Algorithm::HS256, URL, b"x", NOW, NOW + 60, "j").unwrap();
            assert_eq!(verify_jwt(&keys, &token, URL, b"x", NOW, 1), Ok(()));
        }
        let token = sign_jwt(b"other", Algorithm::HS256, URL, b"x", NOW, NOW + 60, "j").unwrap();
        assert_eq!(
            verify_jwt(&keys, &token, URL, b"x", NOW, 1),
            Err(MbVerifyError::BadSignature)
        );
    }

    #[test]
    fn jwt_times_and_leeway() {
        let keys = vec![KEY.to_vec()];
        let token = sign_jwt(KEY, Algorithm::HS512, URL, b"", NOW, NOW + 60, "j").unwrap();
        assert_eq!(verify_jwt(&keys, &token, URL, b"", NOW + 60, 1), Ok(()));
        assert_eq!(
            verify_jwt(&keys, &token, URL, b"", NOW + 61, 1),
            Err(MbVerifyError::Stale)
        );
        assert_eq!(verify_jwt(&keys, &token, URL, b"", NOW - 1, 1), Ok(()));
        assert_eq!(
            verify_jwt(&keys, &token, URL, b"", NOW - 2, 1),
            Err(MbVerifyError::NotYetValid)
        );
        assert_eq!(verify_jwt(&keys, &token, URL, b"", NOW - 5, 5), Ok(()));
        assert_eq!(
            verify_jwt(&keys, "", URL, b"", NOW, 1),
            Err(MbVerifyError::Missing)
        );
        assert_eq!(
            verify_jwt(&keys, "a.b", URL, b"", NOW, 1),
            Err(MbVerifyError::Malformed)
        );
        assert_eq!(
            verify_jwt(&keys, "not a jwt", URL, b"", NOW, 1),
            Err(MbVerifyError::Malformed)
        );
    }

    fn forge(header: &str, claims: &Value, signature: &str) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            signature
        )
    }

    fn good_claims() -> Value {
        serde_json::json!({
            "iss": "MessageBird", "nbf": NOW, "exp": NOW + 60, "jti": "j",
            "url_hash": hex_sha256(URL.as_bytes()),
        })
    }

    fn hs256(claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(KEY).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn jwt_algorithms_rejected() {
        let keys = vec![KEY.to_vec()];
        let claims = good_claims();
        assert_eq!(verify_jwt(&keys, &hs256(&claims), URL, b"", NOW, 1), Ok(()));
        for alg in [
            "none", "None", "RS256", "ES256", "PS256", "EdDSA", "HS1", "XYZ",
        ] {
            let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
            for sig in ["", "c2lnbmF0dXJl"] {
                let token = forge(&header, &claims, sig);
                assert_eq!(
                    verify_jwt(&keys, &token, URL, b"", NOW, 1),
                    Err(MbVerifyError::UnsupportedAlgorithm),
                    "{alg}"
                );
            }
        }
        // An HS256 token re-labelled as HS384 does not verify.
        let token = hs256(&claims);
        let sig = token.rsplit('.').next().unwrap();
        let relabelled = forge(r#"{"alg":"HS384","typ":"JWT"}"#, &claims, sig);
        assert_eq!(
            verify_jwt(&keys, &relabelled, URL, b"", NOW, 1),
            Err(MbVerifyError::BadSignature)
        );
    }

    #[test]
    fn jwt_claims_required() {
        let keys = vec![KEY.to_vec()];
        let cases: [(&str, Value, MbVerifyError); 7] = [
            ("iss", Value::Null, MbVerifyError::BadClaims("iss")),
            (
                "iss",
                Value::from("Messagebird"),
                MbVerifyError::BadClaims("iss"),
            ),
            ("exp", Value::Null, MbVerifyError::BadClaims("exp")),
            ("exp", Value::from("soon"), MbVerifyError::BadClaims("exp")),
            ("jti", Value::from(""), MbVerifyError::BadClaims("jti")),
            (
                "url_hash",
                Value::Null,
                MbVerifyError::BadClaims("url_hash"),
            ),
            (
                "url_hash",
                Value::from(hex_sha256(b"https://evil.example/")),
                MbVerifyError::BadClaims("url_hash"),
            ),
        ];
        for (name, value, expected) in cases {
            let mut claims = good_claims();
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(name);
            } else {
                claims[name] = value;
            }
            assert_eq!(
                verify_jwt(&keys, &hs256(&claims), URL, b"", NOW, 1),
                Err(expected),
                "{name}"
            );
        }
        // nbf is optional (MessageBird's Go SDK accepts tokens without it).
        let mut claims = good_claims();
        claims.as_object_mut().unwrap().remove("nbf");
        assert_eq!(verify_jwt(&keys, &hs256(&claims), URL, b"", NOW, 1), Ok(()));
        // payload_hash: present exactly when the body is non-empty.
        let mut claims = good_claims();
        claims["payload_hash"] = Value::from(hex_sha256(b"body"));
        let token = hs256(&claims);
        assert_eq!(verify_jwt(&keys, &token, URL, b"body", NOW, 1), Ok(()));
        assert!(matches!(
            verify_jwt(&keys, &token, URL, b"", NOW, 1),
            Err(MbVerifyError::BadClaims(_))
        ));
        assert!(matches!(
            verify_jwt(&keys, &token, URL, b"bodz", NOW, 1),
            Err(MbVerifyError::BadClaims(_))
        ));
        assert!(matches!(
            verify_jwt(&keys, &hs256(&good_claims()), URL, b"body", NOW, 1),
            Err(MbVerifyError::BadClaims(_))
        ));
    }

    #[test]
    fn display_has_no_secrets() {
        let all = [
            MbVerifyError::Missing,
            MbVerifyError::Malformed,
            MbVerifyError::BadSignature,
            MbVerifyError::Stale,
            MbVerifyError::NotYetValid,
            MbVerifyError::BadClaims("url_hash"),
            MbVerifyError::UnsupportedAlgorithm,
        ];
        for e in all {
            assert!(!e.to_string().is_empty());
        }
    }

    fn flip(bytes: &mut [u8], idx: usize, bit: u8) {
        let i = idx % bytes.len();
        bytes[i] ^= 1 << bit;
    }

    fn params() -> Vec<(String, String)> {
        vec![
            ("id".into(), "eef0ab57a9e049be946f3821568c2b2e".into()),
            ("recipient".into(), "31612345678".into()),
            ("statusDatetime".into(), "2019-01-11T09:17:11+00:00".into()),
            ("status".into(), "delivered".into()),
        ]
    }

    fn encode_params(p: &[(String, String)]) -> String {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(p)
            .finish()
    }

    proptest! {
        #[test]
        fn legacy_mutations_rejected(which in 0u8..4, idx in 0usize..10_000, delta in 1u8..94, bit in 0u8..8) {
            let keys = vec![KEY.to_vec()];
            let ts = NOW.to_string();
            let p = params();
            let query = encode_params(&p);
            let body = br#"{"id":"eef0ab57","status":"delivered"}"#.to_vec();
            let sig = sign_legacy(KEY, &ts, &query, &body);
            prop_assert_eq!(verify_legacy(&keys, &ts, &query, &body, &sig, NOW, 300), Ok(()));
            let bad = match which {
                0 => {
                    let mut b = body.clone();
                    flip(&mut b, idx, bit);
                    verify_legacy(&keys, &ts, &query, &b, &sig, NOW, 300)
                }
                1 => {
                    let mut q = p.clone();
                    let k = idx % q.len();
                    q[k].1 = mutate_ascii(&q[k].1, idx / q.len(), delta);
                    verify_legacy(&keys, &ts, &encode_params(&q), &body, &sig, NOW, 300)
                }
                2 => {
                    // Any digit change to the timestamp (still within the window or not).
                    let mut t = ts.clone().into_bytes();
                    let i = idx % t.len();
                    t[i] = b'0' + ((t[i] - b'0' + delta % 9 + 1) % 10);
                    let t = String::from_utf8(t).unwrap();
                    verify_legacy(&keys, &t, &query, &body, &sig, NOW, i64::MAX)
                }
                _ => verify_legacy(&keys, &ts, &query, &body, &mutate_ascii(&sig, idx, delta), NOW, 300),
            };
            prop_assert!(bad.is_err());
        }

        #[test]
        fn legacy_raw_query_mutation_is_canonical(idx in 0usize..10_000, delta in 1u8..94) {
            // A raw-query byte change is rejected exactly when it changes the canonical query.
            let keys = vec![KEY.to_vec()];
            let ts = NOW.to_string();
            let query = encode_params(&params());
            let sig = sign_legacy(KEY, &ts, &query, b"");
            let m = mutate_ascii(&query, idx, delta);
            let same = QUERY_STYLES.iter().any(|s| canonical_query(&m, *s) == canonical_query(&query, QueryStyle::Go));
            prop_assert_eq!(verify_legacy(&keys, &ts, &m, b"", &sig, NOW, 300).is_ok(), same);
        }

        #[test]
        fn jwt_mutations_rejected(which in 0u8..3, idx in 0usize..10_000, delta in 1u8..94, bit in 0u8..8) {
            let keys = vec![KEY.to_vec()];
            let body = br#"{"id":"x","status":"delivered"}"#.to_vec();
            let token = sign_jwt(KEY, Algorithm::HS256, URL, &body, NOW, NOW + 60, "jti-1").unwrap();
            prop_assert_eq!(verify_jwt(&keys, &token, URL, &body, NOW, 1), Ok(()));
            let bad = match which {
                0 => {
                    let mut b = body.clone();
                    flip(&mut b, idx, bit);
                    verify_jwt(&keys, &token, URL, &b, NOW, 1)
                }
                1 => verify_jwt(&keys, &token, &mutate_ascii(URL, idx, delta), &body, NOW, 1),
                _ => verify_jwt(&keys, &mutate_ascii(&token, idx, delta), URL, &body, NOW, 1),
            };
            prop_assert!(bad.is_err());
        }
    }
}
