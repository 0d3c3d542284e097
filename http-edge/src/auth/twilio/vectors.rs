//! Twilio's official signature vectors (`tests/fixtures/twilio_vectors.json`), shared by the
//! validator and verifier tests.

use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    vectors: Vec<Vector>,
}

/// One vector: a request URL with form parameters (or a JSON body), the token and the expected
/// outcome.
#[derive(Deserialize)]
pub(super) struct Vector {
    pub(super) id: String,
    pub(super) auth_token: String,
    pub(super) request_url: String,
    pub(super) params: Vec<(String, String)>,
    pub(super) body: Option<String>,
    pub(super) expected_signature: String,
    pub(super) expected_valid: bool,
}

/// All vectors in the fixture, in file order.
pub(super) fn load() -> Vec<Vector> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/twilio_vectors.json"
    );
    let text = std::fs::read_to_string(path).expect("read twilio_vectors.json");
    serde_json::from_str::<File>(&text)
        .expect("parse twilio_vectors.json")
        .vectors
}
