//! `apizee-bridge tail` for Kafka: every partition of the topics the
//! patterns select, assigned directly (no consumer group, nothing
//! committed), read from the end, or from the beginning if asked.

use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::config::KafkaSettings;
use crate::sink::tap::{CONNECT_TIMEOUT, Tapped, selected};

pub async fn run(
    settings: &KafkaSettings,
    patterns: &[String],
    count: Option<u64>,
    from_beginning: bool,
    print: impl Fn(Tapped) + Send + 'static,
) -> Result<(), String> {
    let consumer = super::reader(settings, "apizee-bridge-tail")?;
    let patterns = patterns.to_vec();
    let brokers = settings.brokers.clone();
    // librdkafka's consumer blocks: it gets a thread of its own.
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(None, CONNECT_TIMEOUT)
            .map_err(|e| format!("no metadata from {brokers}: {e}"))?;
        let mut assignment = TopicPartitionList::new();
        let start = if from_beginning {
            Offset::Beginning
        } else {
            Offset::End
        };
        let mut topics = Vec::new();
        for topic in metadata.topics() {
            if !selected(&patterns, topic.name()) {
                continue;
            }
            topics.push(topic.name().to_owned());
            for partition in topic.partitions() {
                assignment
                    .add_partition_offset(topic.name(), partition.id(), start)
                    .map_err(|e| e.to_string())?;
            }
        }
        if topics.is_empty() {
            return Err(format!(
                "no topic on {brokers} matches {}: nothing to read yet",
                patterns.join(", ")
            ));
        }
        consumer.assign(&assignment).map_err(|e| e.to_string())?;
        // Offset::End is resolved on the first fetch; until each partition
        // has a position, a message produced now could be skipped.
        let deadline = std::time::Instant::now() + CONNECT_TIMEOUT;
        loop {
            let _ = consumer.poll(Duration::ZERO);
            let positioned = consumer.position().is_ok_and(|positions| {
                positions
                    .elements()
                    .iter()
                    .all(|p| !matches!(p.offset(), Offset::Invalid | Offset::End))
            });
            if positioned || from_beginning || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "apizee-bridge tail: reading {} from {brokers}",
            topics.join(", ")
        );
        let mut seen = 0;
        while count.is_none_or(|n| seen < n) {
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(e)) => return Err(format!("reading: {e}")),
                Some(Ok(message)) => {
                    let headers = message
                        .headers()
                        .map(|headers| {
                            headers
                                .iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    print(Tapped {
                        topic: message.topic().to_owned(),
                        key: message
                            .key()
                            .map(|k| String::from_utf8_lossy(k).into_owned()),
                        headers,
                        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
                    });
                    seen += 1;
                }
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}
