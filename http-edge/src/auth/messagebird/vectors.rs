//! MessageBird's signature vectors (`tests/fixtures/messagebird_vectors.json`: the legacy HMAC
//! and JWT sections), shared by the signature and verifier tests.

use serde::Deserialize;

/// The whole fixture.
#[derive(Deserialize)]
pub(super) struct File {
    pub(super) legacy_hmac: LegacySection,
    pub(super) jwt: JwtSection,
}

/// The legacy `MessageBird-Signature` vectors.
#[derive(Deserialize)]
pub(super) struct LegacySection {
    pub(super) vectors: Vec<LegacyVector>,
}

/// One legacy HMAC vector.
#[derive(Deserialize)]
pub(super) struct LegacyVector {
    pub(super) id: String,
    pub(super) signing_key: String,
    pub(super) timestamp_header: String,
    /// Either the raw query string ...
    pub(super) raw_query_string: Option<String>,
    /// ... or the decoded parameters in request order.
    pub(super) query_params: Option<Vec<(String, String)>>,
    pub(super) canonical_query: String,
    pub(super) body: String,
    pub(super) string_to_sign_hex: String,
    pub(super) expected_signature: String,
    pub(super) expected_valid: bool,
}

/// The `MessageBird-Signature-JWT` vectors, plus the Go SDK's extra ones.
#[derive(Deserialize)]
pub(super) struct JwtSection {
    pub(super) vectors: Vec<JwtVector>,
    pub(super) extra_vectors: Vec<JwtVector>,
}

/// One JWT vector.
#[derive(Deserialize)]
pub(super) struct JwtVector {
    pub(super) name: String,
    pub(super) secret: Option<String>,
    pub(super) url: String,
    pub(super) payload: Option<String>,
    pub(super) token: String,
    pub(super) valid: bool,
    pub(super) reason: Option<String>,
    pub(super) now_unix: Option<i64>,
    pub(super) timestamp: String,
}

/// The fixture, parsed.
pub(super) fn load() -> File {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/messagebird_vectors.json"
    );
    let text = std::fs::read_to_string(path).expect("read messagebird_vectors.json");
    serde_json::from_str(&text).expect("parse messagebird_vectors.json")
}
