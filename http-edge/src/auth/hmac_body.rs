//! Generic body HMAC: `sha256=<hex>` or bare `<hex>` of HMAC-SHA256(key, raw body bytes).
//!
//! Used for Bandwidth's optional `X-Bandwidth-Signature`, Inteliquent's optional
//! `X-Inteliquent-Signature` (both our own definitions) and the service's own generic
//! `MessageBird-Signature: sha256=<hex>` form. It signs the raw request body only (no URL, no
//! timestamp), so it does not protect against replay; prefer the carriers' own schemes.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{AuthError, Incoming, Verified, Verifier};
use crate::secret::SecretList;

type HmacSha256 = Hmac<Sha256>;

/// Accepts `sha256=<64 hex digits>` or the bare 64 hex digits (either letter case) of
/// HMAC-SHA256(key, body); any configured non-empty key may match. Constant-time comparison.
pub(crate) fn verify_hmac_sha256_body<K: AsRef<[u8]>>(
    keys: &[K],
    body: &[u8],
    header: &str,
) -> bool {
    let header = header.trim();
    let hex_part = header.strip_prefix("sha256=").unwrap_or(header);
    if hex_part.len() != 64 {
        return false;
    }
    let Ok(claimed) = hex::decode(hex_part) else {
        return false;
    };
    let mut ok = false;
    for key in keys.iter().map(AsRef::as_ref).filter(|k| !k.is_empty()) {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
        mac.update(body);
        ok |= mac.verify_slice(&claimed).is_ok();
    }
    ok
}

/// `sha256=<lowercase hex>` for `body` under `key` (tests).
#[cfg(test)]
pub(crate) fn sign_hmac_sha256_body(key: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Verifies a header holding HMAC-SHA256(key, raw body), against several keys.
#[derive(Debug)]
pub struct BodyHmacVerifier {
    header: &'static str,
    keys: SecretList,
    missing: &'static str,
    mismatch: AuthError,
}

impl BodyHmacVerifier {
    /// Bandwidth: `X-Bandwidth-Signature`; missing or wrong is a 401.
    pub fn bandwidth(keys: SecretList) -> Self {
        Self {
            header: "X-Bandwidth-Signature",
            keys,
            missing: "no X-Bandwidth-Signature header",
            mismatch: AuthError::Invalid("X-Bandwidth-Signature does not match the body"),
        }
    }

    /// Inteliquent: `X-Inteliquent-Signature`; missing is a 401, wrong a 403 (as for its
    /// bearer tokens).
    pub fn inteliquent(keys: SecretList) -> Self {
        Self {
            header: "X-Inteliquent-Signature",
            keys,
            missing: "no X-Inteliquent-Signature header",
            mismatch: AuthError::Forbidden("X-Inteliquent-Signature does not match the body"),
        }
    }
}

impl Verifier for BodyHmacVerifier {
    fn verify<'a>(&self, incoming: &'a Incoming) -> Result<Verified<'a>, AuthError> {
        let value = incoming
            .header(self.header)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(AuthError::Missing(self.missing))?;
        if verify_hmac_sha256_body(&self.keys.exposed(), &incoming.body, value) {
            Ok(Verified::vouch(incoming))
        } else {
            Err(self.mismatch)
        }
    }

    fn describe(&self) -> String {
        format!(
            "{}: sha256=<hex> HMAC-SHA256 of the raw body ({} key(s))",
            self.header,
            self.keys.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::incoming;
    use proptest::prelude::*;

    #[test]
    fn known_answer_and_forms() {
        // RFC 4231 test case 2.
        let key = b"Jefe".to_vec();
        let body = b"what do ya want for nothing?";
        let hex = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(sign_hmac_sha256_body(&key, body), format!("sha256={hex}"));
        let keys = vec![key];
        assert!(verify_hmac_sha256_body(
            &keys,
            body,
            &format!("sha256={hex}")
        ));
        assert!(verify_hmac_sha256_body(&keys, body, hex));
        assert!(verify_hmac_sha256_body(&keys, body, &hex.to_uppercase()));
        assert!(!verify_hmac_sha256_body(
            &keys,
            b"what do ya want for nothing!",
            hex
        ));
        assert!(!verify_hmac_sha256_body(&keys, body, &hex[..62]));
        assert!(!verify_hmac_sha256_body(&keys, body, "sha1=00"));
        assert!(!verify_hmac_sha256_body::<&[u8]>(&[], body, hex));
        assert!(!verify_hmac_sha256_body(
            &[Vec::new()],
            b"",
            &sign_hmac_sha256_body(b"", b"")
        ));
    }

    #[test]
    fn key_rotation() {
        let keys = vec![b"old".to_vec(), b"new".to_vec()];
        assert!(verify_hmac_sha256_body(
            &keys,
            b"x",
            &sign_hmac_sha256_body(b"old", b"x")
        ));
        assert!(verify_hmac_sha256_body(
            &keys,
            b"x",
            &sign_hmac_sha256_body(b"new", b"x")
        ));
        assert!(!verify_hmac_sha256_body(
            &keys,
            b"x",
            &sign_hmac_sha256_body(b"other", b"x")
        ));
    }

    #[test]
    fn verifiers_require_the_header_and_split_401_403() {
        let keys = SecretList::parse("old-key,new-key");
        let body = br#"[{"type":"message-received"}]"#;
        let bw = BodyHmacVerifier::bandwidth(keys.clone());
        let iq = BodyHmacVerifier::inteliquent(keys);
        for key in ["old-key", "new-key"] {
            let sig = sign_hmac_sha256_body(key.as_bytes(), body);
            let req = incoming("/", &[("x-bandwidth-signature", &sig)], body);
            assert!(bw.verify(&req).is_ok(), "{key}");
            let req = incoming("/", &[("x-inteliquent-signature", &sig)], body);
            assert!(iq.verify(&req).is_ok(), "{key}");
        }
        let bad = sign_hmac_sha256_body(b"other", body);
        let req = incoming("/", &[("x-bandwidth-signature", &bad)], body);
        assert_eq!(
            bw.verify(&req).unwrap_err(),
            AuthError::Invalid("X-Bandwidth-Signature does not match the body")
        );
        let req = incoming("/", &[("x-inteliquent-signature", &bad)], body);
        assert!(matches!(iq.verify(&req), Err(AuthError::Forbidden(_))));
        let req = incoming("/", &[], body);
        assert_eq!(
            bw.verify(&req).unwrap_err(),
            AuthError::Missing("no X-Bandwidth-Signature header")
        );
        assert!(matches!(iq.verify(&req), Err(AuthError::Missing(_))));
        assert!(!bw.describe().contains("key,") && bw.describe().contains("2 key(s)"));
    }

    proptest! {
        #[test]
        fn verifier_rejects_any_changed_body_byte(idx in any::<usize>(), bit in 0u8..8) {
            let body = br#"{"messageId":"iq-1","text":"hello"}"#.to_vec();
            let v = BodyHmacVerifier::inteliquent(SecretList::parse("k"));
            let sig = sign_hmac_sha256_body(b"k", &body);
            prop_assert!(v.verify(&incoming("/", &[("x-inteliquent-signature", &sig)], &body)).is_ok());
            let mut m = body.clone();
            let i = idx % m.len();
            m[i] ^= 1 << bit;
            prop_assert!(v.verify(&incoming("/", &[("x-inteliquent-signature", &sig)], &m)).is_err());
        }

        #[test]
        fn body_mutation_rejected(body in proptest::collection::vec(any::<u8>(), 1..200), idx in any::<usize>(), bit in 0u8..8) {
            let keys = vec![b"k".to_vec()];
            let sig = sign_hmac_sha256_body(b"k", &body);
            prop_assert!(verify_hmac_sha256_body(&keys, &body, &sig));
            let mut m = body.clone();
            let i = idx % m.len();
            m[i] ^= 1 << bit;
            prop_assert!(!verify_hmac_sha256_body(&keys, &m, &sig));
        }
    }
}
