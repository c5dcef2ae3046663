//! A downstream service reading the bridge's webhooks from Kafka in a
//! consumer group, processing each webhook once even when it is delivered
//! twice.
//!
//! Kafka keeps every copy of a webhook the platform retried, and a
//! consumer that dies before committing reads its last messages again. All
//! copies carry the same `apizee-event-id` (a hash of the body), so the
//! consumer checks it before doing the work, and commits the offset only
//! after the work is done: a crash in between means a re-read, never a
//! loss. Every event of one object is on one partition (the key is the
//! objectId), so they arrive in order.
//!
//! The set of ids seen here is in memory, which is enough for an example;
//! a service keeps them with its work (a unique key in its database,
//! written in the same transaction).
//!
//! ```text
//! cargo run --example consumer_kafka -- --brokers 127.0.0.1:9092 \
//!     --group tickets --topic apizee.ticket.update
//! ```
//!
//! Prints `processed ID TOPIC` or `duplicate ID TOPIC` per message;
//! `--count N` stops after N messages (for tests).

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut brokers, mut group, mut topics, mut count) = (
        "127.0.0.1:9092".to_owned(),
        "example".to_owned(),
        Vec::new(),
        None::<u64>,
    );
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--brokers" => brokers = value,
            "--group" => group = value,
            "--topic" => topics.push(value),
            "--count" => count = Some(value.parse()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        // A new group starts at the oldest webhook the topic keeps.
        .set("auto.offset.reset", "earliest")
        // Offsets are committed by hand, after the work.
        .set("enable.auto.commit", "false")
        .create()?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    eprintln!(
        "consumer_kafka: reading {} as group {group}",
        names.join(", ")
    );
    let mut seen: HashSet<String> = HashSet::new();
    let mut read = 0;
    while count.is_none_or(|n| read < n) {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        read += 1;
        let id = message
            .headers()
            .and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == "apizee-event-id")
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
            .unwrap_or_default();
        if seen.contains(&id) {
            println!("duplicate {id} {}", message.topic());
        } else {
            println!("processed {id} {}", message.topic());
            seen.insert(id);
        }
        consumer.commit_message(&message, CommitMode::Sync)?;
    }
    Ok(())
}
