//! `apizee-bridge check` for Kafka: reach the brokers with the producer's
//! own properties (`--kafka-option` included, so SASL and TLS are tried as
//! serving would), then find every topic the bridge produces to, the
//! dead-letter topic included.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, Producer};

use super::config::KafkaSettings;
use super::{client_config, describe_config_error};
use crate::sink::check::{Finding, Topics};

pub async fn run(settings: &KafkaSettings, topics: &Topics<'_>, within: Duration) -> Vec<Finding> {
    let producer: BaseProducer = match client_config(settings).create() {
        Ok(producer) => producer,
        Err(e) => {
            return vec![Finding::fail(
                "kafka",
                format!("invalid --kafka-option: {}", describe_config_error(&e)),
            )];
        }
    };
    // Metadata of every topic: asking for named ones could make a cluster
    // that creates topics on demand create them.
    let metadata = tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, within)
            .map(|metadata| {
                let brokers: Vec<String> = metadata
                    .brokers()
                    .iter()
                    .map(|b| format!("{}:{}", b.host(), b.port()))
                    .collect();
                let topics: BTreeMap<String, usize> = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.error().is_none())
                    .map(|t| (t.name().to_owned(), t.partitions().len()))
                    .collect();
                (brokers, topics)
            })
    })
    .await;
    let (brokers, existing) = match metadata {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            return vec![Finding::fail(
                "kafka",
                format!(
                    "no metadata from {} within {within:?}: {e}; are the brokers up, and do \
                     the security properties (--kafka-option) match the listener?",
                    settings.brokers
                ),
            )];
        }
        Err(e) => {
            return vec![Finding::fail(
                "kafka",
                format!("metadata request failed: {e}"),
            )];
        }
    };
    let mut findings = vec![Finding::ok(
        "kafka",
        format!(
            "reached {} broker(s): {}",
            brokers.len(),
            brokers.join(", ")
        ),
    )];
    let created = settings.create_topics.is_some();
    let check = |what: &str, wanted: &[String]| {
        let missing: Vec<&str> = wanted
            .iter()
            .map(String::as_str)
            .filter(|t| !existing.contains_key(*t))
            .collect();
        if missing.is_empty() {
            Finding::ok(what, format!("{} exist", wanted.len()))
        } else if created {
            Finding::ok(
                what,
                format!(
                    "{} of {} missing, created at start-up (--kafka-create-topics): {}",
                    missing.len(),
                    wanted.len(),
                    missing.join(", ")
                ),
            )
        } else {
            Finding::warn(
                what,
                format!(
                    "{} of {} missing: {}; the cluster must create topics on demand, or set \
                     --kafka-create-topics",
                    missing.len(),
                    wanted.len(),
                    missing.join(", ")
                ),
            )
        }
    };
    match &topics.all {
        Some(all) => findings.push(check("topics", all)),
        None => findings.push(Finding::ok(
            "topics",
            "the template holds {objectId}: topics cannot be known in advance",
        )),
    }
    if let Some(dead_letter) = topics.dead_letter {
        findings.push(check("dead-letter topic", &[dead_letter.to_owned()]));
    }
    findings
}
