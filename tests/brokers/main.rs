//! Against real brokers started by the tests on loopback: nats-server
//! (2.15, and 2.9.10 as the oldest; one server or a cluster), Apache Kafka
//! (4.4, and 3.9 as the oldest: one broker the binary shares, with topics
//! per test, and a broker of its own for a test that hurts it),
//! librdkafka's mock cluster for Kafka faults; the spool, dead
//! letters and chaos (kill -9, SIGSTOP) under load; `--cloudevents` read
//! back with the official CloudEvents SDK.

#[path = "../support/mod.rs"]
#[macro_use]
mod support;

mod chaos;
mod check;
mod cloudevents;
mod consumers;
mod kafka;
mod kafka_mock;
mod nats;
mod otlp;
mod redrive;
mod refusals;
mod send;
mod spool;
mod spool_disk;
mod spool_drain;
mod spool_outage;
mod tail;
