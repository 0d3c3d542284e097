//! Secrets that cannot be printed by accident, loaded from flags, environment or files.

use std::fmt;

use subtle::ConstantTimeEq;

/// One secret value (token, password, signing key). `Debug` prints `[redacted]`; there is no
/// `Display`, and the bytes are reachable only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<[u8]>);

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into().into_boxed_slice())
    }

    /// The secret bytes, for computing MACs and comparisons. Never log the result.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Compares with `other` in constant time (for equal lengths).
    pub fn matches(&self, other: &[u8]) -> bool {
        self.0.len() == other.len() && bool::from(self.0.as_ref().ct_eq(other))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Several accepted secrets (rotation, subaccounts), from a comma- or newline-separated list.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretList(Vec<Secret>);

impl SecretList {
    /// Parses a comma- or newline-separated list; blanks around items are ignored.
    pub fn parse(list: &str) -> Self {
        Self(
            list.split([',', '\n'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Secret::new(s.as_bytes()))
                .collect(),
        )
    }

    /// The secrets.
    pub fn iter(&self) -> impl Iterator<Item = &Secret> {
        self.0.iter()
    }

    /// Whether no secret is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many secrets are configured.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether any secret equals `candidate`; every secret is compared, in constant time.
    pub fn contains(&self, candidate: &[u8]) -> bool {
        self.0
            .iter()
            .fold(false, |found, s| found | s.matches(candidate))
    }

    /// Adds the secrets of `other`.
    pub fn extend(&mut self, other: SecretList) {
        self.0.extend(other.0);
    }

    /// Every secret's bytes, for computing MACs over them in turn. Never log the result.
    pub fn exposed(&self) -> Vec<&[u8]> {
        self.0.iter().map(Secret::expose).collect()
    }
}

impl FromIterator<Secret> for SecretList {
    fn from_iter<I: IntoIterator<Item = Secret>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Debug for SecretList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} redacted]", self.0.len())
    }
}

/// clap value parser for a secret list given inline.
pub fn parse_list(value: &str) -> Result<SecretList, String> {
    Ok(SecretList::parse(value))
}

/// Reads a secret list from a file (e.g. a mounted Kubernetes Secret).
pub fn read_list_file(path: &std::path::Path) -> Result<SecretList, String> {
    std::fs::read_to_string(path)
        .map(|text| SecretList::parse(&text))
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let list = SecretList::parse("alpha, beta\ngamma,,");
        assert_eq!(list.len(), 3);
        assert_eq!(format!("{list:?}"), "[3 redacted]");
        assert_eq!(format!("{:?}", Secret::new("alpha")), "[redacted]");
    }

    #[test]
    fn contains_compares_whole_values() {
        let list = SecretList::parse("alpha,beta");
        assert!(list.contains(b"beta"));
        assert!(!list.contains(b"bet"));
        assert!(!list.contains(b"betaa"));
        assert!(!SecretList::default().contains(b""));
    }
}
