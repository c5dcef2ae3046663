//! `apizee-bridge redrive` for Kafka: the dead-letter topic read from the
//! beginning (or after `--after`) up to the high watermark it had when the
//! run began, every partition assigned directly, nothing committed.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::config::KafkaSettings;
use crate::route::header;
use crate::sink::redrive::{Position, Stored};

/// How long to keep reading once every partition's watermark is reached.
const AFTER_WATERMARK: Duration = Duration::from_millis(500);

pub async fn read(
    settings: &KafkaSettings,
    topic: &str,
    limit: usize,
    after: &BTreeMap<i32, i64>,
    within: Duration,
) -> Result<Vec<Stored>, String> {
    let consumer = super::reader(settings, "apizee-bridge-redrive")?;
    let topic = topic.to_owned();
    let after = after.clone();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(Some(&topic), within)
            .map_err(|e| format!("no metadata for {topic}: {e}"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(format!("the dead-letter topic {topic} does not exist"));
        }
        // Partition -> the offset one past the last dead letter to read.
        let mut pending = BTreeMap::new();
        let mut assignment = TopicPartitionList::new();
        for partition in partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, within)
                .map_err(|e| format!("{topic}/{partition}: {e}"))?;
            let start = after
                .get(&partition)
                .map_or(low, |last| (last + 1).max(low));
            if start < high {
                pending.insert(partition, high);
                assignment
                    .add_partition_offset(&topic, partition, Offset::Offset(start))
                    .map_err(|e| e.to_string())?;
            }
        }
        let mut stored = Vec::new();
        if pending.is_empty() {
            return Ok(stored);
        }
        consumer.assign(&assignment).map_err(|e| e.to_string())?;
        // Past the watermarks, a little more is read while records keep
        // coming: a dead letter added meanwhile is as good to redrive as
        // the others, and some Kafka-protocol brokers report a watermark
        // behind their last record (tansu 0.6 did).
        let mut idle_since = std::time::Instant::now();
        while stored.len() < limit {
            let idle = idle_since.elapsed();
            if pending.is_empty() && idle > AFTER_WATERMARK {
                break;
            }
            match consumer.poll(Duration::from_millis(100)) {
                None if idle > within => {
                    return Err(format!("{topic}: nothing arrived for {within:?}"));
                }
                None => {}
                Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
                Some(Ok(message)) => {
                    idle_since = std::time::Instant::now();
                    let (partition, offset) = (message.partition(), message.offset());
                    if pending
                        .get(&partition)
                        .is_some_and(|high| offset + 1 >= *high)
                    {
                        pending.remove(&partition);
                    }
                    let reason = message.headers().and_then(|headers| {
                        headers
                            .iter()
                            .find(|h| h.key == header::REJECTION_REASON)
                            .and_then(|h| h.value)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    });
                    stored.push(Stored {
                        position: Position::Offset { partition, offset },
                        reason,
                        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
                    });
                }
            }
        }
        Ok(stored)
    })
    .await
    .map_err(|e| e.to_string())?
}
