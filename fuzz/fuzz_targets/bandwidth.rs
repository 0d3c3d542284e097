//! Bandwidth: HTTP Basic, `X-Bandwidth-Signature` (HMAC-SHA256 of the body), both together, and
//! the parser of its JSON callback arrays.
#![no_main]

use std::sync::LazyLock;

use carrier_ingest_fuzz::{exercise, incoming, secrets};
use http_edge::{
    auth::{AllOf, BasicVerifier, BodyHmacVerifier, Verifier},
    carriers::bandwidth::Bandwidth,
    secret::SecretList,
};
use libfuzzer_sys::fuzz_target;

static VERIFIERS: LazyLock<[Box<dyn Verifier>; 3]> = LazyLock::new(|| {
    let basic = || BasicVerifier::new(SecretList::parse(secrets::BANDWIDTH_BASIC));
    let hmac = || BodyHmacVerifier::bandwidth(SecretList::parse(secrets::BANDWIDTH_KEY));
    [
        Box::new(basic()),
        Box::new(hmac()),
        Box::new(AllOf::new(vec![Box::new(basic()), Box::new(hmac())])),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Some(mut request) = incoming(data) else {
        return;
    };
    // Only the /bandwidth/{destination} route reaches this handler, always with a destination.
    request.destination.get_or_insert_with(|| "1".to_owned());
    let verifiers: Vec<&dyn Verifier> = VERIFIERS.iter().map(|v| v.as_ref()).collect();
    exercise::<Bandwidth>(&request, &verifiers);
});
