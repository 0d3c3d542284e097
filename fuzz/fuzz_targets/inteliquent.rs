//! Inteliquent: `Authorization: Bearer`, `X-Inteliquent-Signature` (HMAC-SHA256 of the body),
//! both together, and the parser of its JSON bodies.
#![no_main]

use std::sync::LazyLock;

use carrier_ingest_fuzz::{exercise, incoming, secrets};
use http_edge::{
    auth::{AllOf, BearerVerifier, BodyHmacVerifier, Verifier},
    carriers::inteliquent::Inteliquent,
    secret::SecretList,
};
use libfuzzer_sys::fuzz_target;

static VERIFIERS: LazyLock<[Box<dyn Verifier>; 3]> = LazyLock::new(|| {
    let bearer = || BearerVerifier::new(SecretList::parse(secrets::INTELIQUENT_TOKEN));
    let hmac = || BodyHmacVerifier::inteliquent(SecretList::parse(secrets::INTELIQUENT_KEY));
    [
        Box::new(bearer()),
        Box::new(hmac()),
        Box::new(AllOf::new(vec![Box::new(bearer()), Box::new(hmac())])),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Some(request) = incoming(data) else {
        return;
    };
    let verifiers: Vec<&dyn Verifier> = VERIFIERS.iter().map(|v| v.as_ref()).collect();
    exercise::<Inteliquent>(&request, &verifiers);
});
