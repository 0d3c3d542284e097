//! MessageBird: `MessageBird-Signature-JWT`, the legacy `MessageBird-Signature` +
//! `MessageBird-Request-Timestamp`, and `MessageBird-Signature: sha256=` of the body, under each
//! scheme setting; and the parser of its JSON bodies and query parameters.
#![no_main]

use std::sync::{Arc, LazyLock};

use carrier_ingest_fuzz::{exercise, incoming, secrets};
use http_edge::{
    auth::{MessageBirdPolicy, MessageBirdScheme, MessageBirdVerifier, PublicUrl, Verifier},
    carriers::messagebird::MessageBird,
    secret::SecretList,
};
use libfuzzer_sys::fuzz_target;

static VERIFIERS: LazyLock<[MessageBirdVerifier; 3]> = LazyLock::new(|| {
    // A trusted loopback peer: forwarding headers in the input take part in the signed URL.
    let url = Arc::new(PublicUrl::new(None, Some("127.0.0.1")).expect("valid proxies"));
    let with = |scheme| {
        MessageBirdVerifier::new(
            SecretList::parse(secrets::MESSAGEBIRD_KEY),
            MessageBirdPolicy {
                scheme,
                // The widest window the configuration allows, so seeds signed when the corpus
                // was written still verify.
                max_age_secs: 3_600,
                jwt_leeway_secs: 300,
            },
            url.clone(),
        )
    };
    [
        with(MessageBirdScheme::Any),
        with(MessageBirdScheme::Jwt),
        with(MessageBirdScheme::Legacy),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Some(request) = incoming(data) else {
        return;
    };
    let verifiers: Vec<&dyn Verifier> = VERIFIERS.iter().map(|v| v as &dyn Verifier).collect();
    exercise::<MessageBird>(&request, &verifiers);
});
