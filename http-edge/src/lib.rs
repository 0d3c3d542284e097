//! http-edge: the public HTTP face of carrier-ingest. It verifies each carrier's webhook, parses
//! it into events, submits them to ingest-core over gRPC, and answers the way the carrier expects.
//! It holds no business state: no disk, no queue, no dedupe.
#![forbid(unsafe_code)]

pub mod abuse;
pub mod app;
pub mod auth;
pub mod carriers;
pub mod config;
pub mod core_client;
pub mod ctl;
pub mod error;
pub mod request;
pub mod secret;
