//! Authenticity of webhook calls: one verifier per carrier behind one trait.
//!
//! Handlers only get a [`Verified`] request from a [`Verifier`], so nothing unverified can be
//! parsed or submitted. Verification runs on the raw bytes, before any parsing.

mod basic;
mod bearer;
mod hmac_body;
mod messagebird;
mod public_url;
mod twilio;

pub use basic::BasicVerifier;
pub use bearer::BearerVerifier;
pub use hmac_body::BodyHmacVerifier;
pub use messagebird::{MessageBirdPolicy, MessageBirdScheme, MessageBirdVerifier};
pub use public_url::PublicUrl;
pub(crate) use public_url::parse_net;
pub use twilio::TwilioVerifier;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};

/// A webhook call exactly as received, before verification.
#[derive(Debug)]
pub struct Incoming {
    /// HTTP method.
    pub method: Method,
    /// Request target as received (path and raw query, byte for byte).
    pub uri: Uri,
    /// Request headers.
    pub headers: HeaderMap,
    /// Raw body.
    pub body: Bytes,
    /// The TCP peer (the ingress controller or proxy in front of us, usually).
    pub peer: SocketAddr,
    /// Bandwidth's `{destination}` path parameter.
    pub destination: Option<String>,
}

impl Incoming {
    /// The value of header `name` as text, if present and valid.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The raw query string (without `?`), empty when absent.
    pub fn raw_query(&self) -> &str {
        self.uri.query().unwrap_or("")
    }
}

/// A call whose authenticity was checked (or explicitly not checked, in development).
#[derive(Debug)]
pub struct Verified<'a>(&'a Incoming);

impl<'a> Verified<'a> {
    /// Only verifiers in this module vouch for a request.
    fn vouch(incoming: &'a Incoming) -> Self {
        Self(incoming)
    }

    /// A call read back from the quarantine, which only holds calls that were verified on
    /// arrival (the scheme is in the record). Only the replay of quarantined records may use it.
    pub fn from_quarantine(incoming: &'a Incoming) -> Self {
        Self(incoming)
    }

    /// The verified call.
    pub fn request(&self) -> &'a Incoming {
        self.0
    }
}

/// Why a call was rejected. The reason is logged; the reply says only 401 or 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials or signature, or a malformed one (401).
    #[error("missing or malformed credentials: {0}")]
    Missing(&'static str),
    /// Credentials or signature present but wrong (401).
    #[error("invalid credentials: {0}")]
    Invalid(&'static str),
    /// Authenticated but not accepted (403).
    #[error("credentials not accepted: {0}")]
    Forbidden(&'static str),
    /// This carrier has no secret configured and verification is on: fail closed (401).
    #[error("no credentials configured for this carrier")]
    NotConfigured,
}

/// Checks one carrier's calls.
pub trait Verifier: Send + Sync + 'static {
    /// Verifies `incoming` or says why not.
    fn verify<'a>(&self, incoming: &'a Incoming) -> Result<Verified<'a>, AuthError>;
    /// The scheme in force, for the start-up log (never includes secrets).
    fn describe(&self) -> String;
}

/// Accepts everything: only for local development, chosen explicitly.
#[derive(Debug, Clone, Copy)]
pub struct Disabled;

impl Verifier for Disabled {
    fn verify<'a>(&self, incoming: &'a Incoming) -> Result<Verified<'a>, AuthError> {
        Ok(Verified::vouch(incoming))
    }

    fn describe(&self) -> String {
        "DISABLED (development only: every call is accepted unverified)".to_owned()
    }
}

/// Rejects everything: a carrier with no secret configured.
#[derive(Debug, Clone, Copy)]
pub struct FailClosed;

impl Verifier for FailClosed {
    fn verify<'a>(&self, _incoming: &'a Incoming) -> Result<Verified<'a>, AuthError> {
        Err(AuthError::NotConfigured)
    }

    fn describe(&self) -> String {
        "no secret configured: every call is rejected (fail closed)".to_owned()
    }
}

/// Requires every one of several verifiers (e.g. Basic credentials and a body HMAC); the first
/// failure is the reason.
pub struct AllOf(Vec<Box<dyn Verifier>>);

impl AllOf {
    /// Accepts a call only when each of `verifiers` does, checked in order.
    pub fn new(verifiers: Vec<Box<dyn Verifier>>) -> Self {
        Self(verifiers)
    }
}

impl std::fmt::Debug for AllOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Verifier for AllOf {
    fn verify<'a>(&self, incoming: &'a Incoming) -> Result<Verified<'a>, AuthError> {
        if self.0.is_empty() {
            return Err(AuthError::NotConfigured);
        }
        for verifier in &self.0 {
            verifier.verify(incoming)?;
        }
        Ok(Verified::vouch(incoming))
    }

    fn describe(&self) -> String {
        let parts: Vec<String> = self.0.iter().map(|v| v.describe()).collect();
        parts.join(" AND ")
    }
}

/// Splits `Authorization: <scheme> <credentials>`, matching the scheme case-insensitively.
fn authorization<'a>(incoming: &'a Incoming, scheme: &str) -> Result<&'a str, AuthError> {
    let value = incoming
        .header("authorization")
        .ok_or(AuthError::Missing("no Authorization header"))?;
    let (given, credentials) = value
        .split_once(' ')
        .ok_or(AuthError::Missing("malformed Authorization header"))?;
    if !given.eq_ignore_ascii_case(scheme) {
        return Err(AuthError::Missing("wrong Authorization scheme"));
    }
    let credentials = credentials.trim();
    if credentials.is_empty() {
        return Err(AuthError::Missing("empty credentials"));
    }
    Ok(credentials)
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A POST to `uri` with the given headers and body, from loopback.
    pub(crate) fn incoming(uri: &str, headers: &[(&str, &str)], body: &[u8]) -> Incoming {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Incoming {
            method: Method::POST,
            uri: uri.parse().unwrap(),
            headers: map,
            body: Bytes::copy_from_slice(body),
            peer: "127.0.0.1:9".parse().unwrap(),
            destination: None,
        }
    }

    /// Changes byte `idx % len` of `bytes` to another printable ASCII byte (so text stays
    /// valid UTF-8), never a no-op; `delta` (1..94) picks which one.
    pub(crate) fn mutate_ascii_in_place(bytes: &mut [u8], idx: usize, delta: u8) {
        let i = idx % bytes.len();
        let b = bytes[i];
        let base = if b.is_ascii_graphic() { b } else { b'a' };
        let mut n = ((base - 0x21 + delta) % 94) + 0x21;
        if n == b {
            n = if n == b'~' { b'!' } else { n + 1 };
        }
        bytes[i] = n;
    }

    /// [`mutate_ascii_in_place`] on a copy of `s`.
    pub(crate) fn mutate_ascii(s: &str, idx: usize, delta: u8) -> String {
        let mut bytes = s.as_bytes().to_vec();
        mutate_ascii_in_place(&mut bytes, idx, delta);
        String::from_utf8(bytes).unwrap()
    }
}
