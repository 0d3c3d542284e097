//! Shared by the fuzz targets: how an input becomes a webhook call, and the verifiers with the
//! fuzzing secrets.
//!
//! An input is an HTTP/1-like text, so seeds are readable and libFuzzer's mutations stay close to
//! real calls:
//!
//! ```text
//! POST /twilio?x=1
//! Content-Type: application/x-www-form-urlencoded
//! X-Twilio-Signature: …
//!
//! <raw body bytes>
//! ```
//!
//! `fuzz/seeds.py` writes the seed corpus in this form, signed with [`secrets`].
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use http_edge::{
    auth::{Disabled, Incoming, Verified, Verifier},
    carriers::Webhook,
};

/// The fuzzing secrets (also in `fuzz/seeds.py`): seeds signed with them reach the code after a
/// successful verification.
pub mod secrets {
    /// `--public-base-url`.
    pub const PUBLIC_BASE_URL: &str = "https://hooks.example.com";
    /// Bandwidth Basic credentials.
    pub const BANDWIDTH_BASIC: &str = "fuzz-user:fuzz-pass";
    /// Bandwidth `X-Bandwidth-Signature` key.
    pub const BANDWIDTH_KEY: &str = "fuzz-bandwidth-key";
    /// Twilio auth token.
    pub const TWILIO_TOKEN: &str = "fuzz-twilio-token";
    /// MessageBird signing key.
    pub const MESSAGEBIRD_KEY: &str = "fuzz-messagebird-key";
    /// Inteliquent bearer token.
    pub const INTELIQUENT_TOKEN: &str = "fuzz-inteliquent-token";
    /// Inteliquent `X-Inteliquent-Signature` key.
    pub const INTELIQUENT_KEY: &str = "fuzz-inteliquent-key";
}

/// The call an input describes, or `None` when its first line or headers cannot be an HTTP
/// request at all (hyper would have refused it before the edge saw it).
pub fn incoming(data: &[u8]) -> Option<Incoming> {
    let (head, body) = match find(data, b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &b""[..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split('\n');
    let (method, target) = lines.next()?.split_once(' ')?;
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let uri: Uri = target.trim_end().parse().ok()?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
            HeaderValue::from_str(value.trim()).ok()?,
        );
    }
    // The router gives Bandwidth's handler its `{destination}` path segment, and nobody else one.
    let destination = uri
        .path()
        .strip_prefix("/bandwidth/")
        .filter(|d| !d.is_empty() && !d.contains('/'))
        .map(str::to_owned);
    Some(Incoming {
        method,
        uri,
        headers,
        body: Bytes::copy_from_slice(body),
        peer: SocketAddr::from(([127, 0, 0, 1], 9)),
        destination,
    })
}

/// Runs `verifiers` over the call, parses it whenever one vouches for it, and parses it
/// unverified too (development mode), so the parser sees every input. Then renders the reply.
/// Nothing here may panic, whatever the input.
pub fn exercise<W: Webhook>(request: &Incoming, verifiers: &[&dyn Verifier]) {
    for verifier in verifiers {
        let _ = verifier.describe();
        if let Ok(verified) = verifier.verify(request) {
            parse::<W>(&verified);
        }
    }
    match Disabled.verify(request) {
        Ok(verified) => parse::<W>(&verified),
        Err(_) => unreachable!("the disabled verifier accepts everything"),
    }
}

fn parse<W: Webhook>(verified: &Verified<'_>) {
    if let Ok(events) = W::parse(verified) {
        assert!(!events.is_empty(), "{}: a parse yielded no event", W::NAME);
        let _ = W::accepted(http_edge::carriers::message_id(&events[0]));
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
