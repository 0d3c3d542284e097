//! Twilio: `X-Twilio-Signature` (HMAC-SHA1 over the public URL and form parameters, or the URL
//! with `bodySHA256` for JSON), with and without an AccountSid restriction, and the parser of its
//! form and query parameters.
#![no_main]

use std::sync::{Arc, LazyLock};

use carrier_ingest_fuzz::{exercise, incoming, secrets};
use http_edge::{
    auth::{PublicUrl, TwilioVerifier, Verifier},
    carriers::twilio::Twilio,
    secret::SecretList,
};
use libfuzzer_sys::fuzz_target;

static VERIFIERS: LazyLock<[TwilioVerifier; 2]> = LazyLock::new(|| {
    let url = Arc::new(
        PublicUrl::new(Some(secrets::PUBLIC_BASE_URL), Some("127.0.0.1")).expect("valid URL"),
    );
    let tokens = || SecretList::parse(secrets::TWILIO_TOKEN);
    [
        TwilioVerifier::new(tokens(), url.clone(), Vec::new()),
        TwilioVerifier::new(
            tokens(),
            url,
            vec!["AC0123456789abcdef0123456789abcdef".to_owned()],
        ),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Some(request) = incoming(data) else {
        return;
    };
    let verifiers: Vec<&dyn Verifier> = VERIFIERS.iter().map(|v| v as &dyn Verifier).collect();
    exercise::<Twilio>(&request, &verifiers);
});
