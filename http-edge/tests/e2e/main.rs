//! End-to-end tests: the real http-edge binary with the core embedded, on free ports.

mod auth;
mod bad_input;
mod conformance;
mod dedupe;
mod failover;
mod grpcurl;
mod harness;
mod lifecycle;
mod production;
// moto and redis-server, started the same way as in ingest-core's backend tests.
#[path = "../../../ingest-core/tests/backends/servers.rs"]
mod servers;
mod signatures;
mod spec;
mod two_cores;
