//! `Authorization: Bearer <token>` against several accepted tokens (Inteliquent).

use super::{AuthError, Incoming, Verified, Verifier, authorization};
use crate::secret::SecretList;

/// Accepts a call whose bearer token is one of the configured tokens.
#[derive(Debug)]
pub struct BearerVerifier {
    tokens: SecretList,
}

impl BearerVerifier {
    /// A verifier accepting any of `tokens` (at least one).
    pub fn new(tokens: SecretList) -> Self {
        Self { tokens }
    }
}

impl Verifier for BearerVerifier {
    fn verify<'a>(&self, incoming: &'a Incoming) -> Result<Verified<'a>, AuthError> {
        let token = authorization(incoming, "Bearer")?;
        if self.tokens.contains(token.as_bytes()) {
            Ok(Verified::vouch(incoming))
        } else {
            Err(AuthError::Forbidden("bearer token not accepted"))
        }
    }

    fn describe(&self) -> String {
        format!("bearer token ({} accepted)", self.tokens.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::incoming;

    #[test]
    fn tokens_rotate_and_errors_distinguish_missing_from_wrong() {
        let v = BearerVerifier::new(SecretList::parse("old-token,new-token"));
        for token in ["old-token", "new-token"] {
            let req = incoming("/", &[("authorization", &format!("Bearer {token}"))], b"");
            assert!(v.verify(&req).is_ok());
        }
        let req = incoming("/", &[("authorization", "bearer new-token")], b"");
        assert!(v.verify(&req).is_ok(), "scheme is case-insensitive");
        let cases = [
            (vec![], AuthError::Missing("no Authorization header")),
            (
                vec![("authorization", "Bearer")],
                AuthError::Missing("malformed Authorization header"),
            ),
            (
                vec![("authorization", "Basic abc")],
                AuthError::Missing("wrong Authorization scheme"),
            ),
            (
                vec![("authorization", "Bearer nope")],
                AuthError::Forbidden("bearer token not accepted"),
            ),
            (
                vec![("authorization", "Bearer new-toke")],
                AuthError::Forbidden("bearer token not accepted"),
            ),
        ];
        for (headers, want) in cases {
            let req = incoming("/", &headers, b"");
            assert_eq!(v.verify(&req).unwrap_err(), want);
        }
    }
}
