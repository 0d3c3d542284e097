//! End-to-end tests: the real http-edge binary with the core embedded, on free ports.

mod abuse;
mod auth;
mod bad_input;
mod conformance;
mod dedupe;
mod disk_full;
mod failover;
// The SQS-compatible endpoint that fails on command, shared with ingest-core's tests.
#[path = "../../../ingest-core/tests/backends/fake_sqs.rs"]
#[allow(dead_code)]
mod fake_sqs;
mod grpc_security;
mod grpcurl;
mod harness;
mod lifecycle;
mod outage;
mod pki;
mod production;
mod quarantine;
mod replay;
// moto and redis-server, started the same way as in ingest-core's backend tests.
#[path = "../../../ingest-core/tests/backends/servers.rs"]
mod servers;
mod signatures;
mod spec;
mod trace_context;
mod two_cores;
