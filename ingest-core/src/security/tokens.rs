//! Per-submitter bearer tokens for the core's gRPC: `name:token` pairs, compared in constant
//! time, that name the submitter in logs and metrics.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest submitter name (it becomes a metric label).
const MAX_NAME: usize = 64;
/// Shortest accepted token: anything shorter is guessable.
pub const MIN_TOKEN_BYTES: usize = 16;

/// One accepted token and the submitter it names. Only a SHA-256 digest of the token is kept,
/// so comparisons take the same time whatever the presented token's length, and `Debug` shows
/// nothing secret.
#[derive(Clone)]
struct Token {
    name: String,
    digest: [u8; 32],
}

/// The accepted tokens. Several may name the same submitter (rotation: old and new together).
#[derive(Clone, Default)]
pub struct TokenSet(Vec<Token>);

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TokenSet({} tokens for {:?})",
            self.0.len(),
            self.names()
        )
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl TokenSet {
    /// Parses `name:token` entries, one per line or comma-separated; blank lines and lines
    /// starting with `#` are skipped. Errors name the entry by position, never its token.
    pub fn parse(text: &str, source: &str) -> Result<Self, String> {
        let mut tokens = Vec::new();
        let entries = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty());
        for (i, entry) in entries.enumerate() {
            let position = i + 1;
            let Some((name, token)) = entry.split_once(':') else {
                return Err(format!(
                    "{source}: entry {position} is not `name:token` (value not shown)"
                ));
            };
            let (name, token) = (name.trim(), token.trim());
            if !valid_name(name) {
                return Err(format!(
                    "{source}: entry {position}: the submitter name must be 1-{MAX_NAME} letters, digits, '.', '_' or '-'"
                ));
            }
            if token.len() < MIN_TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "{source}: entry {position} ({name}): the token must be at least {MIN_TOKEN_BYTES} printable ASCII characters without spaces"
                ));
            }
            tokens.push(Token {
                name: name.to_owned(),
                digest: Sha256::digest(token.as_bytes()).into(),
            });
        }
        Ok(Self(tokens))
    }

    /// Adds the tokens of `other`.
    pub fn extend(&mut self, other: TokenSet) {
        self.0.extend(other.0);
    }

    /// Whether no token is accepted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many tokens are accepted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The submitter names, sorted, once each.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.0.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The submitter that `presented` belongs to. Every accepted token is compared, in
    /// constant time, whether or not an earlier one matched.
    pub fn submitter(&self, presented: &[u8]) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for token in &self.0 {
            let matches = bool::from(token.digest.ct_eq(&digest));
            if matches && found.is_none() {
                found = Some(token.name.as_str());
            }
        }
        found
    }
}

/// The token of an `authorization: Bearer <token>` header value (scheme case-insensitive).
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "edge-token-aaaaaaaaaaaa";
    const B: &str = "edge-token-bbbbbbbbbbbb";

    #[test]
    fn tokens_name_their_submitter_and_never_print() {
        let set = TokenSet::parse(
            &format!("# rotation\nedge:{A}\n\nedge:{B}, batch-loader:{A}x\n"),
            "f",
        )
        .unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.names(), ["batch-loader", "edge"]);
        assert_eq!(set.submitter(A.as_bytes()), Some("edge"));
        assert_eq!(set.submitter(B.as_bytes()), Some("edge"));
        assert_eq!(
            set.submitter(format!("{A}x").as_bytes()),
            Some("batch-loader")
        );
        assert_eq!(set.submitter(&A.as_bytes()[1..]), None);
        assert_eq!(set.submitter(b""), None);
        let shown = format!("{set:?}");
        assert!(!shown.contains(A) && shown.contains("edge"), "{shown}");
    }

    #[test]
    fn bad_entries_are_reported_without_their_token() {
        for (text, expect) in [
            ("no-colon-secret-value-here", "not `name:token`"),
            ("bad name:aaaaaaaaaaaaaaaaaaaa", "submitter name"),
            (":aaaaaaaaaaaaaaaaaaaa", "submitter name"),
            ("edge:short-secret", "at least 16"),
            ("edge:has a space inside it!!", "at least 16"),
        ] {
            let err = TokenSet::parse(text, "tokens.txt").unwrap_err();
            assert!(err.contains(expect), "{text}: {err}");
            assert!(err.starts_with("tokens.txt: entry 1"), "{err}");
            assert!(!err.contains("secret") && !err.contains("aaaa"), "{err}");
        }
        assert!(TokenSet::parse("# nothing\n\n", "f").unwrap().is_empty());
    }

    #[test]
    fn bearer_values_are_parsed_strictly() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"abc"), None);
    }
}
