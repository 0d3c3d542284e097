//! ingest-core against real backends: moto's SQS server and redis-server, started on free ports
//! by each test, each test with its own queues and key prefix.

mod dedupe;
mod fake_sqs;
mod redis_store;
mod retry;
mod servers;
mod sqs;
mod support;
