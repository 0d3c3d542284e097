//! End-to-end tests: the real http-edge binary with the core embedded, on free ports.

mod auth;
mod bad_input;
mod conformance;
mod dedupe;
mod grpcurl;
mod harness;
mod lifecycle;
mod production;
mod signatures;
mod spec;
