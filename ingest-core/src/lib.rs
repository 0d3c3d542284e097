//! ingest-core: the gRPC service that validates, normalizes, dedupes and publishes carrier
//! events. `main.rs` only wires configuration to [`server::serve`]; tests build the same service.
#![forbid(unsafe_code)]

pub mod config;
pub mod dedupe;
pub mod event;
pub mod metrics;
pub mod normalize;
pub mod publish;
pub mod quarantine;
pub mod security;
pub mod server;
pub mod service;
pub mod trace;
