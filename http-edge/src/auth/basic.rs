//! HTTP Basic callback credentials (Bandwidth), against several accepted `user:password` pairs.

use base64::{Engine, engine::general_purpose::STANDARD};

use super::{AuthError, Incoming, Verified, Verifier, authorization};
use crate::secret::SecretList;

/// Accepts a call whose Basic credentials are one of the configured `user:password` pairs.
#[derive(Debug)]
pub struct BasicVerifier {
    pairs: SecretList,
}

impl BasicVerifier {
    /// A verifier accepting any of `pairs`, each `user:password`.
    pub fn new(pairs: SecretList) -> Self {
        Self { pairs }
    }
}

impl Verifier for BasicVerifier {
    fn verify<'a>(&self, incoming: &'a Incoming) -> Result<Verified<'a>, AuthError> {
        let encoded = authorization(incoming, "Basic")?;
        let decoded = STANDARD
            .decode(encoded)
            .map_err(|_| AuthError::Missing("Basic credentials are not base64"))?;
        if self.pairs.contains(&decoded) {
            Ok(Verified::vouch(incoming))
        } else {
            Err(AuthError::Invalid("Basic credentials not accepted"))
        }
    }

    fn describe(&self) -> String {
        format!(
            "HTTP Basic ({} credential pairs accepted)",
            self.pairs.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::incoming;

    fn basic(pair: &str) -> String {
        format!("Basic {}", STANDARD.encode(pair))
    }

    #[test]
    fn accepts_each_configured_pair_only() {
        let v = BasicVerifier::new(SecretList::parse("bw:first,bw:second"));
        for pair in ["bw:first", "bw:second"] {
            let req = incoming("/", &[("authorization", &basic(pair))], b"");
            assert!(v.verify(&req).is_ok(), "{pair}");
        }
        for (value, want) in [
            (
                basic("bw:third"),
                AuthError::Invalid("Basic credentials not accepted"),
            ),
            (
                basic("bw:firs"),
                AuthError::Invalid("Basic credentials not accepted"),
            ),
            (
                "Basic !!!".to_owned(),
                AuthError::Missing("Basic credentials are not base64"),
            ),
            (
                "Bearer bw:first".to_owned(),
                AuthError::Missing("wrong Authorization scheme"),
            ),
        ] {
            let req = incoming("/", &[("authorization", &value)], b"");
            assert_eq!(v.verify(&req).unwrap_err(), want);
        }
    }
}
